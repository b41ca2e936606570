"""Approvals (SPEC §11): the requests at the approvals gate the reader may see
(``core.gates.visible_approvals``), and for those who may decide one, a signed
approve or reject form: the meaning of the signature in words, the password
again, then ``core.gates.decide`` as the API's ``POST /approvals/{n}/decision``
calls it. What a request is about is the core's blinded description: an
approver never sees an arm (an approved unblinding reveals the arm to the
requesting investigator, later, on that investigator's own signed step)."""

from __future__ import annotations

from flask import g, request

from core import gates
from core.approvals import PENDING, STATUSES, ApprovalRow
from core.errors import IvrsError
from ivrs.web.base import actor, blueprint, db, page, refusal_text, user, words
from ivrs.web.descriptions import about_text
from ivrs.web.signed import form_key, new_form_key, signed_refusal, signed_step, status_for

# decision -> the meaning of its signature
MEANINGS = {"approve": "web.approvals.meaning.approve", "reject": "web.approvals.meaning.reject"}
DECISIONS = tuple(MEANINGS)


@blueprint.get("/approvals")
def approvals():
    status = request.args.get("status", PENDING)
    status = status if status in STATUSES else None  # anything else: every status
    rows = gates.visible_approvals(db(), actor=actor(), study=user().study, status=status)
    return page("approvals.html", rows=rows, statuses=STATUSES, chosen=status or "all",
                decidable=_decidable(rows))


@blueprint.get("/approvals/<number>")
def approval(number: str):
    row = _visible(number)
    if not isinstance(row, ApprovalRow):
        return row  # the page saying why not
    return _decision_page(row)


@blueprint.post("/approvals/<number>/decision")
def decide(number: str):
    row = _visible(number)
    if not isinstance(row, ApprovalRow):
        return row
    decision = request.form.get("decision", "")
    if decision not in DECISIONS:
        return _decision_page(row, 422, error=words("web.approvals.choose"))
    reason = request.form.get("reason") or None
    key = form_key()
    try:
        done = signed_step(
            lambda signature: gates.decide(db(), number=row.number,
                                           approve=decision == "approve", actor=actor(),
                                           signature=signature, reason=reason,
                                           study=user().study, idempotency_key=key),
            meaning=_meaning(row, decision), password=request.form.get("password", ""))
    except IvrsError as refused:
        return _decision_page(row, status_for(refused), error=signed_refusal(refused),
                              keys={decision: key}, reason=reason)
    return page("approval_done.html", row=row, decision=done)


def _visible(number: str):
    """The request as the reader may see it (any status), or the error page."""
    try:
        rows = gates.visible_approvals(db(), actor=actor(), study=user().study, status=None)
    except IvrsError as refused:
        return page("error.html", status_for(refused), message=refusal_text(refused))
    found = next((row for row in rows if row.number == str(number).strip()), None)
    if found is None:
        return page("error.html", 404, message=words("web.approvals.unknown", number=number))
    return found


def _decidable(rows) -> set[str]:
    """The pending requests this reader may decide (the core says, per request)."""
    numbers = set()
    for row in rows:
        if row.status == PENDING and _refusal(row) is None:
            numbers.add(row.number)
    return numbers


def _refusal(row) -> IvrsError | None:
    try:
        gates.check_decider(db(), number=row.number, actor=actor(), study=user().study)
    except IvrsError as refused:
        return refused
    return None


def _meaning(row, decision: str) -> str:
    """What the signature means, in the reader's words: shown on the form and
    recorded with the signature, word for word."""
    return words(MEANINGS[decision], number=row.number,
                 about=about_text(row.about, g.language))


def _decision_page(row, status: int = 200, *, error: str | None = None,
                   keys: dict | None = None, reason: str | None = None):
    refusal = _refusal(row) if row.status == PENDING else None
    may_decide = row.status == PENDING and refusal is None
    why_not = None
    if not may_decide and error is None:
        why_not = refusal_text(refusal) if refusal is not None else None
    keys = {decision: (keys or {}).get(decision) or new_form_key() for decision in DECISIONS}
    return page("approval.html", status, row=row, may_decide=may_decide, why_not=why_not,
                error=error, keys=keys, reason=reason or "",
                meanings={decision: _meaning(row, decision) for decision in DECISIONS})
