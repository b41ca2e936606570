"""The voice dialog: one ``transitions`` machine per process, one model per request.

Building the machine resolves every state and transition: that is done once,
from the flows' declarations. Per request, the model is rebuilt from the
session with the saved state in its ``state`` attribute, and the step's
trigger is fired through the shared machine's event (``Event.trigger(model)``).
Nothing is bound to the model per request: ``add_model`` would attach an
``is_<state>`` helper per state and a method per trigger to every model (about
a quarter of a millisecond a request, measured), only for ``remove_model`` to
drop them again. ``on_enter`` callbacks would not run on a restore either,
which is why prompts belong to states (``PromptState``) rather than to enter
callbacks.
"""

from __future__ import annotations

from typing import Any

from transitions import Machine

from dialogs.output import Turn
from dialogs.voice import enrolment, login, supply, unblinding
from dialogs.voice.base import CallContext, CallModel, PromptState

FLOWS = (login, enrolment, supply, unblinding)


class VoiceCall(login.LoginFlow, enrolment.EnrolmentFlow, supply.SupplyFlow,
                unblinding.UnblindingFlow, CallModel):
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
    turn = call.start() if starting else call.handle(digits)
    session["state"] = call.state
    return turn
