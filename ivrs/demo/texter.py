"""A mobile phone's SMS side for the terminal, the demo and the tests.

It texts the ``/sms`` route exactly as Twilio does: a form-encoded POST with
``MessageSid``, ``From``, ``To`` and ``Body``, signed with
``X-Twilio-Signature``, and reads the ``<Message>`` of the TwiML reply.
"""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from twilio.request_validator import RequestValidator

from ivrs.demo.phone import Transport


@dataclass(frozen=True)
class Reply:
    status: int
    xml: str
    text: str  # the reply's text ("" when there is none)
    message_sid: str  # of the message that was sent


def parse_reply(status: int, body: str, message_sid: str) -> Reply:
    if status != 200:
        return Reply(status, body, "", message_sid)
    root = ET.fromstring(body)
    if root.tag != "Response":
        raise ValueError(f"TwiML root is {root.tag}, not Response")
    words = [element.text or "" for element in root.iter("Message")]
    return Reply(status, body, " ".join(words), message_sid)


class Texter:
    """One mobile phone texting the study's number."""

    def __init__(self, transport: Transport, *, sender: str, to: str = "+15005550006",
                 auth_token: str | None = None, public_base_url: str | None = None) -> None:
        self.transport, self.sender, self.to, self.auth_token = transport, sender, to, auth_token
        self.public_base_url = (public_base_url or transport.base_url).rstrip("/")

    def send(self, body: str, *, message_sid: str | None = None) -> Reply:
        """Text ``body``; ``message_sid`` repeats an earlier message (Twilio's retry)."""
        sid = message_sid or "SM" + secrets.token_hex(16)
        form = {"MessageSid": sid, "SmsSid": sid, "AccountSid": "AC" + "0" * 32,
                "From": self.sender, "To": self.to, "Body": body, "NumMedia": "0"}
        headers = {}
        if self.auth_token:
            headers["X-Twilio-Signature"] = RequestValidator(self.auth_token).compute_signature(
                self.public_base_url + "/sms", form)
        status, text = self.transport.post("/sms", form, headers)
        return parse_reply(status, text, sid)
