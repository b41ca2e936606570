"""What a text message asks for: its keyword and arguments (SPEC §7).

Keywords are case-insensitive and accent-insensitive; numbers may be
separated by spaces or commas ("KIT 100234, 100235"). A message that is only a
number is a bare number: a kit number once signed in, the PIN while the PIN is
asked. STOP and START follow the carriers' standard keywords (the ones Twilio
itself honours), so that whatever a user types to opt out, we stop too.

The English keywords work for everyone; each language adds its own
(``ALIASES``, listed in the README), and every alias works whatever the
sender's language: a French coordinator may type ``AIDE`` or ``HELP``, and
nobody is refused for using a colleague's word. No alias means two things.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from core.fields import is_digits

KEYWORDS = {
    "KIT": "kit", "DISP": "dispense", "RECV": "receive", "STOCK": "stock",
    "STATUS": "status", "LANG": "language", "HELP": "help",
    "APPROVE": "approve", "REJECT": "reject",
}
OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
OPT_IN = frozenset({"START", "UNSTOP"})
# Words inside RECV: the kits listed after each have that outcome.
RECEIPT_OUTCOMES = {"DAMAGED": "damaged", "MISSING": "missing"}

# Each language's own words, as typed on a phone (upper case, accents dropped).
ALIASES: dict[str, dict[str, str]] = {
    "fr": {"AIDE": "help", "STATUT": "status", "LANGUE": "language", "RECU": "receive",
           "ENDOMMAGE": "damaged", "MANQUANT": "missing", "APPROUVER": "approve",
           "REJETER": "reject"},
    "es": {"AYUDA": "help", "ESTADO": "status", "IDIOMA": "language", "RECIB": "receive",
           "EXISTENCIAS": "stock", "DANADO": "damaged", "FALTANTE": "missing",
           "APROBAR": "approve", "RECHAZAR": "reject"},
    "de": {"HILFE": "help", "SPRACHE": "language", "AUSGABE": "dispense",
           "EMPFANG": "receive", "BESTAND": "stock", "BESCHAEDIGT": "damaged",
           "BESCHADIGT": "damaged", "FEHLT": "missing", "GENEHMIGEN": "approve",
           "ABLEHNEN": "reject"},
    "it": {"AIUTO": "help", "STATO": "status", "LINGUA": "language", "RICEV": "receive",
           "SCORTE": "stock", "DANNEGGIATO": "damaged", "MANCANTE": "missing",
           "APPROVA": "approve", "RIFIUTA": "reject"},
    "pt_BR": {"AJUDA": "help", "SITUACAO": "status", "RECEB": "receive",
              "ESTOQUE": "stock", "DANIFICADO": "damaged", "FALTANDO": "missing",
              "APROVAR": "approve", "REJEITAR": "reject"},
    "ja": {"ヘルプ": "help", "キット": "kit", "払出": "dispense", "受領": "receive",
           "在庫": "stock", "状態": "status", "言語": "language", "破損": "damaged",
           "紛失": "missing", "承認": "approve", "却下": "reject"},
    "zh_CN": {"帮助": "help", "药盒": "kit", "发放": "dispense", "接收": "receive",
              "库存": "stock", "状态": "status", "语言": "language", "损坏": "damaged",
              "缺失": "missing", "批准": "approve", "拒绝": "reject"},
}
_OUTCOMES = {"damaged", "missing"}


def normal(word: str) -> str:
    """Upper case, Latin accents dropped: "reçu" and "RECU" are one word."""
    decomposed = unicodedata.normalize("NFD", word.upper())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))

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


def split(body: str | None) -> list[str]:
    """The words of a message. NFKC first: the full-width digits and spaces of
    Japanese and Chinese keyboards are the ASCII ones (a PIN typed "２４６８" is
    2468)."""
    text = unicodedata.normalize("NFKC", (body or "")[:MAX_BODY])
    return [w for w in _SEPARATORS.split(text.strip()) if w]


def parse(body: str | None) -> Command:
    words = split(body)
    if not words:
        return Command("empty")
    keyword, args = normal(words[0]), tuple(words[1:MAX_ARGUMENTS + 1])
    if len(words) == 1 and is_digits(keyword):
        return Command("number", (keyword,))
    if keyword in OPT_OUT and not args:
        return Command("stop")
    if keyword in OPT_IN and not args:
        return Command("start")
    if keyword in COMMAND_WORDS:
        return Command(COMMAND_WORDS[keyword], args)
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
    if not args or not is_digits(args[0]):
        return None
    outcomes: dict[str, list[str]] = {}
    current: list[str] | None = None
    for word in args[1:]:
        outcome = OUTCOME_WORDS.get(normal(word))
        if outcome is not None:
            if outcome in outcomes:
                return None  # DAMAGED twice: one list per outcome
            current = outcomes[outcome] = []
        elif current is not None and is_digits(word):
            current.append(word)
        else:
            return None
    if any(not kits for kits in outcomes.values()):
        return None
    return Receipt(args[0], tuple(outcomes.get("damaged", ())),
                   tuple(outcomes.get("missing", ())))


def _words_for(meanings: set[str] | None) -> dict[str, str]:
    """Every word (English and aliases) -> its meaning, for commands or outcomes."""
    english = RECEIPT_OUTCOMES if meanings == _OUTCOMES else KEYWORDS
    words = dict(english)
    for aliases in ALIASES.values():
        for word, meaning in aliases.items():
            if (meaning in _OUTCOMES) == (meanings == _OUTCOMES):
                if words.setdefault(normal(word), meaning) != meaning:
                    raise ValueError(f"SMS keyword {word} would mean two things")
    return words


COMMAND_WORDS = _words_for(None)
OUTCOME_WORDS = _words_for(_OUTCOMES)
