"""Menu options 1 (screen), 2 (randomize) and 6 (screen failure or
discontinuation): SPEC §6.3–6.5.

Nothing here speaks an arm: the randomization result names the randomization
number and the kits, which reveal nothing (kit numbers are not ordered by arm).

In a study whose eligibility the EDC records (``eligibility_source: edc``) the
core's preview has no eligibility question to ask, and refuses at once a
subject whose recorded eligibility is incomplete or not met; the caller hears
that it is the EDC's record that decides.
"""

from __future__ import annotations

from typing import Any

from core.errors import IvrsError
from core.fields import is_digits
from core.previews import randomization_questions, status_change
from core.randomize import randomize
from core.subjects import discontinue, record_screen_failure, screen_subject
from dialogs.output import KEY, NUMBER, Digits, Say, Term
from dialogs.voice.base import confirm_or_cancel, subject_entry

# Reasons by keypad digit, per kind of status change (the audit trail keeps the code).
REASONS = {
    "screen_failure": ("not_eligible", "consent_withdrawn", "other"),
    "discontinuation": ("adverse_event", "consent_withdrawn", "lost_to_follow_up", "other"),
}


_rand_states, _rand_transitions = subject_entry("rand", "rand_question", "can_randomize")
_status_states, _status_transitions = subject_entry("status", "status_reason",
                                                     "can_change_status")

STATES: list[dict[str, Any]] = [
    {"name": "screen_site", "prompt": "screen.site", "gather": NUMBER,
     "invalid": "invalid.number", "slot": "site"},
    {"name": "screen_site_ok", "readback": "site", "gather": KEY},
    {"name": "screen_confirm", "prompt": "confirm_screen", "gather": KEY},
    *_rand_states,
    {"name": "rand_question", "prompt": "ask_question", "gather": KEY},
    *_status_states,
    {"name": "status_reason", "prompt": "ask_status_reason", "gather": KEY},
    {"name": "status_confirm", "prompt": "confirm_status_change", "gather": KEY},
]

TRANSITIONS: list[dict[str, Any]] = [
    # 1: screen
    {"trigger": "key", "source": "menu", "dest": "screen_site",
     "conditions": ["chose_1", "has_several_sites"]},
    {"trigger": "key", "source": "menu", "dest": "screen_confirm", "conditions": "chose_1",
     "before": "keep_only_site"},
    {"trigger": "key", "source": "screen_site", "dest": "screen_site_ok",
     "conditions": ["entered_number", "is_own_site"], "before": "keep_entry"},
    {"trigger": "key", "source": "screen_site_ok", "dest": "menu",
     "conditions": "pressed_1", "after": "do_screen"},
    {"trigger": "key", "source": "screen_site_ok", "dest": "screen_site",
     "conditions": "pressed_2"},
    *confirm_or_cancel("screen_confirm", "do_screen"),
    # 2: randomize
    {"trigger": "key", "source": "menu", "dest": "rand_subject", "conditions": "chose_2"},
    *_rand_transitions,
    {"trigger": "key", "source": "rand_question", "dest": "rand_question",
     "conditions": "answered"},
    {"trigger": "key", "source": "rand_question", "dest": "menu",
     "conditions": "answered_not_eligible", "after": "record_not_eligible"},
    {"trigger": "key", "source": "rand_question", "dest": "menu",
     "conditions": ["at_summary", "pressed_1"], "after": "do_randomize"},
    {"trigger": "key", "source": "rand_question", "dest": "menu",
     "conditions": ["at_summary", "pressed_2"], "after": "say_cancelled"},
    # 6: screen failure or discontinuation
    {"trigger": "key", "source": "menu", "dest": "status_subject", "conditions": "chose_6"},
    *_status_transitions,
    {"trigger": "key", "source": "status_reason", "dest": "status_confirm",
     "conditions": "reason_chosen"},
    *confirm_or_cancel("status_confirm", "do_status_change"),
]


class EnrolmentFlow:
    """Mixed into the call model (dialogs.voice.machine.VoiceCall)."""

    # --- 1: screen ----------------------------------------------------------------------------

    def has_several_sites(self) -> bool:
        return len(self.session["user"]["sites"]) > 1

    def keep_only_site(self) -> None:
        sites = self.session["user"]["sites"]
        self.slots["site"] = sites[0] if sites else ""

    def is_own_site(self) -> bool:
        return self.entry in self.session["user"]["sites"] or self.refuse("error.wrong_site")

    def confirm_screen(self) -> list[Say]:
        return [Say("screen.confirm", {"site": Digits(self.slots.get("site", ""))})]

    def do_screen(self) -> None:
        try:
            result = screen_subject(self.ctx.db, site_code=self.slots["site"],
                                    actor=self.actor(), study=self.ctx.study,
                                    idempotency_key=self.idempotency_key("screen"))
        except IvrsError as error:
            self.say_error(error)
            return
        self.remember(Say("screen.done", {"subject": Digits(result.subject_number),
                                          "confirmation": Digits(result.confirmation)}))

    # --- 2: randomize -------------------------------------------------------------------------

    def can_randomize(self) -> bool:
        try:
            plan = randomization_questions(self.ctx.db, subject_number=self.slots["subject"],
                                           actor=self.actor(), study=self.ctx.study)
        except IvrsError as error:
            if error.code == "not_eligible":  # only the EDC's record says so before asking
                return self.refuse("rand.not_eligible_edc",
                                   subject=Digits(self.slots["subject"]))
            return self.refuse_error(error)
        self.slots["eligibility_source"] = plan.eligibility_source
        # The questions in order: eligibility (yes/no), one per factor (digit =
        # level's position), and last the summary to confirm.
        self.slots["questions"] = (
            [{"kind": "eligibility", "code": code} for code in plan.eligibility]
            + [{"kind": "factor", "code": f.code, "levels": list(f.levels)}
               for f in plan.factors]
            + [{"kind": "summary"}])
        self.slots["answers"] = {}
        self.slots["levels"] = {}
        self.slots["asked"] = 0
        return True

    def _question(self) -> dict[str, Any]:
        return self.slots["questions"][self.slots["asked"]]

    def at_summary(self) -> bool:
        return self._question()["kind"] == "summary"

    def ask_question(self) -> list[Say]:
        question = self._question()
        if question["kind"] == "summary":
            return self.randomization_summary()
        code = question["code"]
        if question["kind"] == "eligibility":
            return [Say("rand.eligibility", {"question": Term("eligibility." + code)})]
        return [Say("rand.factor", {"factor": Term("factor." + code)}), *[
            Say("rand.level", {"digit": position, "level": Term(f"level.{code}.{level}")})
            for position, level in enumerate(question["levels"], start=1)]]

    def answered(self) -> bool:
        question = self._question()
        if question["kind"] == "summary":
            return False
        if question["kind"] == "eligibility":
            if not self.key_is("1"):
                return False
            self.slots["answers"][question["code"]] = True
        else:
            levels = question["levels"]
            if not (is_digits(self.entry) and 1 <= int(self.entry) <= len(levels)):
                return self.refuse("invalid.key")
            self.slots["levels"][question["code"]] = levels[int(self.entry) - 1]
        self.slots["asked"] += 1
        return True

    def answered_not_eligible(self) -> bool:
        return self._question()["kind"] == "eligibility" and self.key_is("2")

    def record_not_eligible(self) -> None:
        question = self._question()
        answers = {**self.slots["answers"], question["code"]: False}
        try:
            randomize(self.ctx.db, subject_number=self.slots["subject"], actor=self.actor(),
                      eligibility=answers, factors={}, study=self.ctx.study,
                      idempotency_key=self.idempotency_key("randomize"))
        except IvrsError as error:
            if error.code != "not_eligible":
                self.say_error(error)
                return
        self.remember(Say("rand.not_eligible", {"subject": Digits(self.slots["subject"])}))

    def randomization_summary(self) -> list[Say]:
        says = [Say("rand.summary", {"subject": Digits(self.slots["subject"])})]
        for factor, level in self.slots.get("levels", {}).items():
            says.append(Say("rand.summary_level", {"factor": Term("factor." + factor),
                                                   "level": Term(f"level.{factor}.{level}")}))
        return [*says, Say("rand.confirm")]

    def do_randomize(self) -> None:
        try:
            result = randomize(self.ctx.db, subject_number=self.slots["subject"],
                               actor=self.actor(), eligibility=self.slots["answers"],
                               factors=self.slots["levels"], study=self.ctx.study,
                               idempotency_key=self.idempotency_key("randomize"))
        except IvrsError as error:
            if error.code == "not_eligible" and self.slots.get("eligibility_source") == "edc":
                # The EDC changed an answer since the preview; the refusal is on record.
                self.remember(Say("rand.not_eligible_edc",
                                  {"subject": Digits(self.slots["subject"])}))
                return
            self.say_error(error)
            return
        says = [Say("rand.done", {"subject": Digits(result.subject_number),
                                  "number": Digits(result.randomization_number)})]
        if result.kits:
            says += [Say("kits.give", {"kit": Digits(kit), "visit": Term("visit." + result.visit)})
                     for kit in result.kits]
        says.append(Say("confirmation", {"confirmation": Digits(result.confirmation)}))
        self.remember(*says)

    # --- 6: screen failure or discontinuation ---------------------------------------------------

    def can_change_status(self) -> bool:
        try:
            change = status_change(self.ctx.db, subject_number=self.slots["subject"],
                                   actor=self.actor(), study=self.ctx.study)
        except IvrsError as error:
            return self.refuse_error(error)
        self.slots["kind"] = change.kind
        return True

    def ask_status_reason(self) -> list[Say]:
        kind = self.slots["kind"]
        return [Say(f"status.{kind}.ask", {"subject": Digits(self.slots["subject"])}), *[
            Say("status.reason_option", {"digit": digit, "reason": Term("reason." + reason)})
            for digit, reason in enumerate(REASONS[kind], start=1)]]

    def reason_chosen(self) -> bool:
        reasons = REASONS[self.slots["kind"]]
        if not (is_digits(self.entry) and 1 <= int(self.entry) <= len(reasons)):
            return False
        self.slots["reason"] = reasons[int(self.entry) - 1]
        return True

    def confirm_status_change(self) -> list[Say]:
        return [Say(f"status.{self.slots['kind']}.confirm",
                    {"subject": Digits(self.slots["subject"]),
                     "reason": Term("reason." + self.slots["reason"])})]

    def do_status_change(self) -> None:
        service = (record_screen_failure if self.slots["kind"] == "screen_failure"
                   else discontinue)
        try:
            result = service(self.ctx.db, subject_number=self.slots["subject"],
                             reason=self.slots["reason"], actor=self.actor(),
                             study=self.ctx.study,
                             idempotency_key=self.idempotency_key("status"))
        except IvrsError as error:
            self.say_error(error)
            return
        self.remember(Say(f"status.{self.slots['kind']}.done",
                          {"subject": Digits(result.subject_number),
                           "confirmation": Digits(result.confirmation)}))

