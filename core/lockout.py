"""The one lockout every secret counts toward: a PIN by phone or SMS, a password
or a TOTP code on the web, a signature on any channel.

The count lives in the user row, which the caller has locked (``FOR UPDATE``),
so simultaneous wrong attempts from several channels add up exactly. A failed
attempt is committed: ``record_failure`` ends the service call (seals its audit
row), and the caller raises ``failure.refusal()`` only after the ``with
service_call`` block, once the transaction is committed. A refusal raised
inside the block would roll its own count back and never lock anyone.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import Refused
from core.models import User
from core.security_events import security_event

MAX_FAILED_ATTEMPTS = 3


@dataclass(frozen=True)
class FailedAttempt:
    user_code: str
    locked_now: bool  # this attempt was the one that locked the user
    channel: str | None
    code: str  # the refusal's code when the user is not locked yet
    message: str

    def refusal(self, request_id: str | None = None) -> Refused:
        """What the caller raises once the count is committed. The lockout
        itself is a security event, whatever the channel."""
        if self.locked_now:
            security_event("lockout", channel=self.channel, user=self.user_code,
                           request=request_id)
            return locked(self.user_code)
        return Refused(self.message, code=self.code)


def locked(user_code: str) -> Refused:
    return Refused(f"user {user_code} is locked", code="locked")


def record_failure(call, user: User, action: str, *, channel: str | None,
                   reason: str | None = None, code: str = "bad_credentials",
                   message: str = "user ID or PIN not valid") -> FailedAttempt:
    """Count one wrong secret against ``user`` (its row locked by the caller),
    lock at ``MAX_FAILED_ATTEMPTS``, audit ``action`` and end the service call."""
    user.failed_attempts += 1
    user.locked = user.failed_attempts >= MAX_FAILED_ATTEMPTS
    new = {"failed_attempts": user.failed_attempts, "locked": user.locked}
    if channel is not None:
        new["channel"] = channel
    call.audit.record(action, "user", user.user_code, reason=reason, new=new)
    call.finish({})
    return FailedAttempt(user.user_code, user.locked, channel, code, message)


def record_success(user: User) -> None:
    """A right secret ends the run of failures (the lockout counts failures in a row)."""
    user.failed_attempts = 0
