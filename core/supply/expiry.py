"""The expiry job: expire kits past their date, warn about kits about to expire.

Boundary: a kit's ``expiry_date`` is the last day it may be used. A kit
expiring today is still usable today and becomes ``expired`` at the first run
on the day after (``expiry_date < today``). Only unused stock is expired
(at a depot, reserved for a shipment, available at a site, quarantined): a
kit already assigned or dispensed belongs to a subject, and a kit in transit
is dealt with on receipt, so the job leaves them alone.

Warnings: kits whose expiry falls in the warning window
(``today <= expiry_date <= today + supply.expiry_warning_days``) are
notified once per (location, expiry date), with the key
``expiry_warning:{location}:{expiry_date}``: daily runs do not repeat a
warning, while a new expiry date at the same place gets its own. A site's
warning goes to the site, a depot's to the depot managers. The parameters
carry the location, the date and the kit count, never a kit type (a count per
kit type at a site would tell blinded site staff which arm their subjects are on).

One transaction for the run; every expired kit is moved through the kit
lifecycle (``apply_move``) and audited.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import func, select

from core import clock
from core.audit import AuditLog
from core.db import Database
from core.models import Depot, Site, Study
from core.studies import get_study
from core.supply.kits import apply_move, supply_settings
from core.supply.lifecycle import AT_DEPOT, AVAILABLE, QUARANTINED, RESERVED
from core.models import Kit
from core.supply.outbox import notify

SYSTEM_ACTOR = "system:expiry"
EXPIRABLE = (AT_DEPOT, RESERVED, AVAILABLE, QUARANTINED)
AT_A_SITE = (AVAILABLE, QUARANTINED)
DEFAULT_WARNING_DAYS = 30
BATCH = 500


@dataclass(frozen=True)
class ExpiryResult:
    expired: int
    warnings: int  # notifications written by this run (repeats are not rewritten)


def warning_days(study: Study) -> int:
    return int(supply_settings(study).get("expiry_warning_days", DEFAULT_WARNING_DAYS))


def run_expiry(db: Database, *, study: str | None = None, today: date | None = None,
               actor: str = SYSTEM_ACTOR) -> ExpiryResult:
    today = today or clock.today()
    with db.transaction() as session:
        study_row = get_study(session, study)
        audit = AuditLog(study_row.id, actor)
        expired = 0
        while True:
            # SKIP LOCKED: a kit being picked for a shipment right now is
            # expired by the next run rather than making this one wait.
            kits = session.scalars(
                select(Kit).where(Kit.study_id == study_row.id, Kit.status.in_(EXPIRABLE),
                                  Kit.expiry_date < today)
                .order_by(Kit.kit_number).limit(BATCH).with_for_update(skip_locked=True)).all()
            for kit in kits:
                apply_move(audit, kit, "expire", reason=f"expired on {kit.expiry_date}",
                           details={"expiry_date": kit.expiry_date})
            expired += len(kits)
            session.flush()
            if len(kits) < BATCH:
                break
        warnings = _warn(session, audit, study_row, today)
        audit.seal(session)
    return ExpiryResult(expired, warnings)


def _warn(session, audit: AuditLog, study: Study, today: date) -> int:
    last = today + timedelta(days=warning_days(study))
    counts: dict[tuple[str, str, date], int] = defaultdict(int)
    depots = dict(session.execute(select(Depot.id, Depot.code).where(
        Depot.study_id == study.id)).all())
    sites = dict(session.execute(select(Site.id, Site.code).where(
        Site.study_id == study.id)).all())
    rows = session.execute(
        select(Kit.status, Kit.depot_id, Kit.site_id, Kit.expiry_date, func.count())
        .where(Kit.study_id == study.id, Kit.status.in_(EXPIRABLE),
               Kit.expiry_date >= today, Kit.expiry_date <= last)
        .group_by(Kit.status, Kit.depot_id, Kit.site_id, Kit.expiry_date))
    for status, depot_id, site_id, expiry_date, count in rows:
        if status in AT_A_SITE and site_id is not None:
            place = ("site", sites[site_id])
        elif depot_id is not None:
            place = ("depot", depots[depot_id])
        else:
            continue
        counts[(*place, expiry_date)] += count
    written = 0
    for (kind, code, expiry_date), count in sorted(counts.items()):
        audience = f"site:{code}" if kind == "site" else "role:depot_manager"
        if notify(session, audit, study.id,
                  key=f"expiry_warning:{code}:{expiry_date.isoformat()}",
                  kind="expiry_warning", audience=audience,
                  message_id=("notify.expiry_warning.site" if kind == "site"
                              else "notify.expiry_warning.depot"),
                  params={"location": code, "count": count,
                          "expiry_date": expiry_date.isoformat()}) is not None:
            written += 1
    return written
