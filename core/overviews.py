"""What a site user asks to know by SMS: a subject's status, the site's stock (read-only).

Both answers are blinded by construction: a subject's overview names visits
and dates, never kits or their type; the stock counts kits by status over all
kit types together (SPEC §8: per-type counts are unblinded data).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, select

from core.actors import ROLES, SITE_ROLES, Actor
from core.clock import today
from core.db import Database
from core.models import Kit, Shipment, Site, SubjectVisit
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
        last = session.execute(
            select(SubjectVisit.visit_code, SubjectVisit.occurred_on)
            .where(SubjectVisit.subject_id == subject.id, SubjectVisit.status == DONE)
            .order_by(SubjectVisit.occurred_on.desc(), SubjectVisit.id.desc()).limit(1)).first()
        next_code = window = None
        first = first_randomization(session, subject.id)
        if first is not None and subject.status == RANDOMIZED:
            recorded = session.scalars(select(SubjectVisit.visit_code).where(
                SubjectVisit.subject_id == subject.id)).all()
            due = due_visit(supply_config(session, ref).schedule(first.cohort),
                            first.randomized_on, recorded, today())
            if due.visit is not None:
                next_code, window = due.visit.code, due.visit.window(first.randomized_on)
        return SubjectOverview(
            subject_number, subject.status,
            last[0] if last else None, last[1] if last else None,
            next_code, window[0] if window else None, window[1] if window else None)


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
    with db.reads() as session:
        ref = study_ref(session, study)
        query = select(Site.code, Site.id).where(Site.study_id == ref.id)
        if actor.role in SITE_ROLES and actor.site_codes is not None:
            query = query.where(Site.code.in_(sorted(actor.site_codes)))
        if site is not None:
            query = query.where(Site.code == site)
        sites = dict(session.execute(query).all())
        if not sites:
            return []
        counts = {(site, status): count for site, status, count in session.execute(
            select(Kit.site_id, Kit.status, func.count())
            .where(Kit.study_id == ref.id, Kit.site_id.in_(sites.values()),
                   Kit.status.in_((AVAILABLE, QUARANTINED)), not_in_open_return())
            .group_by(Kit.site_id, Kit.status))}
        incoming = dict(session.execute(
            select(Shipment.site_id, func.count(Kit.id))
            .join(Kit, Kit.shipment_id == Shipment.id)
            .where(Shipment.study_id == ref.id, Shipment.site_id.in_(sites.values()),
                   Shipment.status == DISPATCHED)
            .group_by(Shipment.site_id)).all())
        return [SiteStock(code, counts.get((site_id, AVAILABLE), 0),
                          counts.get((site_id, QUARANTINED), 0), incoming.get(site_id, 0))
                for code, site_id in sorted(sites.items())]
