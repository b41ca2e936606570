"""A telephone for the terminal, the demo and the tests.

It speaks to the webhook routes exactly as Twilio does: form-encoded POSTs,
signed with ``X-Twilio-Signature``, following each ``<Gather action>`` with
the keys pressed. The transport is the Flask app in this process or a running
server (``--url``).
"""

from __future__ import annotations

import secrets
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from twilio.request_validator import RequestValidator


@dataclass
class Heard:
    """One TwiML answer, parsed: what was said and what the call expects next."""

    status: int
    xml: str
    says: list[tuple[str, str]] = field(default_factory=list)  # (language, text)
    action: str | None = None  # the Gather's action (relative URL)
    gather: dict[str, str] = field(default_factory=dict)  # the Gather's attributes
    hangup: bool = False

    @property
    def text(self) -> str:
        return " ".join(words for _, words in self.says)

    @property
    def ended(self) -> bool:
        return self.hangup or self.action is None


def parse_twiml(status: int, body: str) -> Heard:
    heard = Heard(status, body)
    if status != 200:
        return heard
    root = ET.fromstring(body)
    if root.tag != "Response":
        raise ValueError(f"TwiML root is {root.tag}, not Response")
    for element in root.iter():
        if element.tag == "Say":
            heard.says.append((element.get("language", ""), element.text or ""))
        elif element.tag == "Gather":
            heard.gather = dict(element.attrib)
            heard.action = element.get("action")
        elif element.tag == "Hangup":
            heard.hangup = True
    return heard


class Transport:
    """POST a form to a path; returns (status, body)."""

    base_url = "http://localhost"

    def post(self, path: str, form: dict[str, str], headers: dict[str, str]) -> tuple[int, str]:
        raise NotImplementedError


class AppTransport(Transport):
    """The Flask app in this process (its test client: no network)."""

    def __init__(self, app) -> None:
        self.client = app.test_client()

    def post(self, path, form, headers):
        response = self.client.post(path, data=form, headers=headers)
        return response.status_code, response.get_data(as_text=True)


class HttpTransport(Transport):
    """A running ``ivrs serve`` (or anything that answers like it)."""

    def __init__(self, base_url: str, timeout: float = 30) -> None:
        self.base_url, self.timeout = base_url.rstrip("/"), timeout

    def post(self, path, form, headers):
        data = urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(self.base_url + path, data=data, headers={
            **headers, "Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")


class Phone:
    """One caller. ``dial()`` starts a call; ``press(keys)`` answers the last Gather."""

    def __init__(self, transport: Transport, *, caller: str, dialed: str = "+15005550006",
                 auth_token: str | None = None, public_base_url: str | None = None) -> None:
        self.transport, self.caller, self.dialed = transport, caller, dialed
        self.auth_token = auth_token
        self.public_base_url = (public_base_url or transport.base_url).rstrip("/")
        self.call_sid = ""
        self.last: Heard | None = None
        self.path = "/voice"

    def dial(self) -> Heard:
        self.call_sid = "CA" + secrets.token_hex(16)
        self.path = "/voice"
        return self._post("/voice", {})

    def press(self, keys: str | None) -> Heard:
        """Keys as typed: "5001#" for an entry, "1" for a menu, None for silence."""
        if self.last is None or self.last.ended:
            raise RuntimeError("the call is not waiting for keys")
        path = urllib.parse.urljoin(self.path, self.last.action)
        form = {} if keys is None else {"Digits": keys[:-1] if keys.endswith("#") else keys}
        return self._post(path, form)

    def repeat_last_request(self) -> Heard:
        """Send the previous request again, as Twilio does after a timeout."""
        path, form = self._last_request
        return self._post(path, form, remember=False)

    def hang_up(self, status: str = "completed") -> int:
        """The status callback Twilio sends when the call ends; returns the HTTP status."""
        if not self.call_sid:
            return 0
        status_code, _ = self._send("/voice/status", {"CallStatus": status})
        return status_code

    def _send(self, path: str, extra: dict[str, str]) -> tuple[int, str]:
        form = {"CallSid": self.call_sid, "AccountSid": "AC" + "0" * 32, "From": self.caller,
                "To": self.dialed, "CallStatus": "in-progress", "Direction": "inbound", **extra}
        headers = {}
        if self.auth_token:
            headers["X-Twilio-Signature"] = RequestValidator(self.auth_token).compute_signature(
                self.public_base_url + path, form)
        return self.transport.post(path, form, headers)

    def _post(self, path: str, extra: dict[str, str], remember: bool = True) -> Heard:
        status, body = self._send(path, extra)
        heard = parse_twiml(status, body)
        if remember:
            self._last_request = (path, extra)
            self.path, self.last = path, heard
        return heard
