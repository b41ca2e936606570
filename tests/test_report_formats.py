"""Reports as files (SPEC §8): every report in CSV, Excel and PDF, read back.

``ivrs report NAME --format F`` runs over the demo study after its scripted
calls (randomizations, dispensing, shipments, an emergency unblinding), and each
file is opened by its own reader: ``csv``, openpyxl, pypdf. Excel and PDF must
carry the CSV's columns and rows, the header (title, study, when, by whom,
blinded or not, page numbers) and, blinded, no arm, kit type or lot.

Memory: the ``subjects`` report over 10,000 subjects is written in each format
while tracemalloc measures the peak of Python allocations, after a warm-up
(imports, font metrics and the compiled query are not the report's). Measured
on SQLite and PostgreSQL: CSV 1.1-1.3 MB, Excel 1.3-1.4 MB, PDF 7.1 MB. The
bounds: CSV and Excel ``STREAMED_BOUND_MB`` = 4 MB, PDF ``PDF_BOUND_MB`` = 10 MB
(reportlab keeps each finished page's content until it saves, about 0.7 KB a
row). Holding the 10,000 rows as tuples adds about 4 MB (tried: Excel 5.1 MB),
over either bound; openpyxl's ordinary (not write-only) workbook needs about 19 MB.
"""

from __future__ import annotations

import csv
import io
import re
import tracemalloc
from datetime import date, datetime, timedelta
from itertools import islice

import pytest
from click.testing import CliRunner
from conftest import fresh_database
from openpyxl import load_workbook
from pypdf import PdfReader
from sqlalchemy import insert, select
from test_blinding_scan import leaks, secrets_of
from voice import TODAY

from core.models import Arm, Randomization, RandomizationEvent, Site, Subject
from core.report_charts import Chart, Panel, Series
from core.report_registry import SPECS
from core.studies import get_study
from ivrs.main import main
from ivrs.demo.scenario import SCENES, STUDY_CODE, DemoLine, DemoRun, set_up_demo_study
from ivrs.render.report_files import ReportHeader, write_report
from ivrs.render.report_files.pdf_file import column_widths, wrap, write_pdf
from ivrs.render.report_files.xlsx_file import write_xlsx

FORMATS = ("csv", "xlsx", "pdf")
STATISTICIAN = {"IVRS_PIN": "9753"}  # user 5004, the demo's unblinded statistician
STREAMED_BOUND_MB = 4
PDF_BOUND_MB = 10
MANY = 10_000


def quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def demo_database(tmp_path_factory):
    """The demo study after its scripted calls, once for the module (read-only here,
    but for the audit rows that unblinded reports add)."""
    workdir = tmp_path_factory.mktemp("report-formats")
    database, cleanup = fresh_database(workdir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IVRS_TODAY", TODAY)
        set_up_demo_study(database, workdir, quiet)
        run = DemoRun(database, DemoLine(database, quiet, None), quiet)
        for scene in SCENES:
            scene(run)
    yield database
    cleanup()


@pytest.fixture
def demo(demo_database, monkeypatch):
    monkeypatch.setenv("DATABASE_URL",
                       demo_database.engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("IVRS_TODAY", TODAY)
    return demo_database


def run_report(directory, name: str, fmt: str, *options: str, env=None):
    path = directory / f"{name}.{fmt}"
    result = CliRunner().invoke(main, ["report", name, "--format", fmt, "--out", str(path),
                                       *options], env=env)
    assert result.exit_code == 0, result.output
    return path


def read_csv(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def cell_text(cell) -> str:
    """An Excel cell's value as the CSV writes it."""
    value = cell.value
    if value is None:
        return ""
    if isinstance(value, datetime):
        if "h" in cell.number_format:
            return value.strftime("%Y-%m-%dT%H:%M:%SZ")
        return value.date().isoformat()
    return str(value)


def pdf_pages(path) -> list[str]:
    """Each page's text, runs of whitespace as one space."""
    return [" ".join(page.extract_text().split()) for page in PdfReader(path).pages]


def squeezed(text: str) -> str:
    """Without whitespace: a value wrapped over lines of a cell reads whole again."""
    return re.sub(r"\s+", "", text)


def study_line(db) -> str:
    with db.sessions() as session:
        study = get_study(session, STUDY_CODE)
        return f"{study.code}: {study.name}"


def assert_blind(db, text: str, *, tokens: bool = False) -> None:
    """No arm name or code, kit type or lot. The study's own name is public (the
    demo's names the drug and placebo), so it is taken out first; ``tokens`` also
    refuses an arm code as a word of its own (PDF text has no cells)."""
    words, codes = secrets_of(db)
    text = text.replace(study_line(db), "")
    assert leaks(text, words, codes) == []
    if tokens:
        assert not set(text.split()) & set(codes)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_report_in_every_format_has_the_csv_rows_and_the_header(demo, tmp_path, name):
    spec = SPECS[name]
    csv_rows = read_csv(run_report(tmp_path, name, "csv"))
    columns, rows = csv_rows[0], csv_rows[1:]
    assert columns and all(column == column.lower() for column in columns)
    assert_blind(demo, "\n".join(",".join(row) for row in csv_rows))

    workbook = load_workbook(run_report(tmp_path, name, "xlsx"))
    assert workbook.sheetnames == [spec.title[:31], "About"]
    sheet = workbook.worksheets[0]
    table = [[cell_text(cell) for cell in row] for row in sheet.iter_rows()]
    assert table[0] == columns and all(cell.font.b for cell in sheet[1])
    assert [row[:len(columns)] for row in table[1:]] == rows
    assert sheet.freeze_panes == "A2"
    last_column = sheet.cell(row=1, column=len(columns)).column_letter
    assert sheet.auto_filter.ref == f"A1:{last_column}{len(rows) + 1}"
    assert all(sheet.column_dimensions[cell.column_letter].width >= len(cell.value)
               for cell in sheet[1])
    about = [row[0] for row in workbook["About"].iter_rows(values_only=True)]
    assert about[0] == spec.title and about[1] == f"Study: {study_line(demo)}"
    assert re.fullmatch(r"Generated: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC by cli:admin \(.+\)",
                        about[2])
    assert about[3] == "Blinded"
    assert_blind(demo, "\n".join(",".join(row) for row in table) + "\n".join(about))

    pages = pdf_pages(run_report(tmp_path, name, "pdf"))
    for number, page in enumerate(pages, 1):
        assert page.startswith(spec.title), page[:200]
        assert f"Study: {study_line(demo)}" in page and "Blinded" in page
        assert re.search(r"Generated: \S+ \S+ UTC by cli:admin", page)
        assert f"Page {number} of {len(pages)}" in page
        assert squeezed(columns[0]) in squeezed(page)  # the column header, on every page
    text = squeezed(" ".join(pages))
    for row in rows:
        for value in row:
            if len(value) <= 24:  # longer values may be shortened with an ellipsis
                assert squeezed(value) in text, (row, value)
    if spec.chart is not None:
        with demo.sessions() as session:
            chart = spec.chart(session, get_study(session, STUDY_CODE), True)
        assert chart.title in pages[0] or len(pages) > 1 and chart.title in pages[1]
    assert_blind(demo, "\n".join(pages), tokens=True)


def test_the_unblinded_statistician_sees_the_arm_in_every_format(demo, tmp_path):
    with demo.sessions() as session:
        arms = set(session.scalars(select(Arm.code)))
    csv_rows = read_csv(run_report(tmp_path, "subjects", "csv", "--unblinded", "--user",
                                   "5004", env=STATISTICIAN))
    assert csv_rows[0][-1] == "arm"
    shown = {row[-1] for row in csv_rows[1:]} - {""}
    assert shown and shown <= arms

    workbook = load_workbook(run_report(tmp_path, "subjects", "xlsx", "--unblinded", "--user",
                                        "5004", env=STATISTICIAN))
    table = [[cell_text(cell) for cell in row] for row in workbook.worksheets[0].iter_rows()]
    assert table == csv_rows
    about = [row[0] for row in workbook["About"].iter_rows(values_only=True)]
    assert "UNBLINDED: contains treatment allocation" in about
    assert any(line.endswith("UTC by user:5004") for line in about)

    pages = pdf_pages(run_report(tmp_path, "subjects", "pdf", "--unblinded", "--user", "5004",
                                 env=STATISTICIAN))
    assert all("UNBLINDED" in page and "by user:5004" in page for page in pages)
    assert " arm " in pages[0] and set(pages[0].split()) & shown


def test_excel_cells_are_typed_and_identifiers_stay_text(demo, tmp_path):
    subjects = load_workbook(run_report(tmp_path, "subjects", "xlsx")).worksheets[0]
    header = [cell.value for cell in subjects[1]]
    randomized = [row for row in subjects.iter_rows(min_row=2)
                  if row[header.index("randomized_at")].value is not None]
    assert randomized
    for row in randomized:
        number, moment = row[header.index("subject_number")], row[header.index("randomized_at")]
        assert isinstance(number.value, str) and number.data_type == "s"
        assert re.fullmatch(r"\d{7}", number.value)
        assert isinstance(moment.value, datetime)
        assert moment.number_format == "yyyy-mm-dd hh:mm:ss"

    inventory = load_workbook(run_report(tmp_path, "site-inventory", "xlsx")).worksheets[0]
    counts = [row[2].value for row in inventory.iter_rows(min_row=2)]
    assert counts and all(isinstance(count, int) for count in counts)
    assert all(isinstance(row[0].value, str) for row in inventory.iter_rows(min_row=2))

    kits = load_workbook(run_report(tmp_path, "kits", "xlsx")).worksheets[0]
    expiry = [row[3] for row in kits.iter_rows(min_row=2)]
    assert expiry and all(isinstance(cell.value, datetime) and cell.number_format == "yyyy-mm-dd"
                          for cell in expiry)


def header(**changes) -> ReportHeader:
    values = dict(name="subjects", title="Subjects", study="DEMO-301: Demo study",
                  generated_at=datetime(2026, 11, 23, 10, 0), generated_by="cli:admin (tester)",
                  blinded=True, filters={"site": "101", "start": "2026-11-01"},
                  notes=["Audit chain: intact"])
    values.update(changes)
    return ReportHeader(**values)


def test_excel_keeps_values_that_look_like_formulas_or_numbers_as_text(tmp_path):
    columns = ["subject_number", "reason", "count", "when", "day"]
    rows = [("0010001", "=HYPERLINK(\"http://x\")", 3, "2026-11-23T09:05:01Z", "2026-11-24"),
            ("0010002", "#N/A", 0, "2026-13-40T99:00:00Z", "2026-02-30"),
            ("0010003", "bell\x07", -1, "", "")]
    stream = io.BytesIO()
    assert write_xlsx(stream, header(), columns, iter(rows)) == 3
    workbook = load_workbook(io.BytesIO(stream.getvalue()))
    sheet = workbook["Subjects"]
    values = [[cell.value for cell in row] for row in sheet.iter_rows(min_row=2)]
    assert values[0] == ["0010001", "=HYPERLINK(\"http://x\")", 3,
                         datetime(2026, 11, 23, 9, 5, 1), datetime(2026, 11, 24)]
    assert sheet["B2"].data_type == "s" and sheet["B3"].data_type == "s"
    assert values[1] == ["0010002", "#N/A", 0, "2026-13-40T99:00:00Z", "2026-02-30"]
    assert values[2] == ["0010003", "bell", -1, None, None]
    about = [row[0] for row in workbook["About"].iter_rows(values_only=True)]
    assert about[:6] == ["Subjects", "Study: DEMO-301: Demo study",
                         "Generated: 2026-11-23 10:00:00 UTC by cli:admin (tester)", "Blinded",
                         "Filters: site=101, start=2026-11-01", "Audit chain: intact"]


def test_pdf_draws_the_chart_before_the_table_and_the_first_page_lists_filters(tmp_path):
    start = date(2026, 11, 1)
    chart = Chart("Supply overview", "kits", [
        Panel(f"Site {site}", [
            Series("available", [(start + timedelta(days=day), 20.0 - day) for day in range(10)]),
            Series("dispensed", [(start + timedelta(days=day), float(day)) for day in range(10)]),
            Series("expired", [])], note=f"days of cover: {site - 80}")
        for site in (101, 102, 103)] + [Panel("Depot 90", [Series("at depot", [])])])
    rows = [(f"{number:07d}", "101", "randomized") for number in range(1, 121)]
    path = tmp_path / "chart.pdf"
    with open(path, "wb") as stream:
        assert write_pdf(stream, header(name="supply-overview", title="Supply overview"),
                         ["subject_number", "site", "status"], iter(rows), chart) == 120
    pages = pdf_pages(path)
    first = pages[0]
    assert "Filters: site=101, start=2026-11-01" in first and "Audit chain: intact" in first
    assert all("Filters:" not in page for page in pages[1:])
    for text in ("Site 101", "Site 103", "Depot 90", "available", "dispensed", "expired",
                 "days of cover: 21", "days of cover: 23", "2026-11-01", "No data", "kits"):
        assert text in " ".join(pages[:2]), text
    chart_end = " ".join(pages).index("days of cover: 23")
    assert " ".join(pages).index("0000001") > chart_end  # the table comes after the chart
    assert all(f"Page {n} of {len(pages)}" in page for n, page in enumerate(pages, 1))


def test_pdf_wraps_long_cells_and_fits_many_columns_to_the_page(tmp_path):
    columns = [f"column_number_{index}" for index in range(16)]
    long_reason = "the subject reported a serious adverse event " * 5
    rows = [tuple([long_reason] + [f"2026-11-23T10:00:{index:02d}Z" for index in range(15)])]
    widths = column_widths(columns, rows)
    assert sum(widths) <= 842 - 64 + 0.01 and min(widths) > 20
    lines = wrap(long_reason, widths[0] - 6, "Helvetica", 7.5)
    assert len(lines) == 3 and lines[-1].endswith("…") and lines[0].startswith("the subject")
    assert wrap("2026-11-23T10:00:00Z", 45, "Helvetica", 7.5) == ["2026-11-23", "T10:00:00Z"]
    path = tmp_path / "wide.pdf"
    with open(path, "wb") as stream:
        write_pdf(stream, header(blinded=False), columns, iter(rows * 80))
    pages = pdf_pages(path)
    assert len(pages) > 1 and all("UNBLINDED: contains treatment allocation" in page
                                  for page in pages)
    assert all("column_" in page and "2026-11-23" in page for page in pages)


def test_pdf_first_page_keeps_room_for_the_table_whatever_the_notes(tmp_path):
    notes = [f"note {index}: the audit chain was verified" for index in range(60)]
    path = tmp_path / "notes.pdf"
    with open(path, "wb") as stream:
        write_pdf(stream, header(notes=notes), ["site", "count"], iter([("101", 7)]))
    (page,) = pdf_pages(path)
    assert "note 0:" in page and "note 59:" not in page and "About sheet has all" in page
    assert "site count 101 7" in page


def test_empty_report_in_every_format(tmp_path):
    for fmt in ("xlsx", "pdf"):
        stream = io.BytesIO()
        assert write_report(fmt, stream, header(), ["site", "count"], iter(())) == 0
        stream.seek(0)
        if fmt == "xlsx":
            sheet = load_workbook(stream).worksheets[0]
            assert [cell.value for cell in sheet[1]] == ["site", "count"]
            assert sheet.auto_filter.ref == "A1:B1"
        else:
            (page,) = [page.extract_text() for page in PdfReader(stream).pages]
            assert "No rows." in page and "Page 1 of" in page


# --- 10,000 subjects: memory ----------------------------------------------------------------


@pytest.fixture(scope="module")
def many_subjects(tmp_path_factory):
    """The demo study with MANY randomized subjects, inserted in bulk (no service calls)."""
    workdir = tmp_path_factory.mktemp("many-subjects")
    database, cleanup = fresh_database(workdir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IVRS_TODAY", TODAY)
        set_up_demo_study(database, workdir, quiet)
    start = datetime(2026, 1, 5, 8, 0)
    with database.transaction() as session:
        study = get_study(session, STUDY_CODE)
        sites = session.scalars(select(Site.id).where(Site.study_id == study.id)).all()
        arms = session.scalars(select(Arm.id).where(Arm.study_id == study.id)).all()
        event = session.scalars(select(RandomizationEvent.id).where(
            RandomizationEvent.study_id == study.id).order_by(RandomizationEvent.position)).first()
        session.execute(insert(Subject), [
            dict(study_id=study.id, site_id=sites[index % len(sites)],
                 subject_number=f"{index:07d}", status="randomized",
                 screened_at=start + timedelta(minutes=index), screened_by="bulk")
            for index in range(1, MANY + 1)])
        ids = session.execute(select(Subject.subject_number, Subject.id).where(
            Subject.study_id == study.id)).all()
        session.execute(insert(Randomization), [
            dict(study_id=study.id, event_id=event, subject_id=subject_id,
                 randomization_number=f"R{number}", arm_id=arms[int(number) % len(arms)],
                 stratum_key="SEX=F|AGE=LT65", factors={}, eligibility={}, method="list",
                 details={}, randomized_at=start + timedelta(minutes=int(number), seconds=30),
                 randomized_by="bulk")
            for number, subject_id in ids])
    yield database
    cleanup()


def write_subjects(db, fmt: str, path, limit: int | None = None) -> int:
    with db.sessions() as session, open(path, "wb" if fmt != "csv" else "w", **(
            {"newline": "", "encoding": "utf-8"} if fmt == "csv" else {})) as stream:
        columns, rows = SPECS["subjects"].build(session, get_study(session, STUDY_CODE), True)
        return write_report(fmt, stream, header(filters={}, notes=[]), columns,
                            islice(rows, limit))


@pytest.mark.parametrize("fmt", FORMATS)
def test_ten_thousand_subjects_are_streamed_within_the_memory_bound(many_subjects, tmp_path,
                                                                    fmt):
    # imports, font metrics, the query's compiled SQL: once per process, not per report
    write_subjects(many_subjects, fmt, tmp_path / f"warm-up.{fmt}", limit=3)
    path = tmp_path / f"subjects.{fmt}"
    tracemalloc.start()
    try:
        count = write_subjects(many_subjects, fmt, path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == MANY
    bound = PDF_BOUND_MB if fmt == "pdf" else STREAMED_BOUND_MB
    assert peak < bound * 1e6, f"{fmt}: peak {peak / 1e6:.1f} MB"

    last = f"{MANY:07d}"
    if fmt == "csv":
        lines = read_csv(path)
        assert len(lines) == MANY + 1 and lines[1][0] == "0000001" and lines[-1][0] == last
    elif fmt == "xlsx":
        sheet = load_workbook(path, read_only=True).worksheets[0]
        rows = list(sheet.iter_rows(values_only=True))
        assert len(rows) == MANY + 1 and rows[1][0] == "0000001" and rows[-1][0] == last
        assert rows[-1][3] == f"R{MANY:07d}" and isinstance(rows[-1][4], datetime)
    else:
        reader = PdfReader(path)
        final = " ".join(reader.pages[-1].extract_text().split())
        assert last in final and f"Page {len(reader.pages)} of {len(reader.pages)}" in final
