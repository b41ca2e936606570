"""The SMS commands of a signed-in user (SPEC §7), each a call into the core.

Every command answers in one reply: what was done (with the confirmation
number) or why nothing was. A transaction's idempotency key is the message's
``MessageSid``, so a message Twilio delivers twice acts once. Replies name
subjects, visits, kits, shipments and counts, never a kit type or an arm.
"""

from __future__ import annotations

from core.errors import IvrsError
from core.fields import is_digits
from core.login import set_language
from core.overviews import site_stock, subject_overview
from core.supply.confirmation import confirm_kits
from core.supply.dispensing import dispense
from core.supply.receipt import receive_shipment
from dialogs.errors import error_prompt
from dialogs.output import LanguageName, Term
from dialogs.sms.keywords import parse, parse_receipt, split

MAX_KITS_PER_MESSAGE = 4  # more would not fit the reply in three segments

# Refusals of a kit confirmation that have an SMS text of their own.
KIT_REFUSALS = frozenset({"wrong_kit", "kit_of_another_subject", "kit_already_confirmed",
                          "no_pending_kit"})


class CommandsMixin:
    """Needs ``self.command``, ``self.session``, ``self.ctx``, ``self.say``,
    ``self.actor()`` and ``self.key(what)`` from the text model."""

    def run_command(self) -> None:
        handler = getattr(self, f"do_{self.command.name}", None)
        if handler is None:
            self.say("sms.unknown_command")
            return
        try:
            handler()
        except IvrsError as error:
            self.say_error(error)

    def run_kept_command(self) -> None:
        """After the PIN: the command that opened the session (a greeting or an
        unknown word just gets told that the PIN was accepted)."""
        kept = self.session.pop("pending", None)
        self.command = parse(kept)
        if self.command.name in ("empty", "unknown"):
            self.say("sms.signed_in")
        elif self.command.name in ("approve", "reject"):
            # A decision asks for its signature: the kept text is taken as if
            # texted now (ready -> sign).
            self.words = split(kept)
            self.machine.events["text"].trigger(self)
        else:
            self.run_command()

    def say_error(self, error: IvrsError) -> None:
        params = {name: value for name, value in error.params.items()
                  if isinstance(value, (str, int, list))}
        if error.code == "wrong_kit" and params.get("assignments", 1) > 1:
            # Several assignments await: any of their kits would have been right.
            self.say("sms.wrong_kit_several", **params)
        elif error.code in KIT_REFUSALS:
            self.say(f"sms.{error.code}", **params)
        elif error.code == "bad_language":
            self.say("sms.language_unknown", **params)
        else:
            self.say(error_prompt(error.code), **params)

    # --- commands ------------------------------------------------------------------------------

    def do_number(self) -> None:
        """A bare number once signed in: the kit handed out, when one is pending."""
        self._confirm(list(self.command.args))

    def do_kit(self) -> None:
        kits = self.command.args
        if not kits or not all(is_digits(k) for k in kits):
            self.say("sms.usage.kit")
        elif len(kits) > MAX_KITS_PER_MESSAGE:
            self.say("sms.too_many_kits", limit=MAX_KITS_PER_MESSAGE)
        else:
            self._confirm(list(dict.fromkeys(kits)))

    def _confirm(self, kits: list[str]) -> None:
        outcome = confirm_kits(self.ctx.db, kit_numbers=kits, actor=self.actor(),
                               study=self.ctx.study, key_prefix=self.key("kit"))
        for group in outcome.confirmed:
            if len(group.kits) == 1:
                self.say("sms.kit_confirmed", kit=group.kits[0], subject=group.subject,
                         visit=group.visit, confirmation=group.confirmations[0])
            else:
                self.say("sms.kits_confirmed", kits=list(group.kits), subject=group.subject,
                         visit=group.visit)
        for error in outcome.refused:
            self.say_error(error)
        if outcome.confirmed and outcome.still_pending:
            self.say("sms.kits_to_confirm", kits=list(outcome.still_pending))

    def do_dispense(self) -> None:
        if len(self.command.args) != 1 or not is_digits(self.command.args[0]):
            self.say("sms.usage.disp")
            return
        result = dispense(self.ctx.db, subject_number=self.command.args[0], actor=self.actor(),
                          study=self.ctx.study, idempotency_key=self.key("disp"),
                          ask_by_notification=False)
        if result.missed:
            self.say("sms.visits_missed", visits=list(result.missed))
        if result.kits:
            self.say("sms.dispensed", subject=result.subject_number, visit=result.visit,
                     kits=list(result.kits), confirmation=result.confirmation)
        else:
            self.say("sms.visit_recorded", subject=result.subject_number, visit=result.visit,
                     confirmation=result.confirmation)
        if result.out_of_window:
            self.say("sms.out_of_window")

    def do_receive(self) -> None:
        receipt = parse_receipt(self.command.args)
        if receipt is None:
            self.say("sms.usage.recv")
            return
        result = receive_shipment(self.ctx.db, shipment_number=receipt.shipment,
                                  damaged=receipt.damaged, missing=receipt.missing,
                                  actor=self.actor(), study=self.ctx.study,
                                  idempotency_key=self.key("recv"))
        self.say("sms.received", shipment=result.shipment_number, received=result.received,
                 damaged=result.damaged, missing=result.missing,
                 confirmation=result.confirmation)

    def do_stock(self) -> None:
        stock = site_stock(self.ctx.db, actor=self.actor(), study=self.ctx.study)
        if not stock:
            self.say("error.not_allowed")
        for site in stock:
            self.say("sms.stock", site=site.site, available=site.available,
                     quarantined=site.quarantined, incoming=site.incoming)

    def do_status(self) -> None:
        if len(self.command.args) != 1 or not is_digits(self.command.args[0]):
            self.say("sms.usage.status")
            return
        found = subject_overview(self.ctx.db, subject_number=self.command.args[0],
                                 actor=self.actor(), study=self.ctx.study)
        self.say("sms.status", subject=found.subject_number,
                 status=Term(f"subject_status.{found.status}"))
        if found.last_visit:
            self.say("sms.status_last_visit", visit=found.last_visit, date=found.last_visit_on)
        if found.next_visit:
            self.say("sms.status_next_visit", visit=found.next_visit,
                     start=found.window_start, end=found.window_end)

    def do_language(self) -> None:
        if len(self.command.args) != 1:
            self.say("sms.usage.lang")
            return
        chosen = set_language(self.ctx.db, language=self.command.args[0], actor=self.actor(),
                              study=self.ctx.study, idempotency_key=self.key("lang"))
        self.session["language"] = self.session["user"]["language"] = chosen
        self.say("sms.language_set", language=LanguageName(chosen))

    def do_help(self) -> None:
        self.say("sms.help")
