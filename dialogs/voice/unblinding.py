"""Menu option 7, emergency unblinding (SPEC §6.8), investigators only.

subject (read back) -> electronic signature: the PIN again (the caller signed in
with user ID and PIN in this call, a continuous session: 21 CFR 11.200(a)(1)(i)
lets later signings in it use one component) -> reason -> ``1`` to confirm -> the arm is said
(mode ``investigator``) or a request number is given (mode ``approval``). An
investigator whose request was approved calls again: after the subject and the
signature, the arm is said at once.

A wrong signature counts toward the lockout like a wrong PIN at sign-in; the
call ends when the user is locked. The PIN is never kept in the session; the
signature is (signer, meaning, time). The arm is said, never remembered: menu
option 9 does not repeat it.
"""

from __future__ import annotations

from typing import Any

from core.errors import IvrsError, Refused
from core.fields import is_digits
from core.signatures import Signature, sign
from core.unblinding import REASONS, check_unblinding, unblind
from dialogs.output import KEY, NUMBER, Digits, Say, Term
from dialogs.voice.base import confirm_or_cancel, subject_entry

_states, _transitions = subject_entry("unbl", "unbl_sign_pin", "may_unblind")

STATES: list[dict[str, Any]] = [
    *_states,
    {"name": "unbl_sign_pin", "prompt": "unblind.sign_pin", "gather": NUMBER,
     "invalid": "invalid.number"},
    {"name": "unbl_reason", "prompt": "unblind_reason_prompt", "gather": KEY},
    {"name": "unbl_confirm", "prompt": "unblind_confirm_prompt", "gather": KEY},
]

TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "key", "source": "menu", "dest": "unbl_subject", "conditions": "chose_7"},
    *_transitions,
    # an approved request of this investigator: the arm at once
    {"trigger": "key", "source": "unbl_sign_pin", "dest": "menu",
     "conditions": ["entered_number", "signature_accepted", "request_approved"],
     "after": "do_unblind"},
    {"trigger": "key", "source": "unbl_sign_pin", "dest": "unbl_reason",
     "conditions": ["entered_number", "signature_accepted"]},
    {"trigger": "key", "source": "unbl_sign_pin", "dest": "goodbye",
     "conditions": ["entered_number", "signer_locked"], "after": "say_locked"},
    {"trigger": "key", "source": "unbl_sign_pin", "dest": "unbl_sign_pin",
     "conditions": "entered_number", "after": "say_signature_refused"},
    {"trigger": "key", "source": "unbl_reason", "dest": "unbl_confirm",
     "conditions": "unblinding_reason"},
    *confirm_or_cancel("unbl_confirm", "do_unblind"),
]


class UnblindingFlow:
    """Mixed into the call model (dialogs.voice.machine.VoiceCall)."""

    def chose_7(self) -> bool:
        return self._chose("7")

    def may_unblind(self) -> bool:
        try:
            check = check_unblinding(self.ctx.db, subject_number=self.slots["subject"],
                                     actor=self.actor(), study=self.ctx.study)
        except IvrsError as error:
            return self.refuse_error(error)
        if check.pending and not check.approved:
            return self.refuse("error.unblinding_pending", number=Digits(check.pending))
        self.slots["approved_request"] = check.approved
        return True

    # --- the signature ---------------------------------------------------------------------

    def _signature(self) -> Signature | IvrsError:
        # Several transitions ask; the PIN is checked once per request.
        if not hasattr(self, "_signed"):
            meaning = f"emergency unblinding of subject {self.slots['subject']}"
            try:
                # The signer is the caller, identified at sign-in: the PIN alone.
                self._signed = sign(self.ctx.db, user_code=None, pin=self.entry,
                                    actor=self.actor(), meaning=meaning, study=self.ctx.study)
            except Refused as refusal:
                self._signed = refusal
        return self._signed

    def signature_accepted(self) -> bool:
        signature = self._signature()
        if not isinstance(signature, Signature):
            return False
        self.slots["signature"] = signature.to_json()
        return True

    def signer_locked(self) -> bool:
        outcome = self._signature()
        return isinstance(outcome, IvrsError) and outcome.code == "locked"

    def say_signature_refused(self) -> None:
        outcome = self._signature()
        self.say("login.not_valid" if outcome.code == "bad_credentials"
                 else "error.refused")

    def request_approved(self) -> bool:
        return bool(self.slots.get("approved_request"))

    # --- reason and confirmation -----------------------------------------------------------

    def unblind_reason_prompt(self) -> list[Say]:
        return [Say("replace.reason_option", {"digit": digit, "reason": Term("reason." + r)})
                for digit, r in enumerate(REASONS, start=1)]

    def unblinding_reason(self) -> bool:
        if not (is_digits(self.entry) and 1 <= int(self.entry) <= len(REASONS)):
            return False
        self.slots["reason"] = REASONS[int(self.entry) - 1]
        return True

    def unblind_confirm_prompt(self) -> list[Say]:
        return [Say("unblind.confirm", {"subject": Digits(self.slots["subject"])})]

    def do_unblind(self) -> None:
        signature = Signature.from_json(self.slots.pop("signature"))
        try:
            result = unblind(self.ctx.db, subject_number=self.slots["subject"],
                             reason=self.slots.get("reason", ""), signature=signature,
                             actor=self.actor(), study=self.ctx.study,
                             idempotency_key=self.idempotency_key("unblind"))
        except IvrsError as error:
            self.say_error(error)
            return
        subject = Digits(result.subject_number)
        if result.status == "unblinded":
            # Said, not remembered: the arm must not wait in the session for option 9.
            for revealed in result.arms:
                self.say("unblind.arm", subject=subject, arm=revealed.arm)
            self.say("unblind.done", number=Digits(result.number),
                     confirmation=Digits(result.confirmation))
        else:
            self.remember(Say("unblind.requested", {"number": Digits(result.number),
                                                     "subject": subject}),
                          Say("confirmation", {"confirmation": Digits(result.confirmation)}))
