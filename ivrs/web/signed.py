"""What the console's signed forms share (approvals, emergency unblinding): the
form's idempotency key, the status of a refusal, and a signed step.

A signed step is the core service called as every door calls it, signed by the
password typed again (``core.signatures.sign_with_password``) with the meaning
the form showed. A form sent twice (a double click, a reload) carries the same
idempotency key: the service is asked first without a signature, so that a key
it has answered already gets that answer back and nobody is asked to sign
twice, and so that a step the service refuses anyway (another site, a request
decided already) is refused before the password is checked. Only when the
service's one remaining objection is the missing signature is the password
checked, then the step taken.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TypeVar

from flask import request

from core.errors import IvrsError
from core.signatures import Signature, sign_with_password
from ivrs.render.refusal_status import status_for
from ivrs.web.base import actor, db, refusal_text, user, words

T = TypeVar("T")
__all__ = ["answered", "form_key", "new_form_key", "sign_and_take", "signed_refusal",
           "signed_step", "status_for"]


def new_form_key() -> str:
    """The idempotency key of a form, made when the form is drawn."""
    return uuid.uuid4().hex


def form_key() -> str | None:
    return (request.form.get("idempotency_key") or "").strip()[:100] or None


def signed_step(step: Callable[[Signature | None], T], *, meaning: str, password: str) -> T:
    """``step(signature)`` signed with ``password`` and ``meaning``, or the
    answer it gave this form's key already. Refusals are the service's, or the
    signature's (``bad_credentials``, counted toward the lockout; ``locked``)."""
    done = answered(step)
    if done is not None:
        return done
    return sign_and_take(step, meaning=meaning, password=password)


def answered(step: Callable[[Signature | None], T]) -> T | None:
    """The service's answer to this form's key, if it gave one already; None
    when all it still needs is the signature. Its other refusals are raised."""
    try:
        return step(None)
    except IvrsError as refusal:
        if refusal.code != "signature_required":
            raise
    return None


def sign_and_take(step: Callable[[Signature | None], T], *, meaning: str, password: str) -> T:
    signature = sign_with_password(db(), password=password, actor=actor(), meaning=meaning,
                                   study=user().study)
    return step(signature)


def signed_refusal(error: IvrsError) -> str:
    """A refusal of a signed form in the reader's words: a wrong password says
    so (the phone's "not valid"), never more."""
    if error.code == "bad_credentials":
        return words("web.sign.bad_password")
    return refusal_text(error)
