"""The dashboard: the first page after signing in, for every role (SPEC §11).

What each role may see, blinded, is the core's (``core.dashboard``); this view
draws its charts (``ivrs.render.charts``, inline SVG with every word in the
reader's language) beside the tables they picture.

The page but its audit state is the same for every reader of the same version
of the dashboard (``core.dashboard.current``: study, audit head, day, minute,
role, sites) in the same language; so it is rendered once and remembered per
application and study under exactly that key (the current version's pages
only: a newer version drops the older ones; a few dozen at most). Times on it
are written in UTC (``local_time`` without a zone), not in a zone of the
reader's, so the language is all the rendering adds to the key. The audit state, read anew by the core on every call, and the frame of
the page (the reader's name, the CSRF tokens) are rendered on every request.
"""

from __future__ import annotations

from flask import current_app, g, render_template
from markupsafe import Markup

from core.dashboard import Dashboard, current
from core.single_flight import SingleFlightCache
from ivrs.render.charts import Bar, bar_chart, step_chart
from ivrs.web.base import actor, blueprint, db, page, user, words
from ivrs.web.i18n import written


def _number(value: float) -> str:
    return written(int(value) if float(value).is_integer() else round(value, 1), g.language)


def _day(on) -> str:
    return written(on, g.language)


PAGES_REMEMBERED = 64  # per study: readers x languages at the current version


def _pages(study_id: int) -> SingleFlightCache[Markup]:
    studies = current_app.extensions.setdefault("ivrs.dashboard_pages", {})
    return studies.get(study_id) or studies.setdefault(study_id,
                                                       SingleFlightCache(PAGES_REMEMBERED))


@blueprint.get("/")
def dashboard():
    board = current(db(), actor=actor(), study=user().study)
    body = _pages(board.study_id).get((board.version, g.language),
                                      lambda: _body(board.data), board.generation)
    return page("dashboard.html", data=board.data, body=body)


def _body(data: Dashboard) -> Markup:
    return Markup(render_template("dashboard_body.html", data=data, charts=_charts(data)))


def _charts(data: Dashboard) -> dict[str, Markup]:
    charts = {}
    if data.enrollment_by_site:
        charts["enrollment"] = Markup(bar_chart(
            [Bar(f"{line.site} {line.name}", line.randomized, target=line.cap)
             for line in data.enrollment_by_site],
            chart_id="enrollment-by-site", title=words("web.dashboard.enrollment"),
            description=words("web.dashboard.enrollment.desc"), number=_number,
            no_data=words("web.dashboard.no_data"), target_label=words("web.dashboard.cap")))
    if data.enrollment_over_time is not None:
        timeline = data.enrollment_over_time
        charts["over_time"] = Markup(step_chart(
            [(point.start, point.cumulative) for point in timeline.points],
            chart_id="enrollment-over-time", title=words("web.dashboard.over_time"),
            description=words("web.dashboard.over_time.desc"), number=_number, day=_day,
            no_data=words("web.dashboard.no_data"), cap=timeline.cap,
            cap_label=words("web.dashboard.cap")))
    covered = [line for line in data.stock_by_site if line.days_of_cover is not None
               or line.low_cover]
    charts["cover"] = Markup(bar_chart(
        [Bar(f"{line.site} {line.name}", line.days_of_cover or 0, flagged=line.low_cover)
         for line in covered],
        chart_id="days-of-cover", title=words("web.dashboard.cover"),
        description=words("web.dashboard.cover.desc", days=data.low_cover_days),
        number=_number, no_data=words("web.dashboard.no_data"),
        threshold=data.low_cover_days, threshold_label=words("web.dashboard.low_cover")))
    return charts
