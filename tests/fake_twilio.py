"""A local fake of Twilio's Messages REST API, for tests of the outbound sender.

A real HTTP server (``http.server`` in a thread) that the unchanged twilio
library talks to once ``TWILIO_API_BASE_URL`` points at it, so the tests
exercise the whole client path: form encoding, basic auth, Twilio's error
JSON, the list page format, and what a lost answer looks like to ``requests``.

Implements ``POST /2010-04-01/Accounts/{sid}/Messages.json`` (To, From,
Body, StatusCallback; answers 201 with a message like Twilio's) and
``GET .../Messages.json`` (newest first, filtered by To, From and
``DateSent>``). It can be told to answer the next requests with 500 or 429,
to refuse the next message with a Twilio error (21610 unsubscribed, 21211
invalid number), or to accept the next message and then drop the connection
without answering. ``messages`` holds every message it accepted; ``posts``
counts every POST it received.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, urlsplit

ACCOUNT_SID = "AC" + "0" * 31 + "1"
AUTH_TOKEN = "fake-twilio-auth-token"
FROM_NUMBER = "+15005550006"
API_VERSION = "2010-04-01"
MESSAGES_PATH = re.compile(rf"/{API_VERSION}/Accounts/(?P<account>AC\w+)/Messages\.json")
# HTTP status -> (Twilio code, message) for server-side refusals ...
HTTP_ERRORS = {
    429: (20429, "Too Many Requests"),
    500: (20500, "Internal Server Error"),
    503: (20503, "Service Unavailable"),
}
# ... and Twilio's own codes, answered with 400
TWILIO_ERRORS = {
    21211: "The 'To' number is not a valid phone number.",
    21610: "Attempt to send to unsubscribed recipient",
}


@dataclass
class FakeMessage:
    sid: str
    to: str
    from_: str
    body: str
    status_callback: str | None
    date_created: datetime
    status: str = "queued"
    date_sent: datetime | None = None

    def json(self, account: str) -> dict:
        uri = f"/{API_VERSION}/Accounts/{account}/Messages/{self.sid}.json"
        return {
            "account_sid": account, "api_version": API_VERSION, "body": self.body,
            "date_created": format_datetime(self.date_created),
            "date_sent": format_datetime(self.date_sent) if self.date_sent else None,
            "date_updated": format_datetime(self.date_sent or self.date_created),
            "direction": "outbound-api", "error_code": None, "error_message": None,
            "from": self.from_, "messaging_service_sid": None, "num_media": "0",
            "num_segments": "1", "price": None, "price_unit": "USD", "sid": self.sid,
            "status": self.status, "subresource_uris": {"media": uri[:-5] + "/Media.json"},
            "to": self.to, "uri": uri,
        }


@dataclass
class FakeTwilio:
    """The server and what it saw. Use as a context manager (starts and stops it)."""

    account_sid: str = ACCOUNT_SID
    auth_token: str = AUTH_TOKEN
    messages: list[FakeMessage] = field(default_factory=list)
    posts: int = 0
    # what the next POSTs get instead of a 201, in order: ("error", http or twilio
    # code) or ("drop",): accept the message, then close without answering
    _next: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        fake = self

        class Handler(_Handler):
            twilio = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # --- programming the next answers -------------------------------------------------

    def fail_next(self, count: int = 1, status: int = 500) -> None:
        """The next ``count`` POSTs get ``status`` (500, 503 or 429), no message made."""
        with self._lock:
            self._next.extend([("error", status)] * count)

    def reject_next(self, code: int) -> None:
        """The next POST gets Twilio's 400 error ``code`` (21610, 21211)."""
        with self._lock:
            self._next.append(("error", code))

    def drop_next(self) -> None:
        """Accept the next message, then drop the connection without answering."""
        with self._lock:
            self._next.append(("drop",))

    def mark_sent(self) -> None:
        """Every queued message goes out (status ``sent``, a send date)."""
        with self._lock:
            for message in self.messages:
                if message.status == "queued":
                    message.status, message.date_sent = "sent", datetime.now(UTC)

    def sent_to(self, number: str) -> list[FakeMessage]:
        with self._lock:
            return [m for m in self.messages if m.to == number]

    # --- the API ----------------------------------------------------------------------

    def _create(self, form: dict[str, str]) -> tuple[int, dict, bool]:
        """(HTTP status, JSON body, drop the connection instead of answering)."""
        with self._lock:
            self.posts += 1
            planned = self._next.popleft() if self._next else None
        if planned is not None and planned[0] == "error":
            return _error(planned[1]) + (False,)
        for name, code in (("To", 21604), ("From", 21603), ("Body", 21602)):
            if not form.get(name):
                return 400, {"code": code, "message": f"A '{name}' is required.",
                             "status": 400}, False
        message = FakeMessage("SM" + secrets.token_hex(16), form["To"], form["From"],
                              form["Body"], form.get("StatusCallback"), datetime.now(UTC))
        with self._lock:
            self.messages.append(message)
        return 201, message.json(self.account_sid), planned is not None

    def _list(self, query: dict[str, str]) -> dict:
        after = query.get("DateSent>")
        after_day = date.fromisoformat(after[:10]) if after else None
        with self._lock:
            found = [m for m in self.messages
                     if (not query.get("To") or m.to == query["To"])
                     and (not query.get("From") or m.from_ == query["From"])
                     and (after_day is None
                          or (m.date_sent is not None and m.date_sent.date() >= after_day))]
        found.sort(key=lambda m: m.date_created, reverse=True)
        size = int(query.get("PageSize") or 50)
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages.json"
        page = found[:size]
        return {"messages": [m.json(self.account_sid) for m in page], "end": len(page) - 1,
                "first_page_uri": uri, "next_page_uri": None, "page": 0, "page_size": size,
                "previous_page_uri": None, "start": 0, "uri": uri}


def _error(code: int) -> tuple[int, dict]:
    """Twilio's error answer for an HTTP status (429, 5xx) or a Twilio code (400)."""
    if code in HTTP_ERRORS:
        status, (twilio_code, message) = code, HTTP_ERRORS[code]
    else:
        status, twilio_code, message = 400, code, TWILIO_ERRORS[code]
    return status, {"code": twilio_code, "message": message, "status": status,
                    "more_info": f"https://www.twilio.com/docs/errors/{twilio_code}"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like Twilio: the client pools connections
    # headers and body are two writes: without this, Nagle's algorithm and the
    # client's delayed ACK add 40 ms to every answer
    disable_nagle_algorithm = True
    twilio: FakeTwilio

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8")
        if not self._authorized():
            return
        form = {name: values[0] for name, values in parse_qs(raw).items()}
        status, body, drop = self.twilio._create(form)
        if drop:
            # The message exists, but the client never hears of it.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._answer(status, body)

    def do_GET(self) -> None:
        if not self._authorized():
            return
        query = {name: values[0] for name, values in
                 parse_qs(urlsplit(self.path).query).items()}
        self._answer(200, self.twilio._list(query))

    def _authorized(self) -> bool:
        match = MESSAGES_PATH.fullmatch(urlsplit(self.path).path)
        if match is None:
            self._answer(404, {"code": 20404, "message": "The requested resource was not found",
                               "status": 404})
            return False
        expected = base64.b64encode(
            f"{self.twilio.account_sid}:{self.twilio.auth_token}".encode()).decode()
        if (match["account"] != self.twilio.account_sid
                or self.headers.get("Authorization") != f"Basic {expected}"):
            self._answer(401, {"code": 20003, "message": "Authenticate", "status": 401})
            return False
        return True

    def _answer(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
