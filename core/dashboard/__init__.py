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
kits by study). And they are read once per version of the study, not once per
page: ``current`` remembers the answer under the study's audit head and the
reader (see there); a page opened again with nothing changed costs the head's
lookup and the audit state.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.actors import ROLES, SITE_ROLES, Actor
from core.approvals import PENDING, ApprovalRow, count_approvals
from core.audit import GENESIS
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
from core.models import AuditHead, Site, Study
from core.records import SUBJECT_READERS
from core.report_registry import SPONSOR_ROLES
from core.single_flight import SingleFlightCache
from core.studies import study_ref
from core.supply.overview import COVER_DAYS

NEWEST_APPROVALS = 5

__all__ = ["COVER_DAYS", "EXPIRY_WARNING_DAYS", "LOW_COVER_DAYS", "Cap", "Current",
           "Dashboard", "EnrollmentOverTime", "ExpiringKits", "KitTypeStock",
           "PendingApprovals", "SiteEnrollment", "SiteStockLine", "TimePoint",
           "UnconfirmedKits", "current", "dashboard", "forget_answers"]


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
    return current(db, actor=actor, study=study, today=today).data


@dataclass(frozen=True)
class Current:
    """A dashboard and its version: two reads with the same ``version`` have the
    same ``data`` but for ``audit``, which is read anew each time (see below)."""

    data: Dashboard
    version: tuple
    study_id: int
    generation: int  # the audit head's seq: a later version of the study has a higher one


def current(db: Database, *, actor: Actor, study: str | None = None,
            today: date | None = None) -> Current:
    """The dashboard, recomputed only when what it shows may have changed.

    Every change to a study seals rows into its hash-chained audit trail in the
    same transaction, so the chain's head (seq and hash), read in the same
    snapshot as everything else, is an exact version of the study's data. The
    answer is a function of that head, the day, the minute (the end of "the
    last ``COVER_DAYS`` days"), and the reader as the reads see it: role
    (hence blinded) and site set, nothing else of the actor (``_reader``). So
    it is remembered per database under exactly that key (``_remembered``);
    a blinded role or another site set has another key, never another's answer.
    A reader who gets no audit state needs no snapshot to use a remembered
    answer: the head read on its own says which version is current, and the
    answer under it was read in a snapshot that ended at that head.

    The audit chain's state is not remembered: a row changed in place (which
    seals no row) must show on the very next page (core.audit_checkpoints), so
    it is read anew, and cheaply, on every call.
    """
    actor.require(ROLES, "see the dashboard")
    day = today or system_today()
    # The time of day stays real (as core.clock does) so "the last 28 days" is a
    # window; to the minute, so that it is part of the key without making every
    # request a new one.
    now = datetime.combine(day, utcnow().time().replace(second=0, microsecond=0), UTC)
    reader = _reader(actor)
    if not _may(reader, SPONSOR_ROLES):
        # Nothing to read anew: when this version is remembered, the head's
        # lookup (two statements, no transaction) is the whole cost.
        with db.reads() as session:
            ref = study_ref(session, study)
            seq, hash_ = _head(session, ref.id)
        version = _version(ref.id, seq, hash_, day, now, reader)
        found = _remembered(db, ref.id).peek(version)
        if found is not None:
            return Current(found, version, ref.id, seq)
    with db.snapshot() as session:
        ref = study_ref(session, study)
        seq, hash_ = _head(session, ref.id)
        version = _version(ref.id, seq, hash_, day, now, reader)
        data = _remembered(db, ref.id).get(
            version, lambda: _read(db, session, ref.id, ref.code, reader, day, now), seq)
        audit = (chain_state(session, ref.id, head=(seq, hash_))
                 if _may(reader, SPONSOR_ROLES) else None)
    return Current(replace(data, audit=audit), version, ref.id, seq)


def _head(session: Session, study_id: int) -> tuple[int, str]:
    """The study's audit head (seq, hash): its version."""
    head = session.execute(select(AuditHead.seq, AuditHead.hash)
                           .where(AuditHead.study_id == study_id)).first()
    return (head.seq, head.hash) if head is not None else (0, GENESIS)


def _version(study_id: int, seq: int, hash_: str, day: date, now: datetime,
             reader: Actor) -> tuple:
    """Everything the answer depends on (the audit state aside)."""
    return (study_id, seq, hash_, day, now, reader.role, reader.blinded, reader.site_codes)


def _reader(actor: Actor) -> Actor:
    """The actor as the dashboard's reads use it: its role and its sites. The
    reads are given this, not the actor, so that the key is all they depend on."""
    return Actor(role=actor.role, site_codes=actor.site_codes)


# Per database (a test's, a process's) and study, the answers of the current
# version (older ones are dropped when a newer is stored), one per reader (role x
# site set), at most this many.
ANSWERS_REMEMBERED = 64
_answers: weakref.WeakKeyDictionary[Database, dict[int, SingleFlightCache[Dashboard]]] = \
    weakref.WeakKeyDictionary()
_answers_lock = threading.Lock()


def _remembered(db: Database, study_id: int) -> SingleFlightCache[Dashboard]:
    with _answers_lock:
        studies = _answers.setdefault(db, {})
        cache = studies.get(study_id)
        if cache is None:
            cache = studies[study_id] = SingleFlightCache(ANSWERS_REMEMBERED)
        return cache


def forget_answers() -> None:
    """Drop what this process remembers (the benchmark's cold requests)."""
    with _answers_lock:
        _answers.clear()


def _read(db: Database, session: Session, study_id: int, study_code: str, actor: Actor,
          day: date, now: datetime) -> Dashboard:
    """Every part but the audit chain's state, in the caller's snapshot."""
    study_row = session.get(Study, study_id)
    query = select(Site.id, Site.code, Site.name).where(Site.study_id == study_id)
    if actor.role in SITE_ROLES and actor.site_codes is not None:
        query = query.where(Site.code.in_(sorted(actor.site_codes)))
    sites = {site_id: (code, name)
             for site_id, code, name in session.execute(query.order_by(Site.code))}
    enrollment = study_caps = timeline = unconfirmed_kits = None
    if _may(actor, SUBJECT_READERS):
        study_caps, site_caps, total_cap = caps(session, study_id, actor)
        enrollment = by_site(session, sites, site_caps)
        timeline = over_time(session, list(sites), day, total_cap, db.is_postgres)
        unconfirmed_kits = unconfirmed(session, sites)
    approvals = None
    if _may(actor, APPROVAL_READERS):
        approvals = PendingApprovals(
            count_approvals(session, study_id, status=PENDING, actor=actor),
            tuple(list_approvals(session, study_id, status=PENDING, actor=actor,
                                 limit=NEWEST_APPROVALS)))
    return Dashboard(
        study_code, day, actor.blinded, enrollment, study_caps, timeline,
        stock(session, study_row, sites, now, actor.blinded),
        expiring(session, study_row, actor, day), unconfirmed_kits, approvals, None)


def _may(actor: Actor, roles: frozenset[str]) -> bool:
    return actor.is_operator or actor.role in roles
