"""What a dialog says: prompt ids with parameters, never text or TwiML.

``ivrs`` renders these in the caller's language (``ivrs.render.speech``). Parameter
values carry their kind in their type, so the renderer knows how to speak them:
``Digits`` are read one by one (subject, kit, confirmation numbers), ``Term``
is a message id spoken as its text, ``int`` is a quantity, ``datetime.date`` a date.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KEY = "key"  # one key press (menus, yes/no, 1 correct / 2 re-enter)
NUMBER = "number"  # several digits ended by # (or a pause)


class Digits(str):
    """A number to be read digit by digit: "1 0 1 0 0 0 1", not "one million ..."."""

    __slots__ = ()


class Term(str):
    """A message id spoken as its text: a study's terms (eligibility questions,
    factors, levels, visits, reasons). A study file may bring ids no catalog has
    yet; the renderer then speaks the code itself (the part after the last dot)."""

    __slots__ = ()


class LanguageName(str):
    """A language code ("fr") said as the language's name in the language spoken."""

    __slots__ = ()


def _param_to_json(value: Any) -> Any:
    if isinstance(value, Digits):
        return {"digits": str(value)}
    if isinstance(value, Term):
        return {"term": str(value)}
    return value


def _param_from_json(value: Any) -> Any:
    if isinstance(value, dict) and "digits" in value:
        return Digits(value["digits"])
    if isinstance(value, dict) and "term" in value:
        return Term(value["term"])
    return value


@dataclass(frozen=True)
class Say:
    id: str
    params: dict[str, Any] = field(default_factory=dict)
    language: str | None = None  # None: the caller's language

    def to_json(self) -> dict[str, Any]:
        params = {k: _param_to_json(v) for k, v in self.params.items()}
        return {"id": self.id, "params": params, "language": self.language}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Say:
        params = {k: _param_from_json(v) for k, v in data["params"].items()}
        return cls(data["id"], params, data.get("language"))


@dataclass(frozen=True)
class Turn:
    """One answer to the caller: what to say, then what to collect (or hang up)."""

    says: tuple[Say, ...]
    gather: str | None = None  # KEY | NUMBER | None
    hangup: bool = False
