"""The audit trail (SPEC §9, §11): the newest rows a page at a time, filtered
by entity, actor and dates (``core.audit_trail.audit_page``: blinded exactly as
the audit report is), and the chain's verification on demand, through the
service the API's ``GET /audit/verify`` calls (``verify_chain``)."""

from __future__ import annotations

from flask import request

from core.audit_trail import audit_page, verify_chain
from core.errors import IvrsError
from ivrs.web.base import actor, blueprint, db, page, refusal_text, user, words
from ivrs.web.dates import BadDate, form_date
from ivrs.web.signed import status_for

FILTERS = ("entity_type", "entity_id", "by", "start", "end")


@blueprint.get("/audit")
def audit():
    return _audit_page()


@blueprint.post("/audit/verify")
def audit_verify():
    try:
        broken = verify_chain(db(), actor=actor(), study=user().study)
    except IvrsError as refused:
        return _audit_page(status_for(refused), error=refusal_text(refused))
    return _audit_page(verified=True, broken=broken)


def _audit_page(status: int = 200, *, error: str | None = None, verified: bool = False,
                broken=None):
    given = {name: (request.args.get(name) or "").strip()[:100] for name in FILTERS}
    before = request.args.get("before", "")
    try:
        found = audit_page(db(), actor=actor(), study=user().study,
                           entity_type=given["entity_type"] or None,
                           entity_id=given["entity_id"] or None, by=given["by"] or None,
                           start=form_date(given["start"]), end=form_date(given["end"]),
                           before=int(before) if before.isdigit() else None)
    except BadDate:
        return _audit_page_without_rows(422, given, words("web.audit.bad_date"))
    except IvrsError as refused:
        return _audit_page_without_rows(status_for(refused), given, refusal_text(refused))
    return page("audit.html", status, lines=found.items, next_before=found.next_before,
                filters=given, error=error, verified=verified, broken=broken)


def _audit_page_without_rows(status: int, given: dict, error: str):
    return page("audit.html", status, lines=[], next_before=None, filters=given, error=error,
                verified=False, broken=None)
