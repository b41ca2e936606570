"""Build studies directly in the database for service-level tests (no YAML needed)."""

from __future__ import annotations

import itertools

from sqlalchemy import insert

from core.audit import AuditLog
from core.db import Database
from core.models import (
    Arm,
    CapCounter,
    Factor,
    FactorLevel,
    ListEntry,
    RandomizationEvent,
    RandomizationList,
    Site,
    Study,
)
from core.randomization.strata import stratum_key

FACTORS = {"SEX": ["M", "F"], "AGE": ["LT65", "GE65"]}


def make_study(db: Database, *, code="T-1", method="list", ratio=None, factors=FACTORS,
               sites=("101", "102"), params=None, caps=None, stratify_by_site=False,
               eligibility=("INC1", "EXC1"), list_per_stratum=0, extra_events=(),
               config=None) -> Study:
    ratio = ratio or {"A": 1, "P": 1}
    with db.transaction() as s:
        study = Study(code=code, name=code, languages=["en"], eligibility=list(eligibility),
                      config=dict(config or {}))
        s.add(study)
        s.flush()
        arms = {c: Arm(study_id=study.id, code=c, name=f"Arm {c}", position=i)
                for i, c in enumerate(["A", "P"])}
        s.add_all(arms.values())
        for i, site in enumerate(sites):
            s.add(Site(study_id=study.id, code=site, name=f"Site {site}", country="FR",
                       language="en"))
        events = [("R1", method, ratio, params or {}, factors, caps or {})] + list(extra_events)
        for position, (ev_code, ev_method, ev_ratio, ev_params, ev_factors, ev_caps) in enumerate(events):
            event = RandomizationEvent(study_id=study.id, code=ev_code, position=position,
                                       method=ev_method, ratio=ev_ratio, params=ev_params,
                                       stratify_by_site=stratify_by_site, caps=ev_caps)
            s.add(event)
            s.flush()
            for fpos, (fcode, levels) in enumerate(ev_factors.items()):
                factor = Factor(study_id=study.id, event_id=event.id, code=fcode, position=fpos,
                                weight=(ev_params.get("minimization", {}).get("weights", {})
                                        .get(fcode, 1.0)))
                s.add(factor)
                s.flush()
                for lpos, level in enumerate(levels):
                    s.add(FactorLevel(study_id=study.id, factor_id=factor.id, code=level,
                                      position=lpos))
            for cap_key, cap in ev_caps.items():
                s.add(CapCounter(study_id=study.id, event_id=event.id, cap_key=cap_key, cap=cap))
            if ev_method == "list" and list_per_stratum:
                _fill_list(s, study, event, arms, ev_factors, list_per_stratum,
                           sites if stratify_by_site else [None])
        audit = AuditLog(study.id, "test")
        audit.record("study_created", "study", code)
        audit.seal(s)
    return study


def _fill_list(s, study, event, arms, factors, per_stratum, sites):
    lst = RandomizationList(study_id=study.id, event_id=event.id, kind="uploaded",
                            source="factory")
    s.add(lst)
    s.flush()
    rows, number = [], 1000
    codes = list(factors)
    for site in sites:
        for combo in itertools.product(*factors.values()):
            key = stratum_key(codes, dict(zip(codes, combo)), site=site)
            for position in range(1, per_stratum + 1):
                number += 1
                arm = "A" if (position % 3) != 0 else "P"
                rows.append({"study_id": study.id, "event_id": event.id, "list_id": lst.id,
                             "stratum_key": key, "position": position,
                             "randomization_number": str(number), "arm_id": arms[arm].id})
    s.execute(insert(ListEntry), rows)
