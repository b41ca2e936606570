"""The randomize service, and the mid-study ratio change.

Lock order inside a randomization (the same everywhere, so none can deadlock):
study configuration (shared) -> subject row -> cap counters (sorted) -> the
stratum's counter -> the event counter -> the first visit's kits (``SKIP
LOCKED``: never a wait) -> the study's audit chain head. A subject's EDC
eligibility answers (core.eligibility) are read and written under the subject
row's lock, before the caps: they are the subject's, no other row guards them.

With ``eligibility_source: edc`` the answers are not the caller's but those
the EDC recorded (answers passed in are recorded first, in the same
transaction): one more statement, a SELECT of the subject's answers.

In a study with kit types and visits, the first randomization also dispenses
the first visit's kits (SPEC §6.5). The site's stock is checked for every
arm's kit type before the arm is drawn, so a refusal reveals nothing about
the arm; that refusal requests an urgent shipment and is committed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from core.actors import Actor
from core.clock import today, utcnow
from core.db import Database
from core.eligibility import (
    EDC,
    assess,
    check_answer_values,
    incomplete,
    record_answers,
    recorded_answers,
)
from core.errors import IvrsError, Refused
from core.models import Arm, CapCounter, Randomization, RandomizationEvent
from core.randomization import METHODS, AssignmentContext, ListExhausted
from core.randomization.strata import cap_matches, stratum_key
from core.service import service_call
from core.studies import StudyRef, bump_config_version
from core.study_config import EventConfig, StudyConfig, own_config, share_config, study_config
from core.subjects import (
    ENROLLING_ROLES,
    RANDOMIZED,
    SCREENED,
    lock_subject_row,
    randomized_reason,
    record_status,
)
from core.supply.dispensing import (
    STOCK_REFUSAL,
    dispense_first_visit,
    first_visit,
    refuse_for_stock,
    site_short_for_any_arm,
    supply_config,
)

_INSERT_RANDOMIZATION = insert(Randomization.__table__)


@dataclass(frozen=True)
class RandomizationResult:
    """The arm is here because the core is not blind; dialogs decide who hears it."""

    subject_number: str
    event: str
    randomization_number: str
    arm: str
    confirmation: str | None
    stratum: str = ""
    kits: tuple[str, ...] = ()  # the first visit's kits (studies that dispense)
    visit: str | None = None


def randomize(db: Database, *, subject_number: str, actor: Actor,
              eligibility: dict[str, bool], factors: dict[str, str],
              study: str | None = None, event: str | None = None, cohort: str | None = None,
              idempotency_key: str | None = None) -> RandomizationResult:
    """Eligibility answers and factor levels in; randomization number and arm out.

    A "no" to any eligibility question stops it: the refusal is committed to the
    audit trail (the protocol wants it on record) and then raised.

    In a study whose eligibility source is the EDC, ``eligibility`` holds answers
    to record before deciding (the API lets an EDC send them with the call; the
    phone sends none) and the decision is on every answer recorded: a question
    not recorded refuses it (``eligibility_incomplete``, nothing written, not
    even the answers sent along), one not met refuses it like a "no" does.
    """
    actor.require(ENROLLING_ROLES, "randomize")
    operation = f"randomize {subject_number}"
    with service_call(db, study, operation, idempotency_key, actor) as call:
        session, study_row = call.session, call.study
        share_config(session, study_row.id)
        subject = lock_subject_row(session, study_row.id, subject_number)
        replay = call.replayed()
        if replay is None:
            actor.require_site(subject.site_code)
            config = study_config(session, study_row.id, study_row.config_version)
            event_config = _event_for(session, config, subject, event)
            from_edc = config.eligibility_source == EDC
            if from_edc:
                answers = _edc_answers(call, subject, eligibility)
            else:
                answers = _check_answers(study_row, eligibility)
            # At a later event an EDC's answers are on record, not asked again.
            failed = ([q for q, ok in answers.items() if not ok]
                      if not from_edc or subject.status == SCREENED else [])
            if failed:
                source = {"eligibility_source": EDC} if from_edc else {}
                call.audit.record("randomization_refused", "subject", subject_number,
                                  new={"event": event_config.code, "eligibility": answers,
                                       **source},
                                  reason="not eligible")
                replay = call.finish({"refused": "not_eligible", "failed": failed, **source})
            else:
                replay = _randomize(call, config, subject, event_config, answers, factors,
                                    cohort)
    if replay.get("refused") == "no_stock_at_site":
        raise Refused(STOCK_REFUSAL.format(site=replay["site"]), code="no_stock_at_site",
                      site=replay["site"])
    if "refused" in replay:
        how = "recorded as not met" if replay.get("eligibility_source") == EDC else "answered no"
        raise Refused(f"subject {subject_number} is not eligible: "
                      f"{', '.join(replay['failed'])} {how}",
                      code=replay["refused"], failed=replay["failed"])
    return RandomizationResult(**{**replay, "kits": tuple(replay.get("kits") or ())})


def _randomize(call, config: StudyConfig, subject, event: EventConfig,
               answers: dict[str, bool], factors: dict[str, str], cohort: str | None) -> dict:
    session = call.session
    levels = _check_levels(event, factors)
    cohort = cohort or event.params.get("current_cohort")
    site_code = subject.site_code
    plan = None
    if subject.status == SCREENED:  # the first randomization is the first visit
        supply = supply_config(session, call.study)
        plan = first_visit(supply, cohort, today())
        short = plan and site_short_for_any_arm(session, supply, site_code, plan)
        if short:
            refuse_for_stock(call, site_code, subject.subject_number, short, plan.randomized_on)
            return call.finish({"refused": "no_stock_at_site", "site": site_code})
    attributes = {**levels, "site": site_code, **({"cohort": cohort} if cohort else {})}
    key = stratum_key([f.code for f in event.factors], levels,
                      site=site_code if event.stratify_by_site else None, cohort=cohort)
    if event.has_caps:
        _take_caps(session, event, attributes)
    # Writes that do not depend on the assignment go first, so that the
    # stratum's lock (taken by the method) is held for as few statements as possible.
    if subject.status == SCREENED:
        record_status(session, call, subject, RANDOMIZED, randomized_reason(event.code))
    ctx = AssignmentContext(session=session, event=event, arms=config.arms, stratum_key=key,
                            attributes=attributes, subject_id=subject.id)
    try:
        assignment = METHODS[event.method].assign(ctx)
    except ListExhausted:
        raise Refused("the randomization list for this stratum is exhausted",
                      code="list_exhausted") from None
    session.execute(_INSERT_RANDOMIZATION, {
        "study_id": call.study.id, "event_id": event.id, "subject_id": subject.id,
        "randomization_number": assignment.randomization_number, "arm_id": assignment.arm.id,
        "stratum_key": key, "factors": levels, "eligibility": answers, "method": event.method,
        "details": assignment.details, "randomized_by": call.actor.label,
        "randomized_at": utcnow(),
    })
    # "arm" and "allocation" are unblinded keys: blinded views of the audit
    # trail redact them (core.audit.UNBLINDED_KEYS).
    call.audit.record("subject_randomized", "subject", subject.subject_number, new={
        "event": event.code, "randomization_number": assignment.randomization_number,
        "stratum": key, "factors": levels, "eligibility": answers,
        "arm": assignment.arm.code, "allocation": assignment.details,
    })
    dispensed = {}
    if plan is not None:
        kits = dispense_first_visit(call, supply, plan, subject_id=subject.id,
                                    subject_number=subject.subject_number, site_code=site_code,
                                    arm_id=assignment.arm.id)
        dispensed = {"kits": kits, "visit": plan.visit.code}
    return call.finish({"subject_number": subject.subject_number, "event": event.code,
                        "randomization_number": assignment.randomization_number,
                        "arm": assignment.arm.code, "stratum": key, **dispensed})


def next_event(session: Session, config: StudyConfig, subject) -> EventConfig:
    """The event a subject would be randomized in next (refusals as ``randomize``'s)."""
    return _event_for(session, config, subject, None)


def _event_for(session: Session, config: StudyConfig, subject, code: str | None) -> EventConfig:
    """The named event, or the subject's next one (re-randomization goes in order)."""
    events = config.events
    if not events:
        raise Refused("this study does not randomize", code="no_randomization")
    if len(events) == 1 and subject.status == SCREENED:
        done: set[int] = set()  # the status says it: no randomization yet
    else:
        done = set(session.execute(select(Randomization.event_id).where(
            Randomization.subject_id == subject.id)).scalars())
    if code is not None:
        chosen = next((e for e in events if e.code == code), None)
        if chosen is None:
            raise IvrsError(f"no randomization event {code}", code="unknown_event")
    else:
        chosen = next((e for e in events if e.id not in done), None)
        if chosen is None:
            raise Refused(f"subject {subject.subject_number} is already randomized",
                          code="already_randomized")
    if chosen.id in done:
        raise Refused(f"subject {subject.subject_number} is already randomized ({chosen.code})",
                      code="already_randomized")
    earlier = [e for e in events if e.position < chosen.position and e.id not in done]
    if earlier:
        raise Refused(f"subject {subject.subject_number} must first be randomized "
                      f"({earlier[0].code})", code="previous_event_missing")
    expected = SCREENED if chosen is events[0] else RANDOMIZED
    if subject.status != expected:
        raise Refused(f"subject {subject.subject_number} is {subject.status}",
                      code=f"subject_{subject.status}")
    return chosen


def _check_answers(study: StudyRef, eligibility: dict[str, bool]) -> dict[str, bool]:
    """Every question answered, or answers up to the first "no" (the phone stops
    asking there: SPEC §6.5)."""
    unknown = sorted(set(eligibility) - set(study.eligibility))
    if unknown:
        raise IvrsError(f"no eligibility question {', '.join(unknown)}",
                        code="eligibility_unknown")
    answers = {q: bool(eligibility[q]) for q in study.eligibility if q in eligibility}
    missing = [q for q in study.eligibility if q not in eligibility]
    if missing and all(answers.values()):
        raise IvrsError(f"eligibility not answered: {', '.join(missing)}",
                        code="eligibility_missing")
    return answers


def _edc_answers(call, subject, eligibility: dict[str, bool]) -> dict[str, bool]:
    """The subject's answers as the EDC recorded them, those passed in first.

    At the first randomization every question must be answered (a "not met"
    is returned: ``randomize`` commits that refusal); at a later one the
    answers are closed and not checked again."""
    check_answer_values(eligibility, allow_empty=True)
    if subject.status != SCREENED:
        if eligibility:
            raise Refused(f"subject {subject.subject_number} is {subject.status}: "
                          "eligibility is recorded before the first randomization",
                          code=f"subject_{subject.status}")
        return recorded_answers(call.session, call.study, subject.id)
    answers = record_answers(call, subject, eligibility)
    missing, failed = assess(call.study.eligibility, answers)
    if missing and not failed:
        raise incomplete(subject.subject_number, missing)
    return answers


def _check_levels(event: EventConfig, factors: dict[str, str]) -> dict[str, str]:
    levels = {}
    for factor in event.factors:
        level = factors.get(factor.code)
        if level not in factor.levels:
            raise IvrsError(f"{factor.code} must be one of {', '.join(factor.levels)}",
                            code="bad_level", factor=factor.code)
        levels[factor.code] = level
    return levels


def _take_caps(session: Session, event: EventConfig, attributes: dict[str, str]) -> None:
    caps = session.execute(
        select(CapCounter.id, CapCounter.cap_key).where(CapCounter.event_id == event.id)
        .order_by(CapCounter.cap_key)).all()
    for cap_id, cap_key in caps:
        if not cap_matches(cap_key, attributes):
            continue
        taken = session.execute(
            update(CapCounter).where(CapCounter.id == cap_id, CapCounter.count < CapCounter.cap)
            .values(count=CapCounter.count + 1).returning(CapCounter.id)
        ).scalar()
        if taken is None:
            raise Refused(f"the enrollment cap {cap_key} is reached", code="cap_reached",
                          cap=cap_key)


@dataclass(frozen=True)
class RatioChange:
    event: str
    old: dict
    new: dict
    confirmation: str | None


def change_ratio(db: Database, *, ratio: dict[str, int], actor: Actor, reason: str,
                 study: str | None = None, event: str | None = None,
                 idempotency_key: str | None = None) -> RatioChange:
    """A protocol amendment: new assignments follow the new ratio (audited).

    Block lists switch at the next block of each stratum; minimization and
    simple at the next subject. An uploaded list *is* its ratio: import a new one.
    """
    actor.require(frozenset(), "change the allocation ratio")
    if not (reason or "").strip():
        raise Refused("a reason (the protocol amendment) is required", code="reason_required")
    with service_call(db, study, "change_ratio", idempotency_key, actor) as call:
        own_config(call.session, call.study.id)
        events = list(call.session.execute(
            select(RandomizationEvent).where(RandomizationEvent.study_id == call.study.id)
            .order_by(RandomizationEvent.position).with_for_update()).scalars())
        if (replay := call.replayed()) is not None:
            return RatioChange(**replay)
        row = next((e for e in events if event in (None, e.code)), None)
        if row is None:
            raise IvrsError(f"no randomization event {event}", code="unknown_event")
        validate_ratio(call.session, call.study, row, ratio)
        old = dict(row.ratio)
        row.ratio = {code: int(n) for code, n in ratio.items()}
        bump_config_version(call.session, call.study.id)
        call.audit.record("ratio_changed", "randomization_event", row.code,
                          old={"ratio": old}, new={"ratio": row.ratio}, reason=reason)
        return RatioChange(**call.finish({"event": row.code, "old": old, "new": row.ratio}))


def validate_ratio(session: Session, study: StudyRef, event: RandomizationEvent,
                   ratio: dict[str, int]) -> None:
    if event.method in ("list", "none"):
        raise Refused(f"event {event.code} uses method {event.method}: the ratio is the list's",
                      code="ratio_not_applicable")
    arm_codes = set(session.execute(select(Arm.code).where(Arm.study_id == study.id)).scalars())
    unknown = set(ratio) - arm_codes
    if unknown or not ratio:
        raise IvrsError(f"unknown arm(s) {', '.join(sorted(unknown))} "
                        f"(arms: {', '.join(sorted(arm_codes))})", code="bad_ratio")
    if any(not isinstance(n, int) or n < 0 for n in ratio.values()) or sum(ratio.values()) == 0:
        raise IvrsError("ratio weights are whole numbers >= 0, at least one positive",
                        code="bad_ratio")
    if event.method == "block":
        total = sum(ratio.values())
        sizes = (event.params.get("block") or {}).get("sizes") or [4]
        if any(size % total for size in sizes):
            raise IvrsError(f"block sizes {sizes} are not multiples of {total}",
                            code="bad_ratio")
