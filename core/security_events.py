"""Security events as structured log lines: one JSON object per event on the
``ivrs.security`` logger, so that a log pipeline can count and alert on them
(README, "Security events").

An event names what happened and the request it happened in (a CallSid or
MessageSid), and never a PIN, an arm, a message body or a phone number. The
events: ``signature_refused`` (a webhook without a valid Twilio signature),
``bad_input`` (a field that cannot be Twilio's: which field), ``step_refused``
(a step token that was never issued), ``unknown_caller`` (an SMS from a number
no user has), ``lockout`` (a user locked by wrong secrets: PINs, web passwords
or TOTP codes, on any channel, ``core.lockout``).
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("ivrs.security")

EVENTS = frozenset({"signature_refused", "bad_input", "step_refused", "unknown_caller",
                    "lockout"})


def security_event(event: str, **details: str | int | None) -> None:
    """Log one event, as one line of JSON (keys sorted, so that lines compare)."""
    if event not in EVENTS:
        raise ValueError(f"unknown security event {event}")
    log.warning(json.dumps({"event": event, **details}, sort_keys=True, ensure_ascii=True))
