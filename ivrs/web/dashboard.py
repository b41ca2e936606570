"""The dashboard: the first page after signing in, for every role (SPEC §11).

What each role may see, blinded, is the core's (``core.dashboard``); this view
draws its charts (``ivrs.render.charts``, inline SVG with every word in the
reader's language) beside the tables they picture.
"""

from __future__ import annotations

from flask import g
from markupsafe import Markup

from core.dashboard import dashboard as dashboard_data
from ivrs.render.charts import Bar, bar_chart, step_chart
from ivrs.web.base import actor, blueprint, db, page, user, words
from ivrs.web.i18n import written


def _number(value: float) -> str:
    return written(int(value) if float(value).is_integer() else round(value, 1), g.language)


def _day(on) -> str:
    return written(on, g.language)


@blueprint.get("/")
def dashboard():
    data = dashboard_data(db(), actor=actor(), study=user().study)
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
    return page("dashboard.html", data=data, charts=charts)
