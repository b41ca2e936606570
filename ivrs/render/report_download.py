"""A report of SPEC §8 as a file to send over HTTP: what the API's
``GET /reports/{name}`` and the web console's downloads share.

Who may read it, for which site and blinded or not, is ``report_access``'s;
an unblinded download is audited as an unblinded view (the reader's role is
its authorization: an API client's token, a signed-in web user). The rows
stream from the database into a file that stays in memory only while it is
small, so a report of the whole study never sits in RAM; the door sends that
file in chunks and closes it.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from datetime import date
from typing import IO

from core.actors import Actor
from core.clock import utcnow
from core.db import Database
from core.errors import IvrsError
from core.report_registry import report_access
from core.studies import get_study
from core.users import record_unblinded_view
from ivrs.render.report_files import ReportHeader, is_binary, write_report

SPOOL_BYTES = 4 * 1024 * 1024
MIMETYPES = {"csv": "text/csv", "pdf": "application/pdf",
             "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}
FORMATS = tuple(MIMETYPES)


@dataclass
class ReportDownload:
    stream: IO[bytes]  # open, at its start; the sender closes it
    mimetype: str
    filename: str


def report_download(db: Database, *, actor: Actor, study: str | None, name: str, fmt: str,
                    site: str | None = None, start: date | None = None,
                    end: date | None = None) -> ReportDownload:
    """Report ``name`` in ``fmt`` (csv, xlsx, pdf) for ``actor``. Refusals are
    ``report_access``'s, and ``bad_filter`` for a filter the report does not take."""
    if fmt not in MIMETYPES:
        raise IvrsError(f"no format {fmt} (formats: {', '.join(FORMATS)})", code="bad_format")
    access = report_access(actor, name, site)
    filters = {key: value for key, value in (("site", access.site), ("start", start),
                                             ("end", end)) if value is not None}
    unknown = sorted(set(filters) - access.spec.filters)
    if unknown:
        raise IvrsError(f"report {name} takes no {', '.join(unknown)}", code="bad_filter")
    if not access.blinded:
        record_unblinded_view(db, actor=actor, purpose=f"report {name}", study=study)
    spooled = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 — the sender closes it
    stream = spooled if is_binary(fmt) else io.TextIOWrapper(
        spooled, encoding="utf-8", newline="", write_through=True)
    try:
        with db.sessions() as session:
            study_row = get_study(session, study)
            columns, rows = access.spec.build(session, study_row, access.blinded, **filters)
            header = ReportHeader(
                name=name, title=access.spec.title, study=f"{study_row.code}: {study_row.name}",
                generated_at=utcnow(), generated_by=actor.label, blinded=access.blinded,
                filters={key: str(value) for key, value in filters.items()},
                notes=access.spec.notes(session, study_row) if access.spec.notes else [])
            chart = (access.spec.chart(session, study_row, access.blinded, **filters)
                     if access.spec.chart is not None and fmt == "pdf" else None)
            write_report(fmt, stream, header, columns, rows, chart)
    except BaseException:
        spooled.close()
        raise
    if stream is not spooled:
        stream.detach()  # keep the file open for the answer
    spooled.seek(0)
    return ReportDownload(spooled, MIMETYPES[fmt], f"{name}.{fmt}")
