"""The pieces every voice flow shares: the call model, its input handling and
the state type that carries each state's prompt.

A flow module declares its states and transitions as data and its conditions
and callbacks as small methods of a mixin; ``dialogs.voice.machine`` puts them
together into one machine per process. Per request the model is rebuilt from
the session and attached to that machine at its saved state.

Input rules (SPEC §6.9): silence repeats the prompt twice, then the call ends
politely; an entry no transition accepts gets a specific message and the same
prompt, at most three times; ``*`` returns to the main menu once signed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transitions import State

from core.actors import SITE_ROLES, Actor
from core.db import Database
from core.errors import IvrsError
from core.fields import is_digits
from dialogs.errors import error_prompt
from dialogs.output import KEY, NUMBER, Digits, Say, Turn

MAX_SILENCES = 2  # repeats after silence before hanging up
MAX_INVALID = 3  # invalid entries in a row before hanging up
MAX_NUMBER_LENGTH = 20  # longer than any identifier we issue: a stuck key


class PromptState(State):
    """A state that asks something.

    ``prompt`` is a prompt id, or the name of a model method returning a list of
    ``Say``; ``gather`` is KEY, NUMBER or None (the call ends); ``invalid`` the
    prompt id said when an entry is not accepted; ``signed_in`` whether ``*``
    returns to the menu from here; ``empty_ends`` whether an empty entry is an
    answer (a list ended by ``#`` alone) rather than silence; ``slot`` where
    ``keep_entry`` stores the number typed here; ``readback`` the slot whose
    number this state reads back ("press 1 if correct, 2 to re-enter").
    """

    def __init__(self, name, *, prompt: str | None = None, gather: str | None = KEY,
                 invalid: str = "invalid.key", signed_in: bool = True,
                 empty_ends: bool = False, slot: str | None = None,
                 readback: str | None = None, **kwargs):
        super().__init__(name, **kwargs)
        self.prompt, self.gather, self.invalid = prompt, gather, invalid
        self.signed_in, self.empty_ends = signed_in, empty_ends
        self.slot, self.readback = slot, readback


@dataclass(frozen=True)
class CallContext:
    """What a request gives the dialog besides the keys: no Flask, no Twilio."""

    db: Database
    study: str  # study code (routed by the dialed number)
    call_id: str  # CallSid
    step: int  # the step token of this request
    caller: str | None = None  # the caller's number


class CallModel:
    """The state of one call, backed by its session dict (JSON-serialisable)."""

    machine: Any = None  # set by dialogs.voice.machine

    def __init__(self, session: dict[str, Any], ctx: CallContext):
        self.session, self.ctx = session, ctx
        self.state: str = session["state"]  # restored: no on_enter runs
        self.slots: dict[str, Any] = session.setdefault("slots", {})
        self.entry = ""  # the keys of this request, without the final #
        self.out: list[Say] = []  # said before the state's prompt
        self.problem: str | None = None  # why a condition refused the entry
        self.problem_params: dict[str, Any] = {}

    # --- handling one request ----------------------------------------------------------------

    def handle(self, digits: str | None) -> Turn:
        state = self.current_state()
        keys = (digits or "").strip()
        if keys.endswith("#"):
            keys = keys[:-1]
        if not keys and keys == (digits or "").strip() and not state.empty_ends:
            return self._silence()
        self.session["silences"] = 0
        self.entry = keys
        if keys == "*" and state.signed_in and self.signed_in():
            self.slots.clear()
            self.trigger("to_menu")
            return self.turn()
        if len(keys) > MAX_NUMBER_LENGTH or not _keypad(keys):
            return self._invalid(state)
        if not self.trigger("key"):
            return self._invalid(state)
        self.session["invalid"] = 0
        return self.turn()

    def _silence(self) -> Turn:
        silences = self.session["silences"] = self.session.get("silences", 0) + 1
        if silences > MAX_SILENCES:
            return self.hang_up("goodbye.no_input")
        return self.turn()

    def _invalid(self, state: PromptState) -> Turn:
        invalid = self.session["invalid"] = self.session.get("invalid", 0) + 1
        if invalid >= MAX_INVALID:
            return self.hang_up("goodbye.invalid")
        self.out.append(Say(self.problem or state.invalid, self.problem_params))
        return self.turn()

    def start(self) -> Turn:
        """The first answer of a call: the prompt of the initial state."""
        return self.turn()

    def turn(self) -> Turn:
        state = self.current_state()
        says = list(self.out)
        if state.readback:
            says.append(Say("readback", {"number": Digits(self.slots.get(state.readback, ""))}))
        if state.prompt:
            method = getattr(self, state.prompt, None)
            says += method() if callable(method) else [Say(state.prompt)]
        return Turn(tuple(says), gather=state.gather, hangup=state.gather is None)

    def hang_up(self, prompt: str) -> Turn:
        self.trigger("to_goodbye")
        return Turn((*self.out, Say(prompt)), gather=None, hangup=True)

    def trigger(self, event: str) -> bool:
        """Fire an event of the shared machine on this call (False: no transition
        accepted the entry)."""
        return self.machine.events[event].trigger(self)

    def current_state(self) -> PromptState:
        return self.machine.get_state(self.state)

    # --- who is calling ----------------------------------------------------------------------

    def signed_in(self) -> bool:
        user = self.session.get("user")
        return bool(user) and not user["must_change_pin"]

    @property
    def user_code(self) -> str:
        return self.session["user"]["user_code"]

    def actor(self) -> Actor:
        user = self.session["user"]
        sites = frozenset(user["sites"]) if user["role"] in SITE_ROLES else None
        return Actor(role=user["role"], user_code=user["user_code"], site_codes=sites,
                     channel="voice")

    # --- helpers for the flows ---------------------------------------------------------------

    def say(self, prompt: str, **params: Any) -> None:
        self.out.append(Say(prompt, params))

    def refuse(self, prompt: str, **params: Any) -> bool:
        """For conditions: note why the entry is refused, and refuse it."""
        self.problem, self.problem_params = prompt, params
        return False

    def refuse_error(self, error: IvrsError) -> bool:
        """For conditions: a core refusal explains why the entry is refused."""
        return self.refuse(error_prompt(error.code), **_speakable(error.params))

    def say_error(self, error: IvrsError) -> None:
        """A core refusal, spoken: its code names the prompt (never the arm)."""
        self.say(error_prompt(error.code), **_speakable(error.params))

    def key_is(self, *accepted: str) -> bool:
        return self.entry in accepted

    def idempotency_key(self, what: str) -> str:
        return f"voice:{self.ctx.call_id}:{self.ctx.step}:{what}"

    def remember(self, *says: Say) -> None:
        """Keep a transaction's result for menu option 9 (hear it again)."""
        self.session["last_result"] = [say.to_json() for say in says]
        self.out.extend(says)

    # --- conditions every flow uses -------------------------------------------------------------

    def pressed_1(self) -> bool:
        return self.key_is("1")

    def pressed_2(self) -> bool:
        return self.key_is("2")

    def pressed_3(self) -> bool:
        return self.key_is("3")

    def entered_number(self) -> bool:
        if not is_digits(self.entry):
            return self.refuse("invalid.number")
        return True

    def keep_entry(self) -> None:
        self.slots[self.current_state().slot] = self.entry

    def say_problem(self) -> None:
        if self.problem:
            self.say(self.problem, **self.problem_params)

    def say_cancelled(self) -> None:
        self.say("cancelled")

    def clear_slots(self) -> None:
        self.slots.clear()


def number_entry(entry: str, slot: str, prompt: str, ok_dest: str,
                 check: str | None = None) -> tuple[list[dict], list[dict]]:
    """States and transitions for a number typed, read back and confirmed
    (SPEC §6.4), then checked by the condition ``check`` (its refusal is spoken
    and the number asked again)."""
    ok = f"{entry}_ok"
    states = [
        {"name": entry, "prompt": prompt, "gather": NUMBER, "invalid": "invalid.number",
         "slot": slot},
        {"name": ok, "readback": slot, "gather": KEY},
    ]
    accepted = ["pressed_1", check] if check else "pressed_1"
    transitions = [
        {"trigger": "key", "source": entry, "dest": ok, "conditions": "entered_number",
         "before": "keep_entry"},
        {"trigger": "key", "source": ok, "dest": ok_dest, "conditions": accepted},
        {"trigger": "key", "source": ok, "dest": entry, "conditions": "pressed_1",
         "after": "say_problem"},
        {"trigger": "key", "source": ok, "dest": entry, "conditions": "pressed_2"},
    ]
    return states, transitions


def confirm_or_cancel(source: str, action: str) -> list[dict]:
    """At a confirmation prompt: ``1`` runs ``action`` (a transaction) and returns
    to the menu, ``2`` cancels, saying that nothing was recorded."""
    return [
        {"trigger": "key", "source": source, "dest": "menu", "conditions": "pressed_1",
         "after": action},
        {"trigger": "key", "source": source, "dest": "menu", "conditions": "pressed_2",
         "after": "say_cancelled"},
    ]


def subject_entry(prefix: str, ok_dest: str, check: str) -> tuple[list[dict], list[dict]]:
    return number_entry(f"{prefix}_subject", "subject", "subject.enter", ok_dest, check)


def _speakable(params: dict[str, Any]) -> dict[str, Any]:
    spoken: dict[str, Any] = {}
    for name, value in params.items():
        if isinstance(value, str) and is_digits(value):
            spoken[name] = Digits(value)
        elif isinstance(value, (str, int)):
            spoken[name] = value
    return spoken


def _keypad(keys: str) -> bool:
    return all(key in "0123456789*" for key in keys)
