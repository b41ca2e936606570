"""Reports (SPEC §8, §11): every report the reader may read
(``core.report_registry.readable_reports``), each as CSV, Excel and PDF, with a
site filter where the report has one and dates where it takes them. A download
is the file the API's ``GET /reports/{name}`` sends, made by the same code
(``ivrs.render.report_download``): who may read what, for which site, blinded
or not, is ``report_access``'s; an unblinded download (the unblinded
statistician's) is audited as an unblinded view, as the API's is. The file is
streamed to the browser from a spooled file, never built in memory whole."""

from __future__ import annotations

from flask import request, send_file

from core import records
from core.errors import IvrsError
from core.report_registry import DATES, SPECS, readable_reports
from ivrs.render.report_download import FORMATS, report_download
from ivrs.web.base import actor, blueprint, db, page, refusal_text, user, words
from ivrs.web.dates import BadDate, form_date
from ivrs.web.signed import status_for


@blueprint.get("/reports")
def reports():
    return _reports_page()


@blueprint.get("/reports/<name>/download")
def report_file(name: str):
    fmt = request.args.get("format", "csv")
    site = request.args.get("site") or None
    try:
        start, end = form_date(request.args.get("start")), form_date(request.args.get("end"))
    except BadDate:
        return _reports_page(422, error=words("web.reports.bad_date"))
    if name not in SPECS or fmt not in FORMATS:
        return _reports_page(404, error=words("web.reports.unknown"))
    try:
        download = report_download(db(), actor=actor(), study=user().study, name=name,
                                   fmt=fmt, site=site, start=start, end=end)
    except IvrsError as refused:
        return _reports_page(status_for(refused), error=refusal_text(refused))
    answer = send_file(download.stream, mimetype=download.mimetype, as_attachment=True,
                       download_name=download.filename, etag=False, max_age=0)
    answer.headers["Cache-Control"] = "no-store"  # a report is trial data, like a page
    return answer


def _reports_page(status: int = 200, *, error: str | None = None):
    sites = records.list_sites(db(), actor=actor(), study=user().study)
    names = readable_reports(actor())
    lines = [{"name": name, "site_filter": "site" in SPECS[name].filters,
              "dates": DATES <= SPECS[name].filters} for name in names]
    return page("reports.html", status, lines=lines, sites=sites, formats=FORMATS,
                every_site=actor().site_codes is None, error=error)
