"""The SMS dialog (SPEC §7): keywords, commands and the session machine."""

from dialogs.sms.machine import SESSION_IDLE_SECONDS, TextContext, new_session, run

__all__ = ["SESSION_IDLE_SECONDS", "TextContext", "new_session", "run"]
