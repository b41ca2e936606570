"""The SMS dialog: one ``transitions`` machine per process, one model per message.

A sender's session (SPEC §7) goes ``new`` -> ``pin`` -> ``ready``:

- ``new``: any message opens a session; its command is kept and the PIN asked
  ("reply with your PIN"; "user ID and PIN" when several users share the phone);
- ``pin``: the PIN signs in (the lockout is the voice one: same user row, same
  count) and the kept command runs at once; a command sent instead of the PIN
  replaces the kept one and the PIN is asked again; a locked user or a
  temporary PIN (changed by phone first) ends the session;
- ``ready``: each message is a command;
- ``sign``: an APPROVE or REJECT waits for its signature, the user ID and PIN
  again (``dialogs.sms.decisions``).

The session lives in the session store for 15 idle minutes (``ivrs.conversations.texts``).
STOP and START work in every state and without the PIN: carrier rules say a
user can always opt out, and opting back in is harmless. As in the voice
dialog, the model is rebuilt per message and the shared machine's event fired
on it (``Event.trigger(model)``): nothing is bound per message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from transitions import Machine

from core.actors import SITE_ROLES, Actor
from core.db import Database
from core.deliveries import set_opted_out
from core.errors import Refused
from core.fields import is_digits
from core.login import sign_in
from dialogs.output import Say
from dialogs.sms.commands import CommandsMixin
from dialogs.sms.decisions import DecisionsMixin
from dialogs.sms.keywords import Command, parse, split

log = logging.getLogger("dialogs.sms")

SESSION_IDLE_SECONDS = 15 * 60

STATES = ["new", "pin", "ready", "sign"]
TRANSITIONS = [
    {"trigger": "text", "source": "new", "dest": "pin", "after": ["keep_command", "ask_pin"]},
    {"trigger": "text", "source": "pin", "dest": "pin", "unless": "looks_like_pin",
     "after": ["keep_command", "ask_pin"]},
    {"trigger": "text", "source": "pin", "dest": "ready", "conditions": "pin_accepted",
     "after": "run_kept_command"},
    {"trigger": "text", "source": "pin", "dest": "new", "conditions": "sign_in_ended",
     "after": "forget_user"},
    {"trigger": "text", "source": "pin", "dest": "pin", "after": "say_pin_refused"},
    {"trigger": "text", "source": "ready", "dest": "sign", "conditions": "decision_asked",
     "after": "ask_signature"},
    {"trigger": "text", "source": "ready", "dest": "ready", "after": "run_command"},
    # APPROVE/REJECT asked: the next message signs it (core.signatures)
    {"trigger": "text", "source": "sign", "dest": "ready",
     "conditions": ["looks_like_signature", "signature_accepted"], "after": "decide_signed"},
    {"trigger": "text", "source": "sign", "dest": "new",
     "conditions": ["looks_like_signature", "signer_locked"], "after": "forget_user"},
    {"trigger": "text", "source": "sign", "dest": "ready", "conditions": "looks_like_signature",
     "after": "say_signature_refused"},
    {"trigger": "text", "source": "sign", "dest": "sign", "conditions": "decision_asked",
     "after": "ask_signature"},
    {"trigger": "text", "source": "sign", "dest": "ready",
     "after": ["cancel_decision", "run_command"]},
]


@dataclass(frozen=True)
class TextContext:
    """What a message gives the dialog besides its text: no Flask, no Twilio."""

    db: Database
    study: str  # study code (routed by the number texted)
    message_id: str  # MessageSid: the idempotency of whatever the message does
    sender: str  # the sender's phone number
    phone_users: tuple[str, ...]  # the active users registered with that number


def new_session(language: str | None) -> dict[str, Any]:
    return {"state": "new", "language": language or "en"}


class TextModel(DecisionsMixin, CommandsMixin):
    machine: Machine | None = None

    def __init__(self, session: dict[str, Any], ctx: TextContext):
        self.session, self.ctx = session, ctx
        self.state: str = session["state"]
        self.out: list[Say] = []
        self.command = Command("empty")
        self.words: list[str] = []
        self._sign_in: str | None = None  # outcome of this message's PIN check

    def handle(self, body: str | None) -> list[Say]:
        self.command = parse(body)
        self.words = split(body)
        if self.command.opt:
            self.opt(self.command.name == "stop")
        else:
            self.machine.events["text"].trigger(self)
        self.session["state"] = self.state
        return self.out

    # --- helpers the commands use ------------------------------------------------------------

    def say(self, message_id: str, **params: Any) -> None:
        self.out.append(Say(message_id, params))

    def key(self, what: str) -> str:
        return f"sms:{self.ctx.message_id}:{what}"

    def actor(self) -> Actor:
        user = self.session["user"]
        sites = frozenset(user["sites"]) if user["role"] in SITE_ROLES else None
        return Actor(role=user["role"], user_code=user["user_code"], site_codes=sites,
                     channel="sms")

    # --- opening a session ---------------------------------------------------------------------

    def keep_command(self) -> None:
        if self.command.name != "empty":
            self.session["pending"] = " ".join(self.words)

    def ask_pin(self) -> None:
        self.say("sms.ask_pin" if len(self.ctx.phone_users) == 1 else "sms.ask_user_pin")

    def looks_like_pin(self) -> bool:
        """One number (the PIN) or, on a shared phone, two (user ID and PIN)."""
        wanted = 1 if len(self.ctx.phone_users) == 1 else 2
        return len(self.words) == wanted and all(is_digits(word) for word in self.words)

    def pin_accepted(self) -> bool:
        if len(self.words) == 2:
            user_code, pin = self.words
            if user_code not in self.ctx.phone_users:
                self._sign_in = "refused"  # not a user of this phone: nothing to count
                return False
        else:
            user_code, pin = self.ctx.phone_users[0], self.words[0]
        try:
            login = sign_in(self.ctx.db, user_code=user_code, pin=pin, channel="sms",
                            study=self.ctx.study, request_id=self.ctx.message_id)
        except Refused as refusal:
            self._sign_in = "locked" if refusal.code == "locked" else "refused"
            return False
        if login.pin_temporary:
            self._sign_in = "temporary"
            return False
        self._sign_in = "ok"
        if self.session.get("pending") == pin:
            # The PIN texted first, before it was asked: not a kit number to run.
            del self.session["pending"]
        self.session["user"] = {"user_code": login.user_code, "role": login.role,
                                "sites": list(login.site_codes), "language": login.language}
        self.session["language"] = login.language
        log.info("sms %s: user %s signed in", self.ctx.message_id, login.user_code)
        return True

    def sign_in_ended(self) -> bool:
        return self._sign_in in ("locked", "temporary")

    def forget_user(self) -> None:
        self.session.pop("pending", None)
        self.session.pop("deciding", None)
        self.session.pop("user", None)
        self.say("error.locked" if self._sign_in == "locked" else "sms.pin_temporary")

    def say_pin_refused(self) -> None:
        self.say("sms.pin_refused" if len(self.ctx.phone_users) == 1
                 else "sms.user_pin_refused")

    # --- STOP / START ----------------------------------------------------------------------------

    def opt(self, out: bool) -> None:
        # Every study sends from the same number, and a carrier's opt-out is per
        # pair of numbers: the phone opts out of (or back into) all of them.
        set_opted_out(self.ctx.db, phone=self.ctx.sender, opted_out=out,
                      source=f"sms {'STOP' if out else 'START'}", study=None)
        self.say("sms.stopped" if out else "sms.started")


TextModel.machine = Machine(model=None, states=STATES, transitions=TRANSITIONS,
                            initial="new", auto_transitions=False,
                            ignore_invalid_triggers=True)


def run(session: dict[str, Any], ctx: TextContext, body: str | None) -> list[Say]:
    """Restore the sender's session, take the message, return the reply's parts.
    ``session`` is updated in place; the caller saves it."""
    return TextModel(session, ctx).handle(body)
