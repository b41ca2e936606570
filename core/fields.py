"""The shapes of the fields that come from outside, one rule each, for every door.

Python's own parsing is lenient where an identifier must not be: ``int()`` takes
``"+4"``, ``" 4"``, ``"4_0"`` and the digits of every script (``"٤"``, ``"４"``,
``"४"``), ``str.isdigit()`` also says yes to ``"²"``, and a regular expression's
``$`` matches before a final newline. A number that identifies something (a user,
a subject, a kit, a request, a step of a call) is ASCII digits of bounded length
and nothing else, compared as the string it is; the doors (webhooks, SMS, the
CLI through the core services, later the API) check their fields here, and the
file loaders' patterns are ASCII ``[0-9]`` as well. Where a channel lets
people type other digits on purpose (full-width digits by SMS), the channel
normalizes its text first (``dialogs.sms.keywords``), then these rules apply.
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"[0-9]+")
_KEYPAD = re.compile(r"[0-9*#]*")
# Twilio's resource identifiers: two letters and 32 hexadecimal digits; we take
# any ASCII letters and digits of a sane length (test clients make their own).
_SID = re.compile(r"[A-Za-z0-9]{10,64}")
_PHONE = re.compile(r"\+?[0-9]{3,20}")


class BadField(ValueError):
    """A field from outside that cannot be what it claims (a forged or broken
    request): the door answers that it was not understood, and nothing changes."""

    def __init__(self, field: str):
        super().__init__(f"{field} is not well formed")
        self.field = field


MAX_IDENTIFIER = 20  # the longest user ID, subject, kit or request number we issue
MAX_KEYS = 64  # the most keys one <Gather> takes
MAX_STEP = 99_999  # more steps than any call has


def is_digits(value: object, max_length: int = MAX_IDENTIFIER) -> bool:
    """ASCII digits only, 1 to ``max_length`` of them."""
    return isinstance(value, str) and len(value) <= max_length \
        and _DIGITS.fullmatch(value) is not None


def digits(value: object, max_length: int = MAX_IDENTIFIER) -> str | None:
    """``value`` if it is ASCII digits (1 to ``max_length``), else None."""
    return value if is_digits(value, max_length) else None  # type: ignore[return-value]


def keypad(value: object) -> str | None:
    """What a telephone keypad can send: digits, ``*`` and ``#`` (possibly none),
    cut at ``MAX_KEYS`` (more than any entry: the dialog refuses it as too long);
    None if any other character is in it."""
    if isinstance(value, str) and _KEYPAD.fullmatch(value):
        return value[:MAX_KEYS]
    return None


def step_token(value: object) -> str | None:
    """A step token as we issue them: ``"0"``, ``"1"``, ... ``"99999"`` written the
    one way ``str(int)`` writes it (no sign, no leading zero, no other script)."""
    if not is_digits(value, len(str(MAX_STEP))):
        return None
    return value if str(int(value)) == value else None  # type: ignore[arg-type]


def sid(value: object) -> str | None:
    """A Twilio CallSid or MessageSid: ASCII letters and digits, 10 to 64."""
    return value if isinstance(value, str) and _SID.fullmatch(value) else None


def phone(value: object) -> str | None:
    """A phone number as Twilio writes it (E.164): an optional ``+`` and 3 to 20 digits."""
    return value if isinstance(value, str) and _PHONE.fullmatch(value) else None


MAX_EMAIL = 254  # RFC 5321's longest forward path, less its angle brackets
# Whitespace, controls (C0, DEL, C1), the bidirectional controls that reorder what
# a screen shows, and the characters that end an address in a header.
_EMAIL_FORBIDDEN = re.compile("[\\s\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069"
                              "<>()\\[\\],;:\"\\\\]")


def email_problem(value: object) -> str | None:
    """Why ``value`` is not an e-mail address we send to, or None when it is one.

    Deliberately simple (no quoted local parts, no address literals, no
    comments): one ``@``, a local part and a domain that are not empty, a dot
    inside the domain, no space, control character or header punctuation, at
    most 254 characters. The mail server has the last word; this keeps out what
    is certainly not an address, and what could break a ``To:`` header.
    """
    if not isinstance(value, str) or not value:
        return "an e-mail address is needed"
    if len(value) > MAX_EMAIL:
        return f"an e-mail address is at most {MAX_EMAIL} characters"
    if _EMAIL_FORBIDDEN.search(value):
        return "an e-mail address has no spaces, control characters or <>()[],;:\"\\"
    if value.count("@") != 1:
        return "an e-mail address has exactly one '@'"
    local, domain = value.split("@")
    if not local or not domain:
        return "an e-mail address has a name before the '@' and a domain after it"
    labels = domain.split(".")
    if len(labels) < 2 or not all(labels):
        return "the domain of an e-mail address has a dot inside it (example.org)"
    return None

