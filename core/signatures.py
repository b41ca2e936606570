"""Electronic signatures: the signer's user ID and PIN typed again (21 CFR 11.200),
or on the web the signer's password.

A gated or irreversible step (an emergency unblinding, an approval, a
rejection) is signed by re-entering the components of the signer's identity,
even inside a session that is already signed in: both (user ID and PIN) where
the signing starts a session of its own (an SMS, a CLI command), the PIN alone
within a continuous session whose sign-in used both (a phone call, SPEC §6.8;
11.200(a)(1)(i)), and the password alone within a web console session
(``sign_with_password``, SPEC §11). Both check
them against the user row under its lock, like signing in: a wrong one counts
toward the same lockout (three in a row lock the user, whatever the channel)
and is committed even though the step itself is refused.

A signature names its meaning (what is being signed, §11.50) and is recorded
in the audit trail when made; the step it signs copies signer, time and
meaning into its own audit row. It is valid for ``VALID_FOR`` only: a
signature typed and then left for an hour signs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from core.actors import Actor
from core.clock import utcnow
from core.db import Database
from core.errors import Refused
from core.lockout import locked, record_failure, record_success
from core.login import dummy_hash, locked_user_row
from core.models import User
from core.passwords import check_password
from core.pins import check_pin
from core.service import service_call

VALID_FOR = timedelta(minutes=10)


@dataclass(frozen=True)
class Signature:
    user_code: str
    name: str  # the signer's printed name (§11.50(a)(1))
    meaning: str  # what was signed (§11.50(a)(3))
    signed_at: datetime

    @property
    def signer(self) -> str:
        return f"user:{self.user_code} {self.name}"

    def record(self) -> dict[str, Any]:
        """How the signed step's audit row carries the signature."""
        return {"signer": self.signer, "meaning": self.meaning,
                "signed_at": self.signed_at.isoformat()}

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "signed_at": self.signed_at.isoformat()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Signature:
        return cls(**{**data, "signed_at": datetime.fromisoformat(data["signed_at"])})


def sign(db: Database, *, user_code: str | None, pin: str, actor: Actor, meaning: str,
         study: str | None = None) -> Signature:
    """Check the signer's user ID and PIN; ``user_code=None``: the PIN alone, the
    actor being identified already in this continuous session. Refused
    ``bad_credentials`` (a wrong PIN, or another user's ID: a signature is the
    actor's own) or ``locked``."""
    components = "pin" if user_code is None else "user_id+pin"
    user_code = actor.user_code if user_code is None else str(user_code).strip()
    pin = str(pin or "").strip()

    def right(user: User) -> bool:
        if user.pin_temporary:
            raise Refused("a temporary PIN must be changed (by phone) before signing",
                          code="pin_temporary")
        if user_code == user.user_code:
            return check_pin(user.pin_hash, pin)
        check_pin(dummy_hash(), pin)  # another user's ID fails like a wrong PIN, in the same time
        return False

    return _signed(db, actor=actor, meaning=meaning, study=study, components=components,
                   right=right)


def sign_with_password(db: Database, *, password: str, actor: Actor, meaning: str,
                       study: str | None = None) -> Signature:
    """The web console's signature (SPEC §11): the signed-in user's password typed
    again, with the meaning shown beside it; the web session's sign-in supplied
    the user ID (11.200(a)(1)(i)). The same lockout, the same ``signed`` audit row
    (``components: "password"``), the same ``Signature``. Refused
    ``bad_credentials`` or ``locked``."""
    return _signed(db, actor=actor, meaning=meaning, study=study, components="password",
                   right=lambda user: check_password(user.password_hash, password),
                   wrong="password not valid")


def _signed(db: Database, *, actor: Actor, meaning: str, study: str | None, components: str,
            right: Callable[[User], bool], wrong: str = "user ID or PIN not valid"
            ) -> Signature:
    """A signature by the actor, if ``right`` says that the components typed are
    the actor's (it may refuse outright, counting nothing)."""
    own = actor.user_code
    if own is None:
        raise Refused("only a user can sign", code="not_allowed")
    failure = None
    with service_call(db, study, "sign", None, actor) as call:
        user = locked_user_row(call.session, call.study.id, own)
        if user is None or user.locked:
            raise locked(own)
        if not right(user):
            failure = record_failure(call, user, "signature_failed", channel=actor.channel,
                                     reason=meaning, message=wrong)
        else:
            record_success(user)
            signature = Signature(user_code=own, name=user.name, meaning=meaning,
                                  signed_at=utcnow())
            call.audit.record("signed", "user", own, reason=meaning,
                              new={"channel": actor.channel, "meaning": meaning,
                                   "components": components})
            call.finish({})
    if failure is not None:
        raise failure.refusal()
    return signature


def require_signature(signature: Signature | None, actor: Actor) -> Signature:
    """The signature a step needs: present, the actor's own, and recent."""
    if signature is None:
        raise Refused("this step must be signed with your user ID and PIN",
                      code="signature_required")
    if signature.user_code != actor.user_code:
        raise Refused("a step is signed by the user who takes it", code="signature_required")
    if utcnow() - signature.signed_at > VALID_FOR:
        raise Refused("the signature has expired: sign again", code="signature_expired")
    return signature
