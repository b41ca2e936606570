"""The voice dialog: one ``transitions`` machine per process, one model per request.

Building the machine costs milliseconds (it resolves every state and
transition); attaching a model at a saved state costs a fraction of one. So
the machine is built once, from the flows' declarations, and each request
attaches a model rebuilt from the session with ``add_model(initial=saved)``,
fires one trigger and detaches it. ``on_enter`` callbacks would not run on
that restore, which is why prompts belong to states (``PromptState``) rather
than to enter callbacks.
"""

from __future__ import annotations

import threading
from typing import Any

from transitions import Machine

from dialogs.output import Turn
from dialogs.voice import enrolment, login, supply
from dialogs.voice.base import CallContext, CallModel, PromptState

FLOWS = (login, enrolment, supply)


class VoiceCall(login.LoginFlow, enrolment.EnrolmentFlow, supply.SupplyFlow, CallModel):
    """A call: the session's data, the flows' conditions and callbacks."""


class _VoiceMachine(Machine):
    state_cls = PromptState


def _transitions() -> list[dict[str, Any]]:
    declared = [dict(t) for flow in FLOWS for t in flow.TRANSITIONS]
    for transition in declared:
        # Every menu option starts afresh: nothing typed for another one lingers.
        if transition["source"] == "menu" and transition["dest"] != "menu":
            before = transition.get("before")
            before = [before] if isinstance(before, str) else list(before or ())
            transition["before"] = ["clear_slots", *before]
    return declared


def build_machine() -> Machine:
    return _VoiceMachine(model=None, states=[s for flow in FLOWS for s in flow.STATES],
                         transitions=_transitions(), initial="user_id",
                         auto_transitions=False, ignore_invalid_triggers=True)


MACHINE = build_machine()
VoiceCall.machine = MACHINE
# add_model/remove_model change the machine's model list: one request at a time
# may do so (the dialog work itself runs outside this lock).
_ATTACH = threading.Lock()


def first_state(languages: list[str], caller_language: str | None) -> str:
    """SPEC §6.1: the language menu only for an unregistered number and a study
    with more than one language."""
    return "language" if len(languages) > 1 and caller_language is None else "user_id"


def run(session: dict[str, Any], ctx: CallContext, digits: str | None,
        starting: bool = False) -> Turn:
    """Restore the call at its saved state, take the keys, return what to say.

    ``session`` is updated in place (state, slots, counters); the caller saves it.
    """
    call = VoiceCall(session, ctx)
    with _ATTACH:
        MACHINE.add_model(call, initial=session["state"])
    try:
        turn = call.start() if starting else call.handle(digits)
        session["state"] = call.state
        return turn
    finally:
        with _ATTACH:
            MACHINE.remove_model(call)
