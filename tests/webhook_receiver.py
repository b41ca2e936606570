"""A real HTTP receiver of webhooks for the tests: a ThreadingHTTPServer in a
thread, which answers each request as its script says and keeps what came.

Behaviours, taken one per request (then ``ok`` for good): ``ok`` (204),
``fail`` (500), ``busy`` (429), ``gone`` (410), ``slow`` (waits ``slow_seconds``,
longer than the sender's timeout in the tests, then 204) and ``hang`` (waits
until the receiver is closed). Every request is kept as it arrived, before its
answer, like a receiver that writes first and answers after.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

STATUS = {"ok": 204, "fail": 500, "busy": 429, "gone": 410, "slow": 204, "hang": 204}


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    behaviour: str

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def message(self) -> dict:
        return json.loads(self.body)

    def verified(self, secret: str) -> dict:
        """The body, checked with the Standard Webhooks reference library."""
        return Webhook(secret).verify(self.body, self.headers)


class Receiver:
    def __init__(self, script: list[str] | None = None, slow_seconds: float = 1.5):
        self.script = list(script or [])
        self.slow_seconds = slow_seconds
        self.received: list[Received] = []
        self.arrived = threading.Condition()
        self._closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                behaviour = receiver._next()
                with receiver.arrived:
                    receiver.received.append(Received(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                        behaviour))
                    receiver.arrived.notify_all()
                if behaviour == "slow":
                    receiver._closing.wait(receiver.slow_seconds)
                elif behaviour == "hang":
                    receiver._closing.wait(60)
                try:
                    self.send_response(STATUS[behaviour])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up waiting: nobody reads the answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _next(self) -> str:
        with self.arrived:
            return self.script.pop(0) if self.script else "ok"

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def wait_for(self, count: int, timeout: float = 30) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.received) >= count, timeout)

    def at(self, path: str) -> list[Received]:
        return [request for request in self.received if request.path == path]

    def first_arrivals(self, path: str | None = None) -> list[Received]:
        """Each webhook-id once, as it first arrived (what a receiver that drops
        repeats keeps)."""
        seen, kept = set(), []
        for request in self.received:
            if (path is None or request.path == path) and request.webhook_id not in seen:
                seen.add(request.webhook_id)
                kept.append(request)
        return kept

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()
