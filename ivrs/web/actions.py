"""What the pages that act on a subject share: the form's idempotency key, the
HTTP status of a core refusal, and which actions the subject's page offers.

The statuses follow the API's (``ivrs.api.problems``, which this door may not
import): who asks (role, site) 403, an unknown thing 404, the trial's state
409, bad input 422."""

from __future__ import annotations

import uuid

from flask import g, request

from core.errors import IvrsError, NotFound, Refused
from core.records import SubjectRecord
from core.subjects import RANDOMIZED, SCREENED
from core.supply.lifecycle import ASSIGNED, DISPENSED
from ivrs.render.speech import template
from ivrs.web.access import BEHIND
from ivrs.web.base import actor, blueprint, page, words

# Refusals about who asks, not about the state of things.
FORBIDDEN_CODES = frozenset({"not_allowed", "wrong_site"})
# The kits of a subject that can be reported lost or damaged (core.supply.dispensing).
REPLACEABLE = frozenset({ASSIGNED, DISPENSED})


@blueprint.context_processor
def _terms() -> dict:
    """``term(id, fallback)``: a study's term (``visit.V2``, ``level.SEX.F``) in the
    reader's words, or its code when no catalog names it (a study file brings
    its own terms, which its sponsor may not have translated)."""

    def term(message_id: str, fallback: str | None) -> str:
        if template(message_id, g.get("language", "en")) is None:
            return fallback or ""
        return words(message_id)

    return {"term": term}


def refusal_status(error: IvrsError) -> int:
    if error.code in FORBIDDEN_CODES:
        return 403
    if isinstance(error, NotFound) or error.code.startswith("unknown_"):
        return 404
    if isinstance(error, Refused):
        return 409
    return 422


def new_key() -> str:
    """The key a form is drawn with: a double submit or a reload sends it again,
    and the core answers it with the first answer."""
    return str(uuid.uuid4())


def form_key() -> str | None:
    """The posted form's key, when it is one this console drew (a uuid)."""
    try:
        return str(uuid.UUID(request.form.get("idempotency_key", "")))
    except ValueError:
        return None


def bad_form():
    """A form without the key this console draws: not one of ours, or cut short."""
    return page("error.html", 400, message=words("web.actions.bad_form"))


def may(endpoint: str) -> bool:
    return actor().role in BEHIND[endpoint]


def subject_actions(record: SubjectRecord) -> list[tuple[str, str]]:
    """(endpoint, label) of the actions the subject's page links to.

    Only a hint, so that a page offers nothing that could not apply: the core
    decides when the form is sent (a link drawn for a subject that changed
    since gets the core's refusal)."""
    if not actor().may_act_at(record.site):
        return []
    offered = []
    if record.status == SCREENED and may("web.randomize"):
        offered.append(("web.randomize", "web.actions.randomize"))
    if record.status == RANDOMIZED and may("web.dispense") and any(
            visit.status in ("due", "upcoming") for visit in record.visits):
        offered.append(("web.dispense", "web.actions.dispense"))
    if record.status == RANDOMIZED and may("web.replace") and any(
            kit.status in REPLACEABLE for kit in record.kits):
        offered.append(("web.replace", "web.actions.replace"))
    if record.status in (SCREENED, RANDOMIZED) and may("web.status_change"):
        offered.append(("web.status_change", "web.actions.screen_failure"
                        if record.status == SCREENED else "web.actions.discontinuation"))
    return offered
