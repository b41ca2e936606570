"""The caller's side of TwiML: a telephone for the terminal (``ivrs call``),
the demo, the tests and the web console's softphone.

It speaks to the webhook routes exactly as Twilio does: form-encoded POSTs,
signed with ``X-Twilio-Signature``, following each ``<Gather action>`` with
the keys pressed. The transport is the Flask app in this process or a running
server (``--url``).

It lives here, below the doors, because two of them drive the Twilio door
with it: the demo (above the doors) and the web console (a door, which may not
import another): both reach ``/voice`` only through HTTP requests, never
through the Twilio door's code.
"""

from __future__ import annotations

import functools
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


def waits_for(heard: Heard) -> str | None:
    if heard.ended:
        return None
    return "one key" if heard.gather.get("numDigits") == "1" else "digits, then #"


# The prompts that ask for a PIN (the user's, a new one, the new one again).
PIN_PROMPTS = ("login.pin", "pin.new", "pin.again", "unblind.sign_pin")


@functools.lru_cache(maxsize=1)
def _pin_prompt_texts() -> frozenset[str]:
    """What those prompts say, in every shipped language ("PIN" is not a word of
    Japanese or Chinese)."""
    from dialogs.output import Say
    from ivrs.render.speech import available_languages, text

    return frozenset(text(Say(prompt), language) for prompt in PIN_PROMPTS
                     for language in available_languages())


def asks_for_pin(heard: Heard) -> bool:
    """A number prompt about a PIN: its keys are neither echoed nor printed. (A
    menu that merely mentions the PIN waits for one key, not a number.)"""
    return waits_for(heard) == "digits, then #" and any(
        prompt in heard.text for prompt in _pin_prompt_texts())


class Transport:
    """POST a form to a path; returns (status, body)."""

    base_url = "http://localhost"

    def post(self, path: str, form: dict[str, str], headers: dict[str, str]) -> tuple[int, str]:
        raise NotImplementedError


class AppTransport(Transport):
    """The Flask app in this process (its test client: no network).

    Each request runs in an application context of its own: called from
    inside another request of the same app (the web's softphone), it would
    otherwise share that request's ``g``."""

    def __init__(self, app) -> None:
        self.app = app
        self.client = app.test_client()

    def post(self, path, form, headers):
        with self.app.app_context():
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

    def line_state(self) -> dict[str, str | None]:
        """What a later request needs to go on with this call (the web keeps it
        in its session between two key presses): no keys, no PIN."""
        waiting = self.last is not None and not self.last.ended
        return {"call_sid": self.call_sid, "path": self.path,
                "action": self.last.action if waiting else None}

    def resume(self, state: dict[str, str | None]) -> Phone:
        """Go on with a call from its ``line_state``."""
        self.call_sid, self.path = state.get("call_sid") or "", state.get("path") or "/voice"
        action = state.get("action")
        self.last = Heard(200, "", action=action) if action else None
        return self

    def dial(self) -> Heard:
        self.call_sid = "CA" + secrets.token_hex(16)
        self.path = "/voice"
        return self._post("/voice", {})

    def press(self, keys: str | None) -> Heard:
        """Keys as typed: "5001#" for an entry, "1" for a menu, None for silence."""
        if self.last is None or self.last.ended:
            raise RuntimeError("the call is not waiting for keys")
        path = urllib.parse.urljoin(self.path, self.last.action)
        form = {} if keys is None else {"Digits": keys.removesuffix("#")}
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
