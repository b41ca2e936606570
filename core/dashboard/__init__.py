"""The web console's dashboard (SPEC §11): what one actor may see of a study at a
glance, read in one snapshot and returned as a tree of frozen dataclasses that
the page (and its charts, ivrs.render.charts) only has to lay out.

Who sees what follows the readers of core.records and the reports:

- every role sees stock and expiring kits; site roles only their own sites'
  (no depot), the others every site's and the depots';
- enrollment (per site, over time, caps) and kits awaiting confirmation are
  about subjects: not for the depot manager (``SUBJECT_READERS``), None;
- pending approvals for the approval readers (core.gates), their sites' only
  for site roles; None for other roles;
- the audit chain's state for the sponsor's roles (who may verify it);
  core.audit_checkpoints says how it stays cheap and honest.

**Blinding**: a blinded role gets no arm, kit type or lot anywhere in the tree
(stock is totalled over kit types, lots are left out; nothing is counted per
arm). An unblinded role also gets stock per kit type and the lot of expiring
kits. **Cost**: every part is a GROUP BY whose answer is sized sites, days or
weeks, expiry dates and caps, never subjects or kits (see
bench/bench_dashboard.py); the existing indexes serve them (subjects by site,
kits by study).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import select

from core.actors import ROLES, SITE_ROLES, Actor
from core.approvals import PENDING, ApprovalRow, count_approvals
from core.audit_checkpoints import ChainState, chain_state
from core.clock import today as system_today
from core.clock import utcnow
from core.dashboard.enrollment import (
    Cap,
    EnrollmentOverTime,
    SiteEnrollment,
    TimePoint,
    by_site,
    caps,
    over_time,
)
from core.dashboard.stock import (
    EXPIRY_WARNING_DAYS,
    LOW_COVER_DAYS,
    ExpiringKits,
    KitTypeStock,
    SiteStockLine,
    UnconfirmedKits,
    expiring,
    stock,
    unconfirmed,
)
from core.db import Database
from core.gates import APPROVAL_READERS, list_approvals
from core.models import Site, Study
from core.records import SUBJECT_READERS
from core.report_registry import SPONSOR_ROLES
from core.studies import study_ref
from core.supply.overview import COVER_DAYS

NEWEST_APPROVALS = 5

__all__ = ["COVER_DAYS", "EXPIRY_WARNING_DAYS", "LOW_COVER_DAYS", "Cap", "Dashboard",
           "EnrollmentOverTime", "ExpiringKits", "KitTypeStock", "PendingApprovals",
           "SiteEnrollment", "SiteStockLine", "TimePoint", "UnconfirmedKits", "dashboard"]


@dataclass(frozen=True)
class PendingApprovals:
    count: int
    newest: tuple[ApprovalRow, ...]  # at most NEWEST_APPROVALS, newest first


@dataclass(frozen=True)
class Dashboard:
    study: str
    today: date
    blinded: bool
    enrollment_by_site: tuple[SiteEnrollment, ...] | None  # None: the role reads no subjects
    caps: tuple[Cap, ...] | None  # study-level caps (site caps are on the sites' rows)
    enrollment_over_time: EnrollmentOverTime | None
    stock_by_site: tuple[SiteStockLine, ...]
    expiring: tuple[ExpiringKits, ...]
    unconfirmed_kits: tuple[UnconfirmedKits, ...] | None  # only sites with some
    pending_approvals: PendingApprovals | None  # None: the role reads no approvals
    audit: ChainState | None  # None: the role does not verify the chain
    cover_days: int = COVER_DAYS  # the window of "used recently"
    low_cover_days: int = LOW_COVER_DAYS


def dashboard(db: Database, *, actor: Actor, study: str | None = None,
              today: date | None = None) -> Dashboard:
    actor.require(ROLES, "see the dashboard")
    day = today or system_today()
    # The time of day stays real (as core.clock does) so "the last 28 days" is a window.
    now = datetime.combine(day, utcnow().time(), UTC)
    with db.snapshot() as session:
        ref = study_ref(session, study)
        study_row = session.get(Study, ref.id)
        query = select(Site.id, Site.code, Site.name).where(Site.study_id == ref.id)
        if actor.role in SITE_ROLES and actor.site_codes is not None:
            query = query.where(Site.code.in_(sorted(actor.site_codes)))
        sites = {site_id: (code, name)
                 for site_id, code, name in session.execute(query.order_by(Site.code))}
        enrollment = study_caps = timeline = unconfirmed_kits = None
        if _may(actor, SUBJECT_READERS):
            study_caps, site_caps, total_cap = caps(session, ref.id, actor)
            enrollment = by_site(session, sites, site_caps)
            timeline = over_time(session, list(sites), day, total_cap, db.is_postgres)
            unconfirmed_kits = unconfirmed(session, sites)
        approvals = None
        if _may(actor, APPROVAL_READERS):
            approvals = PendingApprovals(
                count_approvals(session, ref.id, status=PENDING, actor=actor),
                tuple(list_approvals(session, ref.id, status=PENDING, actor=actor,
                                     limit=NEWEST_APPROVALS)))
        audit = chain_state(session, ref.id) if _may(actor, SPONSOR_ROLES) else None
        return Dashboard(
            ref.code, day, actor.blinded, enrollment, study_caps, timeline,
            stock(session, study_row, sites, now, actor.blinded),
            expiring(session, study_row, actor, day), unconfirmed_kits, approvals, audit)


def _may(actor: Actor, roles: frozenset[str]) -> bool:
    return actor.is_operator or actor.role in roles
