"""The voice call flow of SPEC §6 as a ``transitions`` state machine."""

from dialogs.voice.base import CallContext
from dialogs.voice.machine import MACHINE, first_state, run

__all__ = ["MACHINE", "CallContext", "first_state", "run"]
