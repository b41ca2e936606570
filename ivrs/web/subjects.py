"""Subjects: the list (a page at a time, by site and status) and one subject's
record (history, randomizations, visit schedule with windows, kits). What a
role may read, and whether it sees arms, is the core's (``core.records``)."""

from __future__ import annotations

from flask import render_template, request

from core import records
from core.errors import IvrsError, NotFound
from ivrs.render.message_ids import SUBJECT_STATUSES
from ivrs.web.actions import may, new_key, subject_actions
from ivrs.web.base import actor, blueprint, db, page, refusal_text, user


@blueprint.get("/subjects")
def subjects():
    return subjects_list()


def subjects_list(status_code: int = 200, error: str | None = None):
    """The list, with the screening form for the roles that screen (also drawn
    again, with the core's refusal, when a screening was refused)."""
    site = request.args.get("site") or None
    status = request.args.get("status") or None
    if status is not None and status not in SUBJECT_STATUSES:
        status = None
    sites = records.list_sites(db(), actor=actor(), study=user().study)
    try:
        found = records.subjects_page(db(), actor=actor(), study=user().study, site=site,
                                      status=status, after=request.args.get("after") or None,
                                      limit=50)
    except IvrsError as refused:
        return render_template("subjects.html", error=refusal_text(refused), lines=[],
                               sites=sites, statuses=SUBJECT_STATUSES, site=site,
                               status=status, next_after=None), 403
    zones = {s.code: s.timezone for s in sites}
    screen_sites = ([s for s in sites if s.active and actor().may_act_at(s.code)]
                    if may("web.screen") else [])
    # render_template, not page(): the template's "status" is the filter, not the HTTP one.
    return render_template("subjects.html", lines=found.items, next_after=found.next_after,
                           sites=sites, statuses=SUBJECT_STATUSES, site=site, status=status,
                           zones=zones, screen_sites=screen_sites, screen_key=new_key(),
                           error=error), status_code


@blueprint.get("/subjects/<number>")
def subject(number: str):
    try:
        record = records.subject_record(db(), subject_number=number, actor=actor(),
                                        study=user().study)
    except NotFound as missing:
        return page("error.html", 404, message=refusal_text(missing))
    except IvrsError as refused:
        return page("error.html", 403, message=refusal_text(refused))
    zone = next((s.timezone for s in records.list_sites(db(), actor=actor(), study=user().study)
                 if s.code == record.site), None)
    return page("subject.html", record=record, zone=zone, actions=subject_actions(record))
