"""The study, its sites and its subjects: read, screen, record eligibility,
randomize, dispense, change status, confirm a kit. Each handler calls one core
service, the same the phone calls, and shapes its answer for the client."""

from __future__ import annotations

from core import records
from core.eligibility import EDC, record_eligibility, subject_eligibility
from core.randomize import randomize
from core.subjects import discontinue, record_screen_failure, screen_subject
from core.supply.confirmation import confirm_kit
from core.supply.dispensing import dispense
from ivrs.api import models as m
from ivrs.api.registry import Context, operation

SUBJECT_LINK = {"operationId": "get_subject",
                "parameters": {"number": "$response.body#/subject_number"}}
RANDOMIZE_LINK = {"operationId": "post_randomize",
                  "parameters": {"number": "$response.body#/subject_number"}}


@operation("GET", "/study", summary="The study's design as a client may see it", tag="study",
           answer=m.StudyOut, problems=(401,))
def get_study(ctx: Context) -> m.StudyOut:
    """Eligibility criteria, stratification factors and their levels (the values
    `randomize` takes), the visit schedule; arm codes for unblinded clients only."""
    summary = records.study_summary(ctx.db, actor=ctx.actor, study=ctx.study)
    return m.StudyOut(
        code=summary.code, name=summary.name, languages=list(summary.languages),
        eligibility=list(summary.eligibility), eligibility_source=summary.eligibility_source,
        factors=[m.FactorOut(code=f.code, levels=list(f.levels)) for f in summary.factors],
        visits=[m.VisitOut(code=v.code, day=v.day, window=list(v.window), kits=v.kits)
                for v in summary.visits],
        unblinding_mode=summary.unblinding_mode,
        arms=None if summary.arms is None else list(summary.arms))


@operation("GET", "/sites", summary="The sites the client acts at", tag="study",
           answer=m.SitesOut, problems=(401,))
def list_sites(ctx: Context) -> m.SitesOut:
    return m.SitesOut(sites=[m.SiteOut(**vars(site)) for site in
                             records.list_sites(ctx.db, actor=ctx.actor, study=ctx.study)])


@operation("GET", "/subjects", summary="Subjects, a page at a time", tag="subjects",
           answer=m.SubjectsOut, query=m.SubjectsQuery, problems=(401, 403, 404, 422))
def list_subjects(ctx: Context, *, query: m.SubjectsQuery) -> m.SubjectsOut:
    """In subject-number order; `next_after` names the `after` of the next page."""
    page = records.subjects_page(ctx.db, actor=ctx.actor, study=ctx.study, site=query.site,
                                 status=query.status, after=query.after, limit=query.limit)
    return m.SubjectsOut(subjects=[m.SubjectLineOut(**vars(line)) for line in page.items],
                         next_after=page.next_after)


@operation("POST", "/subjects", summary="Screen a subject at a site", tag="subjects",
           answer=m.SubjectOut, status=201, body=m.ScreenIn,
           links={"GetSubject": SUBJECT_LINK, "Randomize": RANDOMIZE_LINK})
def screen(ctx: Context, *, body: m.ScreenIn) -> m.SubjectOut:
    """Registers the subject and gives its number (the site code and a sequence)."""
    result = screen_subject(ctx.db, site_code=body.site, actor=ctx.actor, study=ctx.study,
                            idempotency_key=ctx.key)
    return m.SubjectOut(**vars(result))


@operation("GET", "/subjects/{number}", summary="One subject's whole record", tag="subjects",
           answer=m.SubjectDetailOut, problems=(401, 403, 404, 422))
def get_subject(ctx: Context, *, number: str) -> m.SubjectDetailOut:
    """Status history, randomizations, the visit schedule with its windows, kits
    (their types and lots for unblinded clients only), eligibility from the EDC."""
    record = records.subject_record(ctx.db, subject_number=number, actor=ctx.actor,
                                    study=ctx.study)
    answers = subject_eligibility(ctx.db, subject_number=number, actor=ctx.actor,
                                  study=ctx.study)
    return m.SubjectDetailOut(
        subject_number=record.subject_number, site=record.site, status=record.status,
        history=[m.StatusEntryOut(**vars(entry)) for entry in record.history],
        randomizations=[m.RandomizationOut(**vars(entry)) for entry in record.randomizations],
        visits=[m.ScheduledVisitOut(**vars(visit)) for visit in record.visits],
        kits=[m.KitOut(**vars(kit)) for kit in record.kits],
        eligibility=_recorded(answers) if answers.source == EDC else None)


@operation("POST", "/subjects/{number}/eligibility", tag="subjects",
           summary="Record eligibility answers (studies whose eligibility comes from the EDC)",
           answer=m.EligibilityOut, body=m.EligibilityIn)
def post_eligibility(ctx: Context, *, number: str, body: m.EligibilityIn) -> m.EligibilityOut:
    """Some or all criteria, as the eCRF fills; a later answer replaces an earlier
    one until the subject is randomized. Randomization (by any channel) waits
    until every criterion is recorded as met."""
    result = record_eligibility(ctx.db, subject_number=number, answers=body.answers,
                                actor=ctx.actor, study=ctx.study, idempotency_key=ctx.key)
    return _eligibility(result)


def _eligibility(result) -> m.EligibilityOut:
    return m.EligibilityOut(subject_number=result.subject_number, answers=dict(result.answers),
                            missing=list(result.missing), failed=list(result.failed),
                            all_met=result.all_met, confirmation=result.confirmation)


def _recorded(recorded) -> m.EligibilityOut:
    return m.EligibilityOut(subject_number=recorded.subject_number,
                            answers={a.question: a.met for a in recorded.answers},
                            missing=list(recorded.missing), failed=list(recorded.failed),
                            all_met=recorded.all_met)


@operation("POST", "/subjects/{number}/randomize", tag="subjects",
           summary="Randomize a subject: randomization number and first kits",
           answer=m.RandomizedOut, body=m.RandomizeIn)
def post_randomize(ctx: Context, *, number: str, body: m.RandomizeIn) -> m.RandomizedOut:
    """Refused with the phone's codes: `not_screened`, `already_randomized`,
    `list_exhausted`, `cap_reached`, `no_stock_at_site` (checked for every arm),
    `not_eligible`, `eligibility_incomplete`, `wrong_site`."""
    result = randomize(ctx.db, subject_number=number, actor=ctx.actor,
                       eligibility=body.eligibility or {}, factors=body.factors,
                       study=ctx.study, event=body.event, idempotency_key=ctx.key)
    return m.RandomizedOut(subject_number=result.subject_number, event=result.event,
                           randomization_number=result.randomization_number,
                           kits=list(result.kits), visit=result.visit,
                           confirmation=result.confirmation,
                           arm=None if ctx.actor.blinded else result.arm)


@operation("POST", "/subjects/{number}/dispense", tag="subjects",
           summary="Dispense the visit due now", answer=m.DispensedOut, body=m.DispenseIn)
def post_dispense(ctx: Context, *, number: str, body: m.DispenseIn) -> m.DispensedOut:
    """Missed visits on the way are recorded; with `visit`, refused `visit_not_due`
    when another visit is due."""
    result = dispense(ctx.db, subject_number=number, actor=ctx.actor, study=ctx.study,
                      idempotency_key=ctx.key, visit=body.visit)
    return m.DispensedOut(**vars(result))


@operation("POST", "/subjects/{number}/status", tag="subjects",
           summary="Screen failure or discontinuation, with a reason",
           answer=m.SubjectOut, body=m.StatusIn)
def post_status(ctx: Context, *, number: str, body: m.StatusIn) -> m.SubjectOut:
    change = record_screen_failure if body.status == "screen_failed" else discontinue
    result = change(ctx.db, subject_number=number, reason=body.reason, actor=ctx.actor,
                    study=ctx.study, idempotency_key=ctx.key)
    return m.SubjectOut(**vars(result))


@operation("POST", "/kits/{number}/confirm", tag="subjects",
           summary="Confirm the kit handed out to a subject", answer=m.KitConfirmedOut,
           body=m.KitConfirmIn)
def post_kit_confirm(ctx: Context, *, number: str, body: m.KitConfirmIn) -> m.KitConfirmedOut:
    """The kit must be one this client was given for that subject and not yet confirmed
    (`wrong_kit`, `kit_of_another_subject`, `kit_already_confirmed`, `no_pending_kit`)."""
    result = confirm_kit(ctx.db, kit_number=number, actor=ctx.actor, study=ctx.study,
                         idempotency_key=ctx.key, subject_number=body.subject)
    return m.KitConfirmedOut(**vars(result))
