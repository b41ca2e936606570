"""Language, user ID, PIN, the temporary-PIN change, the main menu, change PIN
and "hear the last confirmation again" (SPEC §6.1–6.3)."""

from __future__ import annotations

from typing import Any

from core.errors import IvrsError, Refused
from core.fields import is_digits
from core.login import Login, change_pin, sign_in
from core.pins import is_valid_pin
from dialogs.output import KEY, NUMBER, Digits, LanguageName, Say

MAX_LOGIN_FAILURES = 3  # wrong user ID/PIN pairs in one call before it ends

# SPEC §4: the fixed menu digits each role is offered (7, emergency
# unblinding, to investigators only).
MENU_OPTIONS: dict[str, tuple[str, ...]] = {
    "site_coordinator": ("1", "2", "3", "4", "5", "6", "8", "9"),
    "investigator": ("1", "2", "3", "4", "5", "6", "7", "8", "9"),
    "pharmacist": ("3", "4", "5", "8", "9"),
    "project_manager": ("8", "9"),
    "depot_manager": ("8", "9"),
    "unblinded_statistician": ("8", "9"),
}

STATES: list[dict[str, Any]] = [
    {"name": "language", "prompt": "language_menu", "gather": KEY, "signed_in": False},
    {"name": "user_id", "prompt": "ask_user_id", "gather": NUMBER, "signed_in": False,
     "invalid": "invalid.number"},
    {"name": "pin", "prompt": "login.pin", "gather": NUMBER, "signed_in": False,
     "invalid": "invalid.number"},
    {"name": "new_pin", "prompt": "pin.new", "gather": NUMBER, "invalid": "pin.invalid"},
    {"name": "new_pin_again", "prompt": "pin.again", "gather": NUMBER,
     "invalid": "pin.invalid"},
    {"name": "menu", "prompt": "menu_prompt", "gather": KEY, "invalid": "menu.unavailable"},
    {"name": "goodbye", "prompt": None, "gather": None},
]

TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "key", "source": "language", "dest": "user_id", "conditions": "language_chosen"},
    {"trigger": "key", "source": "user_id", "dest": "pin", "conditions": "entered_number",
     "before": "keep_user_id"},
    {"trigger": "key", "source": "pin", "dest": "new_pin",
     "conditions": ["entered_number", "pin_accepted", "pin_is_temporary"],
     "after": "say_pin_must_change"},
    {"trigger": "key", "source": "pin", "dest": "menu",
     "conditions": ["entered_number", "pin_accepted"]},
    {"trigger": "key", "source": "pin", "dest": "goodbye",
     "conditions": ["entered_number", "user_is_locked"], "after": "say_locked"},
    {"trigger": "key", "source": "pin", "dest": "goodbye",
     "conditions": ["entered_number", "too_many_login_failures"],
     "after": "say_not_valid_goodbye"},
    {"trigger": "key", "source": "pin", "dest": "user_id", "conditions": "entered_number",
     "after": "say_not_valid"},
    {"trigger": "key", "source": "new_pin", "dest": "new_pin_again",
     "conditions": "valid_new_pin", "before": "keep_new_pin"},
    {"trigger": "key", "source": "new_pin_again", "dest": "menu",
     "conditions": ["same_new_pin", "pin_changed"]},
    {"trigger": "key", "source": "new_pin_again", "dest": "new_pin",
     "conditions": "same_new_pin", "after": "say_problem"},
    {"trigger": "key", "source": "new_pin_again", "dest": "new_pin",
     "after": "say_pins_differ"},
    {"trigger": "key", "source": "menu", "dest": "new_pin", "conditions": "chose_8"},
    {"trigger": "key", "source": "menu", "dest": "menu", "conditions": "chose_9",
     "after": "repeat_last_result"},
    {"trigger": "to_menu", "source": "*", "dest": "menu"},
    {"trigger": "to_goodbye", "source": "*", "dest": "goodbye"},
]


class LoginFlow:
    """Mixed into the call model (dialogs.voice.machine.VoiceCall)."""

    # --- language ---------------------------------------------------------------------------

    def language_menu(self) -> list[Say]:
        languages = self.session["languages"]
        return [Say("language.option", {"digit": index, "language": LanguageName(code)},
                    language=code)
                for index, code in enumerate(languages, start=1)]

    def language_chosen(self) -> bool:
        languages = self.session["languages"]
        if not (is_digits(self.entry) and 1 <= int(self.entry) <= len(languages)):
            return False
        self.session["language"] = languages[int(self.entry) - 1]
        self.session["language_chosen"] = True
        return True

    # --- user ID and PIN ----------------------------------------------------------------------

    def ask_user_id(self) -> list[Say]:
        if self.session.get("welcomed"):
            return [Say("login.user_id")]
        self.session["welcomed"] = True
        return [Say("welcome"), Say("login.user_id")]

    def keep_user_id(self) -> None:
        self.slots["user_id"] = self.entry

    def _sign_in(self) -> Login | IvrsError:
        # Conditions of several transitions ask; the PIN is checked once per request.
        if not hasattr(self, "_login_outcome"):
            try:
                self._login_outcome = sign_in(self.ctx.db, user_code=self.slots.get("user_id", ""),
                                              pin=self.entry, channel="voice",
                                              study=self.ctx.study,
                                              request_id=self.ctx.call_id)
            except Refused as refusal:
                self._login_outcome = refusal
        return self._login_outcome

    def pin_accepted(self) -> bool:
        login = self._sign_in()
        if not isinstance(login, Login):
            return False
        self.slots.pop("user_id", None)
        self.session["login_failures"] = 0
        self.session["user"] = {"user_code": login.user_code, "role": login.role,
                                "sites": list(login.site_codes),
                                "must_change_pin": login.pin_temporary}
        if not self.session.get("language_chosen"):
            self.session["language"] = login.language
        return True

    def pin_is_temporary(self) -> bool:
        return self.session["user"]["must_change_pin"]

    def user_is_locked(self) -> bool:
        outcome = self._sign_in()
        return isinstance(outcome, IvrsError) and outcome.code == "locked"

    def too_many_login_failures(self) -> bool:
        failures = self.session["login_failures"] = self.session.get("login_failures", 0) + 1
        return failures >= MAX_LOGIN_FAILURES

    def say_pin_must_change(self) -> None:
        self.say("pin.must_change")

    def say_locked(self) -> None:
        self.say("login.locked")

    def say_not_valid(self) -> None:
        self.slots.pop("user_id", None)
        self.say("login.not_valid")

    def say_not_valid_goodbye(self) -> None:
        self.say("login.not_valid")
        self.say("goodbye.invalid")

    # --- a new PIN (temporary PIN, or menu option 8) ------------------------------------------

    def valid_new_pin(self) -> bool:
        return is_valid_pin(self.entry) or self.refuse("pin.invalid")

    def keep_new_pin(self) -> None:
        # Kept only until the second entry; the session expires with the call.
        self.slots["new_pin"] = self.entry

    def same_new_pin(self) -> bool:
        return self.entry == self.slots.get("new_pin")

    def pin_changed(self) -> bool:
        try:
            confirmation = change_pin(self.ctx.db, user_code=self.user_code, new_pin=self.entry,
                                      actor=self.actor(), study=self.ctx.study,
                                      idempotency_key=self.idempotency_key("pin"))
        except IvrsError as error:
            self.slots.pop("new_pin", None)
            return self.refuse("error." + error.code if error.code in {"bad_pin", "pin_unchanged"}
                               else "error.refused")
        self.slots.pop("new_pin", None)
        self.session["user"]["must_change_pin"] = False
        self.remember(Say("pin.changed", {"confirmation": Digits(confirmation or "")}))
        return True

    def say_pins_differ(self) -> None:
        self.slots.pop("new_pin", None)
        self.say("pin.mismatch")

    # --- the main menu ----------------------------------------------------------------------

    def menu_options(self) -> tuple[str, ...]:
        return MENU_OPTIONS.get(self.session["user"]["role"], ())

    def menu_prompt(self) -> list[Say]:
        return [Say("menu.option." + digit) for digit in self.menu_options()]

    def _chose(self, digit: str) -> bool:
        return self.key_is(digit) and digit in self.menu_options()

    def chose_1(self) -> bool:
        return self._chose("1")

    def chose_2(self) -> bool:
        return self._chose("2")

    def chose_3(self) -> bool:
        return self._chose("3")

    def chose_4(self) -> bool:
        return self._chose("4")

    def chose_5(self) -> bool:
        return self._chose("5")

    def chose_6(self) -> bool:
        return self._chose("6")

    def chose_8(self) -> bool:
        return self._chose("8")

    def chose_9(self) -> bool:
        return self._chose("9")

    def repeat_last_result(self) -> None:
        last = self.session.get("last_result")
        if not last:
            self.say("menu.nothing_to_repeat")
            return
        self.out.extend(Say.from_json(say) for say in last)
