"""Date filters typed in a form (``YYYY-MM-DD``, what ``<input type="date">`` sends)."""

from __future__ import annotations

from datetime import date


class BadDate(ValueError):
    pass


def form_date(text: str | None) -> date | None:
    """A date, None for an empty field; ``BadDate`` for anything else."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadDate(text) from None
