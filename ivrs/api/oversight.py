"""Approvals, emergency unblinding, reports and the audit chain's verification.

Signed steps (a decision, an unblinding) carry the signer's user ID and PIN:
a signature is a person's, so the step runs as that user, through the client
(``core.api_clients.signing_actor``), exactly as it does by phone.
"""

from __future__ import annotations

from core import gates
from core.api_clients import signing_actor
from core.audit_trail import verify_chain
from core.signatures import sign
from core.unblinding import unblind
from ivrs.api import models as m
from ivrs.api.registry import Context, File, operation
from ivrs.render.report_download import MIMETYPES, report_download


@operation("GET", "/approvals", summary="Requests awaiting a decision (or decided)",
           tag="approvals", answer=m.ApprovalsOut, query=m.ApprovalsQuery,
           problems=(401, 403, 422))
def list_approvals(ctx: Context, *, query: m.ApprovalsQuery) -> m.ApprovalsOut:
    """Newest first; what a request is about never names an arm."""
    rows = gates.visible_approvals(ctx.db, actor=ctx.actor, study=ctx.study,
                                   status=query.status)
    return m.ApprovalsOut(approvals=[m.ApprovalOut(**{**vars(row), "about": str(row.about)})
                                     for row in rows])


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
    download = report_download(ctx.db, actor=ctx.actor, study=ctx.study, name=name,
                               fmt=query.format, site=query.site, start=query.start,
                               end=query.end)
    return File(download.stream, download.mimetype, download.filename)


@operation("GET", "/audit/verify", summary="Verify the audit trail's hash chain",
           tag="reports", answer=m.AuditOut, problems=(401, 403))
def get_audit_verify(ctx: Context) -> m.AuditOut:
    """Recomputes the study's whole chain, as `ivrs audit verify` does."""
    broken = verify_chain(ctx.db, actor=ctx.actor, study=ctx.study)
    return m.AuditOut(intact=broken is None, problem=None if broken is None else str(broken))
