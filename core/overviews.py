"""What a site user asks to know by SMS: a subject's status, the site's stock (read-only).

Both answers are blinded by construction: a subject's overview names visits
and dates, never kits or their type; the stock counts kits by status over all
kit types together (SPEC §8: per-type counts are unblinded data).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import bindparam, func, select

from core.actors import ROLES, SITE_ROLES, Actor
from core.clock import today
from core.db import Database
from core.models import Kit, Shipment, Site, Study, SubjectVisit
from core.previews import subject_in_study
from core.studies import study_ref
from core.subjects import RANDOMIZED
from core.supply.dispensing import supply_config
from core.supply.kits import not_in_open_return
from core.supply.lifecycle import AVAILABLE, QUARANTINED
from core.supply.shipments import DISPATCHED
from core.supply.visits import DONE, due_visit, first_randomization


@dataclass(frozen=True)
class SubjectOverview:
    subject_number: str
    status: str  # screened | screen_failed | randomized | discontinued
    last_visit: str | None  # the last visit done, and when
    last_visit_on: date | None
    next_visit: str | None  # the visit due now or next, and its window
    window_start: date | None
    window_end: date | None


def subject_overview(db: Database, *, subject_number: str, actor: Actor,
                     study: str | None = None) -> SubjectOverview:
    """Status, last visit done and the visit due next, for a subject of the actor's sites."""
    actor.require(SITE_ROLES, "see a subject's status")
    with db.reads() as session:
        ref, subject = subject_in_study(session, study, subject_number, actor)
        # Every visit recorded, newest first: the first one done is the last
        # visit, and all of them are what is no longer due (one read, not two).
        visits = session.execute(_VISITS_NEWEST_FIRST, {"subject": subject.id}).all()
        last = next(((code, on) for code, status, on in visits if status == DONE), None)
        recorded = [code for code, _, _ in visits]
        next_code = window = None
        first = first_randomization(session, subject.id)
        if first is not None and subject.status == RANDOMIZED:
            due = due_visit(supply_config(session, ref).schedule(first.cohort),
                            first.randomized_on, recorded, today())
            if due.visit is not None:
                next_code, window = due.visit.code, due.visit.window(first.randomized_on)
        return SubjectOverview(
            subject_number, subject.status,
            last[0] if last else None, last[1] if last else None,
            next_code, window[0] if window else None, window[1] if window else None)


_VISITS_NEWEST_FIRST = (
    select(SubjectVisit.visit_code, SubjectVisit.status, SubjectVisit.occurred_on)
    .where(SubjectVisit.subject_id == bindparam("subject"))
    .order_by(SubjectVisit.occurred_on.desc(), SubjectVisit.id.desc()))


@dataclass(frozen=True)
class SiteStock:
    site: str
    available: int  # dispensable today (not in an open return), all kit types together
    quarantined: int
    incoming: int  # kits in shipments on their way


def site_stock(db: Database, *, actor: Actor, study: str | None = None) -> list[SiteStock]:
    """Blinded stock of each of a site user's sites, by site code (SMS ``STOCK``)."""
    actor.require(SITE_ROLES, "see a site's stock")
    return _stock(db, actor, study, None)


def inventory(db: Database, *, actor: Actor, study: str | None = None,
              site: str | None = None) -> list[SiteStock]:
    """Blinded stock of each site the actor may see (a site role's own sites, or
    every site for the sponsor's and the depot's roles), or of ``site`` alone."""
    actor.require(ROLES, "see a site's stock")
    return _stock(db, actor, study, site)


def _stock(db: Database, actor: Actor, study: str | None, site: str | None
           ) -> list[SiteStock]:
    if site is not None:
        actor.require_site(site)
    codes = None  # every site of the study
    if actor.role in SITE_ROLES and actor.site_codes is not None:
        codes = set(actor.site_codes)
    if site is not None:
        codes = {site} if codes is None else codes & {site}
    with db.reads() as session:
        code = study if study is not None else study_ref(session).code
        statement = _STOCK_OF_SITES if codes is not None else _STOCK_OF_EVERY_SITE
        rows = session.execute(statement, {"study": code, "sites": sorted(codes or ())}).all()
        if not rows:
            study_ref(session, code)  # an unknown study says so
    return [SiteStock(*row) for row in sorted(rows)]  # by code, as Python sorts it


def _stock_statement(of_sites: bool):
    """One statement for the whole answer (SMS ``STOCK`` asks it on every
    message): the sites and their three counts as correlated subqueries, built
    once at import and bound per call."""
    sites, studies = Site.__table__, Study.__table__

    def kits_here(status: str):
        return (select(func.count()).select_from(Kit)
                .where(Kit.site_id == sites.c.id, Kit.study_id == sites.c.study_id,
                       Kit.status == status, not_in_open_return())
                .scalar_subquery())

    incoming = (select(func.count(Kit.id)).select_from(Shipment)
                .join(Kit, Kit.shipment_id == Shipment.id)
                .where(Shipment.site_id == sites.c.id, Shipment.study_id == sites.c.study_id,
                       Shipment.status == DISPATCHED)
                .scalar_subquery())
    query = (select(sites.c.code, kits_here(AVAILABLE), kits_here(QUARANTINED), incoming)
             .join(studies, studies.c.id == sites.c.study_id)
             .where(studies.c.code == bindparam("study")))
    if of_sites:
        query = query.where(sites.c.code.in_(bindparam("sites", expanding=True)))
    return query


_STOCK_OF_SITES, _STOCK_OF_EVERY_SITE = _stock_statement(True), _stock_statement(False)
