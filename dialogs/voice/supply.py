"""Menu options 3 (dispense at the visit due), 4 (replace a kit) and 5 (confirm
a shipment's receipt): SPEC §6.6–6.7."""

from __future__ import annotations

from typing import Any

from core.errors import IvrsError
from core.fields import is_digits
from core.previews import kit_in_shipment, shipment_due, visit_due
from core.supply.dispensing import dispense, replace_kit
from core.supply.receipt import receive_shipment
from dialogs.output import KEY, NUMBER, Digits, Say, Term
from dialogs.voice.base import confirm_or_cancel, number_entry, subject_entry

REPLACEMENT_REASONS = ("lost", "damaged")  # by keypad digit
MAX_REPORTED_KITS = 50  # kit numbers typed one by one: beyond this, call the depot

_disp_states, _disp_transitions = subject_entry("disp", "disp_confirm", "visit_is_due")
_repl_states, _repl_transitions = number_entry("repl_subject", "subject", "subject.enter",
                                               "repl_kit")
_kit_states, _kit_transitions = number_entry("repl_kit", "kit", "replace.kit", "repl_reason")
_recv_states, _recv_transitions = number_entry("recv_shipment", "shipment", "receipt.shipment",
                                               "recv_condition", "shipment_is_due")

STATES: list[dict[str, Any]] = [
    *_disp_states,
    {"name": "disp_confirm", "prompt": "visit_due_prompt", "gather": KEY},
    *_repl_states,
    *_kit_states,
    {"name": "repl_reason", "prompt": "replace_reason_prompt", "gather": KEY},
    {"name": "repl_confirm", "prompt": "replace_confirm_prompt", "gather": KEY},
    *_recv_states,
    {"name": "recv_condition", "prompt": "receipt_condition_prompt", "gather": KEY},
    {"name": "recv_kit", "prompt": "receipt_kit_prompt", "gather": NUMBER, "empty_ends": True,
     "invalid": "invalid.number"},
    {"name": "recv_kit_ok", "prompt": "receipt_kit_readback", "gather": KEY},
    {"name": "recv_confirm", "prompt": "receipt_summary", "gather": KEY},
]

TRANSITIONS: list[dict[str, Any]] = [
    # 3: dispense
    {"trigger": "key", "source": "menu", "dest": "disp_subject", "conditions": "chose_3"},
    *_disp_transitions,
    *confirm_or_cancel("disp_confirm", "do_dispense"),
    # 4: replace a kit
    {"trigger": "key", "source": "menu", "dest": "repl_subject", "conditions": "chose_4"},
    *_repl_transitions,
    *_kit_transitions,
    {"trigger": "key", "source": "repl_reason", "dest": "repl_confirm",
     "conditions": "replacement_reason"},
    *confirm_or_cancel("repl_confirm", "do_replace"),
    # 5: shipment receipt
    {"trigger": "key", "source": "menu", "dest": "recv_shipment", "conditions": "chose_5"},
    *_recv_transitions,
    {"trigger": "key", "source": "recv_condition", "dest": "recv_confirm",
     "conditions": "pressed_1"},
    {"trigger": "key", "source": "recv_condition", "dest": "recv_kit", "conditions": "pressed_2"},
    {"trigger": "key", "source": "recv_condition", "dest": "recv_confirm",
     "conditions": "pressed_3", "before": "note_excursion"},
    {"trigger": "key", "source": "recv_kit", "dest": "recv_confirm", "conditions": "list_ended"},
    {"trigger": "key", "source": "recv_kit", "dest": "recv_kit_ok",
     "conditions": ["entered_number", "kit_of_shipment"], "before": "keep_kit"},
    {"trigger": "key", "source": "recv_kit_ok", "dest": "recv_kit", "conditions": "pressed_1",
     "before": "mark_damaged"},
    {"trigger": "key", "source": "recv_kit_ok", "dest": "recv_kit", "conditions": "pressed_2",
     "before": "mark_missing"},
    {"trigger": "key", "source": "recv_kit_ok", "dest": "recv_kit", "conditions": "pressed_3"},
    *confirm_or_cancel("recv_confirm", "do_receive"),
]


class SupplyFlow:
    """Mixed into the call model (dialogs.voice.machine.VoiceCall)."""

    # --- 3: dispense at the visit due -----------------------------------------------------------

    def visit_is_due(self) -> bool:
        try:
            due = visit_due(self.ctx.db, subject_number=self.slots["subject"],
                            actor=self.actor(), study=self.ctx.study)
        except IvrsError as error:
            return self.refuse_error(error)
        self.slots["visit"] = {"code": due.visit, "kits": due.kits,
                               "out_of_window": due.out_of_window, "missed": list(due.missed)}
        return True

    def visit_due_prompt(self) -> list[Say]:
        visit = self.slots["visit"]
        says = [Say("dispense.missed", {"visit": Term("visit." + code)})
                for code in visit["missed"]]
        if visit["out_of_window"]:
            says.append(Say("dispense.out_of_window", {"visit": Term("visit." + visit["code"])}))
        return [*says, Say("dispense.due", {"visit": Term("visit." + visit["code"]),
                                            "count": visit["kits"]})]

    def do_dispense(self) -> None:
        try:
            result = dispense(self.ctx.db, subject_number=self.slots["subject"],
                              actor=self.actor(), study=self.ctx.study,
                              idempotency_key=self.idempotency_key("dispense"))
        except IvrsError as error:
            self.say_error(error)
            return
        says = [Say("kits.give", {"kit": Digits(kit), "visit": Term("visit." + result.visit)})
                for kit in result.kits]
        if not result.kits:
            says.append(Say("dispense.visit_recorded", {"visit": Term("visit." + result.visit)}))
        self.remember(*says, Say("confirmation", {"confirmation": Digits(result.confirmation)}))

    # --- 4: replace a kit ---------------------------------------------------------------------

    def replace_reason_prompt(self) -> list[Say]:
        return [Say("replace.reason_option", {"digit": digit, "reason": Term("reason." + reason)})
                for digit, reason in enumerate(REPLACEMENT_REASONS, start=1)]

    def replacement_reason(self) -> bool:
        if not (is_digits(self.entry) and 1 <= int(self.entry) <= len(REPLACEMENT_REASONS)):
            return False
        self.slots["reason"] = REPLACEMENT_REASONS[int(self.entry) - 1]
        return True

    def replace_confirm_prompt(self) -> list[Say]:
        return [Say("replace.confirm", {"kit": Digits(self.slots["kit"]),
                                        "subject": Digits(self.slots["subject"]),
                                        "reason": Term("reason." + self.slots["reason"])})]

    def do_replace(self) -> None:
        try:
            result = replace_kit(self.ctx.db, subject_number=self.slots["subject"],
                                 kit_number=self.slots["kit"], reason=self.slots["reason"],
                                 actor=self.actor(), study=self.ctx.study,
                                 idempotency_key=self.idempotency_key("replace"))
        except IvrsError as error:
            self.say_error(error)
            return
        self.remember(Say("replace.done", {"old": Digits(result.replaced_kit)}),
                      Say("kits.give", {"kit": Digits(result.kit),
                                        "visit": Term("visit." + result.visit)}),
                      Say("confirmation", {"confirmation": Digits(result.confirmation)}))

    # --- 5: shipment receipt ------------------------------------------------------------------

    def shipment_is_due(self) -> bool:
        try:
            due = shipment_due(self.ctx.db, shipment_number=self.slots["shipment"],
                               actor=self.actor(), study=self.ctx.study)
        except IvrsError as error:
            return self.refuse_error(error)
        self.slots.update(kits=due.kits, damaged=[], missing=[], excursion=False)
        return True

    def receipt_condition_prompt(self) -> list[Say]:
        return [Say("receipt.condition", {"count": self.slots["kits"]})]

    def note_excursion(self) -> None:
        self.slots["excursion"] = True

    def receipt_kit_prompt(self) -> list[Say]:
        return [Say("receipt.kit")]

    def list_ended(self) -> bool:
        return self.entry == ""

    def kit_of_shipment(self) -> bool:
        reported = len(self.slots["damaged"]) + len(self.slots["missing"])
        if reported >= MAX_REPORTED_KITS:
            return self.refuse("receipt.too_many")
        if not kit_in_shipment(self.ctx.db, shipment_number=self.slots["shipment"],
                               kit_number=self.entry, study=self.ctx.study):
            return self.refuse("error.kit_not_in_shipment",
                               shipment=Digits(self.slots["shipment"]))
        return True

    def keep_kit(self) -> None:
        self.slots["kit"] = self.entry

    def receipt_kit_readback(self) -> list[Say]:
        return [Say("receipt.kit_readback", {"kit": Digits(self.slots["kit"])})]

    def _mark(self, outcome: str) -> None:
        kit = self.slots.pop("kit")
        for listed in ("damaged", "missing"):
            if kit in self.slots[listed]:
                self.slots[listed].remove(kit)
        self.slots[outcome].append(kit)

    def mark_damaged(self) -> None:
        self._mark("damaged")

    def mark_missing(self) -> None:
        self._mark("missing")

    def receipt_summary(self) -> list[Say]:
        says = [Say("receipt.summary", {"shipment": Digits(self.slots["shipment"]),
                                        "count": self.slots["kits"],
                                        "damaged": len(self.slots["damaged"]),
                                        "missing": len(self.slots["missing"])})]
        if self.slots["excursion"]:
            says.append(Say("receipt.summary_excursion"))
        return [*says, Say("receipt.confirm")]

    def do_receive(self) -> None:
        try:
            result = receive_shipment(self.ctx.db, shipment_number=self.slots["shipment"],
                                      actor=self.actor(), damaged=self.slots["damaged"],
                                      missing=self.slots["missing"],
                                      temperature_excursion=self.slots["excursion"],
                                      study=self.ctx.study,
                                      idempotency_key=self.idempotency_key("receive"))
        except IvrsError as error:
            self.say_error(error)
            return
        self.remember(Say("receipt.done", {"shipment": Digits(result.shipment_number),
                                           "received": result.received,
                                           "quarantined": result.quarantined}),
                      Say("confirmation", {"confirmation": Digits(result.confirmation)}))
