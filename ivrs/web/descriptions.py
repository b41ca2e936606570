"""What the core says by code and parameters, in the reader's words: what an
approval request is about, why the audit chain is broken, the reason of a
subject's status change. The core returns codes (its English is for the CLI,
the API and the logs); a page words them here, with the same parameters.

Every id is a literal, so ``ivrs.render.message_ids`` finds it and the catalog
tests ask for it in every language. Blinded as the core is: no parameter names
an arm or a kit type.
"""

from __future__ import annotations

from core.approvals import About
from core.audit import ChainBreak
from core.records import StatusEntry
from ivrs.render.speech import template
from ivrs.web.i18n import translate

ABOUT = {
    "unblinding": "web.approvals.about.unblinding",
    "return": "web.approvals.about.return",
}
BREAKS = {
    "rows_removed": "web.audit.break.rows_removed",
    "duplicate_seq": "web.audit.break.duplicate_seq",
    "not_linked": "web.audit.break.not_linked",
    "altered": "web.audit.break.altered",
    "rows_removed_at_end": "web.audit.break.rows_removed_at_end",
}
HISTORY_REASONS = {"randomized": "web.subject.reason.randomized"}


def about_text(about: About, language: str) -> str:
    message_id = ABOUT.get(about.code)
    if message_id is None:  # a gate added without its words: its English, never a blank
        return about.english
    params = dict(about.params)
    if "reason" in params:
        params["reason"] = term(f"reason.{params['reason']}", params["reason"], language)
    return translate(message_id, language, **params)


def break_text(found: ChainBreak, language: str) -> str:
    message_id = BREAKS.get(found.code)
    return found.problem if message_id is None else translate(message_id, language,
                                                              **found.params)


def history_reason_text(entry: StatusEntry, language: str) -> str:
    """A status change's reason: a randomization's in words, a reason chosen from
    a list (``adverse_event``) as its term, and text typed by a user as typed."""
    code, params = entry.reason_parts
    if code is None:
        return ""
    if code in HISTORY_REASONS:
        return translate(HISTORY_REASONS[code], language, **params)
    return term(f"reason.{code}", code, language)


def term(message_id: str, otherwise: str, language: str) -> str:
    """The catalog's term, or ``otherwise`` (the user's own text) when there is none."""
    return translate(message_id, language) if template(message_id, language) else otherwise
