"""APPROVE and REJECT by SMS: an approver decides a gated request, signed.

``APPROVE <n>`` or ``REJECT <n> <reason>`` is checked first (the request
exists, the sender may decide it, it is still pending, it is not their own),
then the signature is asked: the sender's user ID and PIN again, in the next
message (21 CFR 11.200: both components, even inside a signed-in session). A
wrong pair counts toward the lockout like a wrong PIN; anything else than a
signature cancels the decision (and runs as a command). The PIN is never kept.
"""

from __future__ import annotations

from core.errors import IvrsError, Refused
from core.fields import is_digits
from core.gates import check_decider, decide
from core.signatures import Signature, sign


class DecisionsMixin:
    """Needs what ``CommandsMixin`` needs, and ``self.words``."""

    def decision_asked(self) -> bool:
        """An APPROVE/REJECT the sender may sign: kept in the session, True. A
        malformed or refused one is explained by ``do_approve``/``do_reject``."""
        if self.command.name not in ("approve", "reject"):
            return False
        approve = self.command.name == "approve"
        args = self.command.args
        if not args or not is_digits(args[0]) or (not approve and len(args) < 2):
            return False
        try:
            check_decider(self.ctx.db, number=args[0], actor=self.actor(),
                          study=self.ctx.study, approve=approve)
        except IvrsError as error:
            self._decision_refused = error
            return False
        self.session["deciding"] = {"approve": approve, "number": args[0],
                                    "reason": " ".join(self.words[2:]) or None}
        return True

    def ask_signature(self) -> None:
        deciding = self.session["deciding"]
        self.say("sms.sign_approve" if deciding["approve"] else "sms.sign_reject",
                 number=deciding["number"])

    def do_approve(self) -> None:
        if not self._said_decision_refused():
            self.say("sms.usage.approve")

    def do_reject(self) -> None:
        if not self._said_decision_refused():
            self.say("sms.usage.reject")

    def _said_decision_refused(self) -> bool:
        refused = getattr(self, "_decision_refused", None)
        if refused is not None:
            self.say_error(refused)
        return refused is not None

    # --- the signature ---------------------------------------------------------------------

    def looks_like_signature(self) -> bool:
        return len(self.words) == 2 and all(is_digits(word) for word in self.words)

    def _signature(self) -> Signature | IvrsError:
        if not hasattr(self, "_signed"):
            deciding = self.session["deciding"]
            verb = "approve" if deciding["approve"] else "reject"
            try:
                self._signed = sign(self.ctx.db, user_code=self.words[0], pin=self.words[1],
                                    actor=self.actor(), study=self.ctx.study,
                                    meaning=f"{verb} request {deciding['number']}")
            except Refused as refusal:
                self._signed = refusal
        return self._signed

    def signature_accepted(self) -> bool:
        return isinstance(self._signature(), Signature)

    def signer_locked(self) -> bool:
        outcome = self._signature()
        if isinstance(outcome, IvrsError) and outcome.code == "locked":
            self._sign_in = "locked"  # forget_user says so and ends the session
            return True
        return False

    def decide_signed(self) -> None:
        deciding = self.session.pop("deciding")
        try:
            decision = decide(self.ctx.db, number=deciding["number"],
                              approve=deciding["approve"], reason=deciding["reason"],
                              actor=self.actor(), signature=self._signature(),
                              study=self.ctx.study, idempotency_key=self.key("decide"))
        except IvrsError as error:
            self.say_error(error)
            return
        self.say("sms.approved" if decision.status == "approved" else "sms.rejected",
                 number=decision.number, confirmation=decision.confirmation)

    def say_signature_refused(self) -> None:
        self.session.pop("deciding", None)
        outcome = self._signature()
        if outcome.code == "bad_credentials":
            self.say("sms.signature_refused")
        else:
            self.say_error(outcome)

    def cancel_decision(self) -> None:
        self.session.pop("deciding", None)
        self.say("sms.decision_cancelled")
