"""What a text message asks for: its keyword and arguments (SPEC §7).

Keywords are case-insensitive; numbers may be separated by spaces or commas
("KIT 100234, 100235"). A message that is only a number is a bare number: a
kit number once signed in, the PIN while the PIN is asked. STOP and START
follow the carriers' standard keywords (the ones Twilio itself honours), so
that whatever a user types to opt out, we stop too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KEYWORDS = {
    "KIT": "kit", "DISP": "dispense", "RECV": "receive", "STOCK": "stock",
    "STATUS": "status", "LANG": "language", "HELP": "help",
}
OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
OPT_IN = frozenset({"START", "UNSTOP"})
# Words inside RECV: the kits listed after each have that outcome.
RECEIPT_OUTCOMES = {"DAMAGED": "damaged", "MISSING": "missing"}

MAX_BODY = 1600  # Twilio's own limit for one message
MAX_ARGUMENTS = 40
_SEPARATORS = re.compile(r"[\s,;]+")


@dataclass(frozen=True)
class Command:
    name: str  # a KEYWORDS value, "number", "stop", "start", "empty" or "unknown"
    args: tuple[str, ...] = ()

    @property
    def opt(self) -> bool:
        return self.name in ("stop", "start")


def parse(body: str | None) -> Command:
    words = [w for w in _SEPARATORS.split((body or "")[:MAX_BODY].strip()) if w]
    if not words:
        return Command("empty")
    keyword, args = words[0].upper(), tuple(words[1:MAX_ARGUMENTS + 1])
    if len(words) == 1 and keyword.isdigit():
        return Command("number", (keyword,))
    if keyword in OPT_OUT and not args:
        return Command("stop")
    if keyword in OPT_IN and not args:
        return Command("start")
    if keyword in KEYWORDS:
        return Command(KEYWORDS[keyword], args)
    return Command("unknown", args)


@dataclass(frozen=True)
class Receipt:
    shipment: str
    damaged: tuple[str, ...]
    missing: tuple[str, ...]


def parse_receipt(args: tuple[str, ...]) -> Receipt | None:
    """``<shipment> [DAMAGED <kit> ...] [MISSING <kit> ...]``; None when malformed
    (no shipment, a word that is neither an outcome nor a number, an outcome with
    no kit)."""
    if not args or not args[0].isdigit():
        return None
    outcomes: dict[str, list[str]] = {}
    current: list[str] | None = None
    for word in args[1:]:
        outcome = RECEIPT_OUTCOMES.get(word.upper())
        if outcome is not None:
            if outcome in outcomes:
                return None  # DAMAGED twice: one list per outcome
            current = outcomes[outcome] = []
        elif current is not None and word.isdigit():
            current.append(word)
        else:
            return None
    if any(not kits for kits in outcomes.values()):
        return None
    return Receipt(args[0], tuple(outcomes.get("damaged", ())),
                   tuple(outcomes.get("missing", ())))
