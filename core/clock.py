"""The system's notion of now and today.

``IVRS_TODAY`` (UAT and tests only) sets the date the system takes as today so
that visit windows, expiry and resupply can be exercised; the time of day stays
real so that timestamps keep their order. In production it is ignored, with a
warning, because a validated system must not run on a made-up date.
"""

from __future__ import annotations

import logging
import os
from datetime import date, datetime, timezone

log = logging.getLogger(__name__)
_warned = False


def _override() -> date | None:
    global _warned
    value = os.environ.get("IVRS_TODAY")
    if not value:
        return None
    if os.environ.get("IVRS_ENV", "uat") == "production":
        if not _warned:
            log.warning("IVRS_TODAY=%s ignored: IVRS_ENV is production", value)
            _warned = True
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        if not _warned:
            log.warning("IVRS_TODAY=%r is not a YYYY-MM-DD date; ignored", value)
            _warned = True
        return None


def utcnow() -> datetime:
    now = datetime.now(timezone.utc)
    forced = _override()
    if forced is not None:
        now = now.replace(year=forced.year, month=forced.month, day=forced.day)
    return now


def today() -> date:
    return utcnow().date()


def as_utc(moment: datetime) -> datetime:
    """A stored timestamp, zone-aware: SQLite hands them back without a zone,
    and every timestamp we store is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
