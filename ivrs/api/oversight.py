"""Approvals, emergency unblinding, reports and the audit chain's verification.

Signed steps (a decision, an unblinding) carry the signer's user ID and PIN:
a signature is a person's, so the step runs as that user, through the client
(``core.api_clients.signing_actor``), exactly as it does by phone.
"""

from __future__ import annotations

import io
import tempfile

from core import gates
from core.api_clients import signing_actor
from core.audit import verify
from core.clock import utcnow
from core.errors import IvrsError
from core.report_registry import SPONSOR_ROLES, report_access
from core.signatures import sign
from core.studies import get_study, study_ref
from core.unblinding import unblind
from core.users import record_unblinded_view
from ivrs.api import models as m
from ivrs.api.registry import Context, File, operation
from ivrs.render.report_files import ReportHeader, is_binary, write_report

SPOOL_BYTES = 4 * 1024 * 1024
MIMETYPES = {"csv": "text/csv", "pdf": "application/pdf",
             "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


@operation("GET", "/approvals", summary="Requests awaiting a decision (or decided)",
           tag="approvals", answer=m.ApprovalsOut, query=m.ApprovalsQuery,
           problems=(401, 403, 422))
def list_approvals(ctx: Context, *, query: m.ApprovalsQuery) -> m.ApprovalsOut:
    """Newest first; what a request is about never names an arm."""
    rows = gates.visible_approvals(ctx.db, actor=ctx.actor, study=ctx.study,
                                   status=query.status)
    return m.ApprovalsOut(approvals=[m.ApprovalOut(**vars(row)) for row in rows])


@operation("POST", "/approvals/{number}/decision", tag="approvals",
           summary="Approve or reject a request (signed)", answer=m.DecisionOut,
           body=m.DecisionIn)
def post_decision(ctx: Context, *, number: str, body: m.DecisionIn) -> m.DecisionOut:
    """The signer decides, with their own role's rights (four eyes: never the
    requester); a rejection needs a reason."""
    approve = body.decision == "approve"
    signer = signing_actor(ctx.db, ctx.client, body.signature.user)
    gates.check_decider(ctx.db, number=number, actor=signer, study=ctx.study, approve=approve)
    signature = sign(ctx.db, user_code=body.signature.user, pin=body.signature.pin,
                     actor=signer, study=ctx.study,
                     meaning=f"{body.decision} request {number}")
    decision = gates.decide(ctx.db, number=number, approve=approve, actor=signer,
                            signature=signature, reason=body.reason, study=ctx.study,
                            idempotency_key=ctx.key)
    return m.DecisionOut(number=decision.number, kind=decision.kind, status=decision.status,
                         confirmation=decision.confirmation)


@operation("POST", "/subjects/{number}/unblind", tag="approvals",
           summary="Emergency unblinding (signed by the investigator)",
           answer=m.UnblindingOut, body=m.UnblindIn)
def post_unblind(ctx: Context, *, number: str, body: m.UnblindIn) -> m.UnblindingOut:
    """Mode investigator: the arm, to the signing investigator. Mode approval: a
    request number; once approved, the same call reveals the arm."""
    signer = signing_actor(ctx.db, ctx.client, body.signature.user)
    signature = sign(ctx.db, user_code=body.signature.user, pin=body.signature.pin,
                     actor=signer, study=ctx.study,
                     meaning=f"emergency unblinding of subject {number}")
    result = unblind(ctx.db, subject_number=number, reason=body.reason, signature=signature,
                     actor=signer, study=ctx.study, idempotency_key=ctx.key)
    return m.UnblindingOut(number=result.number, subject_number=result.subject_number,
                           status=result.status,
                           arms=[m.RevealedOut(event=a.event, arm=a.arm) for a in result.arms],
                           confirmation=result.confirmation)


@operation("GET", "/reports/{name}", summary="A report of SPEC §8 as a file", tag="reports",
           query=m.ReportQuery, problems=(401, 403, 404, 409, 422),
           patterns={"name": r"^[a-z-]{1,40}$"},
           files={mimetype: "the report" for mimetype in MIMETYPES.values()})
def get_report(ctx: Context, *, name: str, query: m.ReportQuery) -> File:
    """Blinded unless the client's role is unblinded (then audited as an
    unblinded view). Site roles read their own site's reports only."""
    access = report_access(ctx.actor, name, query.site)
    filters = {key: value for key, value in (("site", access.site), ("start", query.start),
                                             ("end", query.end)) if value is not None}
    unknown = sorted(set(filters) - access.spec.filters)
    if unknown:
        raise IvrsError(f"report {name} takes no {', '.join(unknown)}", code="bad_filter")
    if not access.blinded:
        record_unblinded_view(ctx.db, actor=ctx.actor, purpose=f"report {name}",
                              study=ctx.study)
    # Rows stream from the database into a file that stays in memory only
    # while it is small: a report of the whole study never sits in RAM.
    spooled = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 — the answer closes it
    stream = spooled if is_binary(query.format) else io.TextIOWrapper(
        spooled, encoding="utf-8", newline="", write_through=True)
    with ctx.db.sessions() as session:
        study_row = get_study(session, ctx.study)
        columns, rows = access.spec.build(session, study_row, access.blinded, **filters)
        header = ReportHeader(
            name=name, title=access.spec.title, study=f"{study_row.code}: {study_row.name}",
            generated_at=utcnow(), generated_by=ctx.actor.label, blinded=access.blinded,
            filters={key: str(value) for key, value in filters.items()},
            notes=access.spec.notes(session, study_row) if access.spec.notes else [])
        chart = (access.spec.chart(session, study_row, access.blinded, **filters)
                 if access.spec.chart is not None and query.format == "pdf" else None)
        write_report(query.format, stream, header, columns, rows, chart)
    if stream is not spooled:
        stream.detach()  # keep the file open for the answer
    spooled.seek(0)
    return File(spooled, MIMETYPES[query.format], f"{name}.{query.format}")


@operation("GET", "/audit/verify", summary="Verify the audit trail's hash chain",
           tag="reports", answer=m.AuditOut, problems=(401, 403))
def get_audit_verify(ctx: Context) -> m.AuditOut:
    """Recomputes the study's whole chain, as `ivrs audit verify` does."""
    ctx.actor.require(SPONSOR_ROLES, "verify the audit trail")
    # Not ctx.db.reads(): on PostgreSQL those are autocommit, and the chain is read
    # through a server-side cursor, which needs a transaction (one snapshot too).
    with ctx.db.sessions() as session:
        broken = verify(session, study_ref(session, ctx.study).id)
    return m.AuditOut(intact=broken is None, problem=None if broken is None else str(broken))
