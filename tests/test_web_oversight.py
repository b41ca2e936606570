"""The console's oversight pages: approvals (signed), emergency unblinding
(signed), reports and the audit trail with its verification — who may open
what (route x role x site), each signed step end to end with the data read
back through the core, a wrong password counted toward the phone's lockout,
refusals that change nothing, and every page and download a blinded role
reaches scanned for arms, kit types and lots."""

from __future__ import annotations

import csv
import html
import io
import re

import openpyxl
import pypdf
import pytest
from sqlalchemy import func, select, text
from web_support import USERS, make_web

from core import append_only
from core.actors import ADMIN, UNBLINDED_ROLES
from core.approvals import APPROVED, PENDING, REJECTED
from core.audit_trail import AUDIT_READERS
from core.gates import APPROVAL_READERS, visible_approvals
from core.models import AuditEvent, Subject, Unblinding, User
from core.randomize import randomize
from core.records import subject_record
from core.report_registry import SPECS, readable_reports
from core.subjects import screen_subject
from core.unblinding import UNBLINDING_ROLES
from core.web_accounts import set_password

PASSWORD = "a long web password 4 tests"
FACTORS = {"SEX": "F", "AGE": "LT65"}
ELIGIBLE = {"INC1": True, "INC2": True, "EXC1": True}
ARM_NAMES = {"A": "Drug 10 mg", "P": "Placebo"}
STUDY_NAME = "A phase 3 study of drug X versus placebo"
# Kit types, lots and arm names anywhere; arm codes as a whole cell or word.
SECRETS = re.compile(r"\b(?:KA|KP|LA1|LP1)\b|Drug 10 mg|Placebo")
ARM_CODE = re.compile(r"(?<![\w(:/-])[AP](?![\w)/-])")
APPROVAL_MODE = ("unblinding: {mode: investigator}", "unblinding: {mode: approval}")
KEY = re.compile(r'name="idempotency_key" value="([0-9a-f]+)"')


# --- helpers ---------------------------------------------------------------------------------


def randomized(web, site="101", user="5001") -> str:
    actor = web.web_user(user).actor
    number = screen_subject(web.db, site_code=site, actor=actor).subject_number
    randomize(web.db, subject_number=number, actor=actor, factors=FACTORS,
              eligibility=ELIGIBLE)
    return number


def with_password(web, role: str) -> None:
    set_password(web.db, user_code=USERS[role], password=PASSWORD, actor=ADMIN)


def arm_of(web, number: str) -> str:
    record = subject_record(web.db, subject_number=number,
                            actor=web.web_user(USERS["unblinded_statistician"]).actor)
    return ARM_NAMES[record.randomizations[0].arm]


def without_tokens(page: str) -> str:
    """A page but for its CSRF tokens (signed with the time: a second later, another)."""
    return re.sub(r'name="csrf_token" value="[^"]*"', "", page)


def keys(page: str) -> list[str]:
    return KEY.findall(page)


def user_row(web, role: str) -> User:
    with web.db.sessions() as session:
        return session.scalars(select(User).where(User.user_code == USERS[role])).one()


def audit_rows(web, action: str) -> list[AuditEvent]:
    with web.db.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                    .order_by(AuditEvent.seq)))


def unblindings(web) -> list[Unblinding]:
    with web.db.sessions() as session:
        return list(session.scalars(select(Unblinding).order_by(Unblinding.id)))


def assert_blind(content: str, where: str) -> None:
    # A CSRF token is random base64: "-KA" in one is no kit type.
    content = html.unescape(without_tokens(content)).replace(STUDY_NAME, "")
    found = SECRETS.search(content) or ARM_CODE.search(_visible_text(content))
    assert found is None, f"{where}: {found.group(0)!r} in {content[max(0, found.start() - 80):found.end() + 80]!r}"


def _visible_text(html: str) -> str:
    """What a reader of a page reads (tags, attribute values and the study name aside)."""
    return re.sub(r"<[^>]*>", " ", html)


def assert_blind_file(fmt: str, data: bytes, where: str) -> None:
    if fmt == "csv":
        cells = [cell for row in csv.reader(io.StringIO(data.decode("utf-8"))) for cell in row]
    elif fmt == "xlsx":
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True)
        cells = [str(value) for sheet in book.worksheets for row in sheet.iter_rows(values_only=True)
                 for value in row if value is not None]
    else:
        reader = pypdf.PdfReader(io.BytesIO(data))
        cells = ["\n".join(page.extract_text() for page in reader.pages)]
    for cell in cells:
        cell = cell.replace(STUDY_NAME, "")
        found = SECRETS.search(cell) or ARM_CODE.search(cell)
        assert found is None, f"{where}: {found.group(0)!r} in {cell[:300]!r}"


@pytest.fixture
def approval_web(db, tmp_path):
    return make_web(db, tmp_path, APPROVAL_MODE)


def request_unblinding(web, number: str) -> str:
    """The investigator of site 101 asks (mode approval): the request's number."""
    with_password(web, "investigator")
    browser = web.as_role("investigator")
    browser.get(f"/subjects/{number}/unblind")
    answer = browser.post(f"/subjects/{number}/unblind", {
        "idempotency_key": keys(browser.last_page)[0], "step": "request",
        "reason": "medical_emergency", "confirm": "yes", "password": PASSWORD})
    assert answer.status_code == 200, browser.text(answer)
    return unblindings(web)[-1].number


# --- who may open what -----------------------------------------------------------------------


@pytest.mark.parametrize("role", sorted(USERS))
def test_every_page_answers_each_role_as_its_rights_say(web, role):
    number = randomized(web)
    browser = web.as_role(role)
    real_role = web.web_user(USERS[role]).role
    expected = {"/approvals": 200 if real_role in APPROVAL_READERS else 403,
                "/reports": 200,
                "/audit": 200 if real_role in AUDIT_READERS else 403,
                "/approvals/800999": 404 if real_role in APPROVAL_READERS else 403}
    # The unblinding form: the investigator of the subject's site only.
    expected[f"/subjects/{number}/unblind"] = (
        200 if role == "investigator" else 403)
    for path, status in expected.items():
        assert browser.get(path).status_code == status, (role, path)
    navigation = browser.text(browser.get("/reports"))
    assert ('href="/approvals"' in navigation) == (real_role in APPROVAL_READERS)
    assert ('href="/audit"' in navigation) == (real_role in AUDIT_READERS)
    subject_page = browser.get(f"/subjects/{number}")
    if subject_page.status_code == 200:
        assert (f"/subjects/{number}/unblind" in browser.text(subject_page)) == (
            real_role in UNBLINDING_ROLES)


def test_the_unblinding_form_is_for_the_subjects_site_only(web):
    at_102 = randomized(web, site="102", user="5005")
    assert web.as_role("investigator").get(f"/subjects/{at_102}/unblind").status_code == 403
    assert web.as_role("investigator_102").get(f"/subjects/{at_102}/unblind").status_code == 200
    assert web.as_role("investigator").get("/subjects/1019999/unblind").status_code == 404
    not_randomized = screen_subject(web.db, site_code="101",
                                    actor=web.web_user("5001").actor).subject_number
    assert web.as_role("investigator").get(
        f"/subjects/{not_randomized}/unblind").status_code == 409


# --- emergency unblinding, mode investigator -------------------------------------------------


def test_the_investigator_signs_and_reads_the_arm_once(web):
    number = randomized(web)
    with_password(web, "investigator")
    browser = web.as_role("investigator")
    form = browser.text(browser.get(f"/subjects/{number}/unblind"))
    meaning = f"I unblind subject {number}: I will see the treatment this subject receives."
    assert meaning in form and 'type="password"' in form
    fields = {"idempotency_key": keys(form)[0], "step": "reveal", "reason": "medical_emergency",
              "confirm": "yes"}

    wrong = browser.post(f"/subjects/{number}/unblind", {**fields, "password": "not it at all"})
    assert wrong.status_code == 403 and "password is not valid" in browser.text(wrong)
    assert unblindings(web) == [] and user_row(web, "investigator").failed_attempts == 1

    done = browser.post(f"/subjects/{number}/unblind", {**fields, "password": PASSWORD})
    assert done.status_code == 200
    page = browser.text(done)
    assert f"Subject {number} receives: {arm_of(web, number)}." in page
    (unblinding,) = unblindings(web)
    assert unblinding.status == "unblinded" and f"recorded as number {unblinding.number}" in page
    assert user_row(web, "investigator").failed_attempts == 0
    (row,) = audit_rows(web, "subject_unblinded")
    assert row.new["signature"]["meaning"] == meaning
    assert audit_rows(web, "signed")[-1].new == {"channel": "web", "meaning": meaning,
                                                 "components": "password"}

    again = browser.post(f"/subjects/{number}/unblind", {**fields, "password": PASSWORD})
    assert again.status_code == 200
    assert without_tokens(browser.text(again)) == without_tokens(page)  # the same answer
    assert len(unblindings(web)) == 1 and len(audit_rows(web, "signed")) == 1


@pytest.mark.parametrize(("change", "status"), [
    ({"reason": "because"}, 422), ({"confirm": ""}, 422), ({"step": "request"}, 409)])
def test_an_unblinding_form_with_bad_input_changes_nothing(web, change, status):
    number = randomized(web)
    with_password(web, "investigator")
    browser = web.as_role("investigator")
    browser.get(f"/subjects/{number}/unblind")
    answer = browser.post(f"/subjects/{number}/unblind", {
        "idempotency_key": keys(browser.last_page)[0], "step": "reveal",
        "reason": "medical_emergency", "confirm": "yes", "password": PASSWORD, **change})
    assert answer.status_code == status
    assert unblindings(web) == [] and audit_rows(web, "signed") == []


def test_an_unblinding_without_its_csrf_token_is_refused(web):
    number = randomized(web)
    with_password(web, "investigator")
    browser = web.as_role("investigator")
    browser.get(f"/subjects/{number}/unblind")
    answer = browser.post(f"/subjects/{number}/unblind", {
        "idempotency_key": keys(browser.last_page)[0], "step": "reveal",
        "reason": "medical_emergency", "confirm": "yes", "password": PASSWORD}, csrf=False)
    assert answer.status_code == 400 and unblindings(web) == []


# --- approvals: an unblinding in mode approval -----------------------------------------------


def test_the_project_manager_approves_an_unblinding_with_a_signature(approval_web):
    web = approval_web
    number = randomized(web)
    request = request_unblinding(web, number)
    with_password(web, "project_manager")
    manager = web.as_role("project_manager")
    listing = manager.text(manager.get("/approvals"))
    assert request in listing and f"/approvals/{request}" in listing
    form = manager.text(manager.get(f"/approvals/{request}"))
    meaning = (f"I approve request {request}: emergency unblinding of subject {number} "
               "(a medical emergency).")
    assert meaning in form
    approve_key = keys(form)[0]

    wrong = manager.post(f"/approvals/{request}/decision", {
        "idempotency_key": approve_key, "decision": "approve", "password": "wrong password!"})
    assert wrong.status_code == 403 and "password is not valid" in manager.text(wrong)
    assert user_row(web, "project_manager").failed_attempts == 1
    assert visible_approvals(web.db, actor=ADMIN)[0].status == PENDING

    done = manager.post(f"/approvals/{request}/decision", {
        "idempotency_key": approve_key, "decision": "approve", "password": PASSWORD})
    assert done.status_code == 200
    page = manager.text(done)
    assert f"Request {request} is approved" in page
    assert visible_approvals(web.db, actor=ADMIN, status=None)[0].status == APPROVED
    (row,) = audit_rows(web, "approval_approved")
    assert row.new["signature"]["meaning"] == meaning
    assert row.new["signature"]["signer"] == "user:5006 Pat Manager"
    assert_blind(page, "the approver's answer")
    for path in ("/approvals?status=all", f"/approvals/{request}"):
        assert_blind(manager.text(manager.get(path)), path)

    # A double submit: the first answer, signed once.
    again = manager.post(f"/approvals/{request}/decision", {
        "idempotency_key": approve_key, "decision": "approve", "password": PASSWORD})
    assert again.status_code == 200
    assert without_tokens(manager.text(again)) == without_tokens(page)
    assert len(audit_rows(web, "approval_approved")) == 1

    # The arm goes to the investigator who asked, on their own signed step.
    investigator = web.as_role("investigator")
    form = investigator.text(investigator.get(f"/subjects/{number}/unblind"))
    assert f"as approved in request {request}" in form and 'name="reason"' not in form
    revealed = investigator.post(f"/subjects/{number}/unblind", {
        "idempotency_key": keys(form)[0], "step": "reveal_approved", "confirm": "yes",
        "password": PASSWORD})
    assert revealed.status_code == 200
    assert f"Subject {number} receives: {arm_of(web, number)}." in investigator.text(revealed)
    assert unblindings(web)[0].status == "unblinded"


def test_three_wrong_passwords_lock_the_approver_as_by_phone(approval_web):
    web = approval_web
    request = request_unblinding(web, randomized(web))
    with_password(web, "project_manager")
    manager = web.as_role("project_manager")
    manager.get(f"/approvals/{request}")
    key = keys(manager.last_page)[0]
    for attempt in range(3):
        answer = manager.post(f"/approvals/{request}/decision", {
            "idempotency_key": key, "decision": "approve", "password": f"wrong {attempt} pw!"})
        assert answer.status_code == 403
    assert user_row(web, "project_manager").locked
    assert visible_approvals(web.db, actor=ADMIN)[0].status == PENDING
    assert len(audit_rows(web, "signature_failed")) == 3
    # The lock takes effect at the next page: the session ends.
    assert manager.get("/approvals").status_code == 302


def test_a_rejection_needs_a_reason_and_is_signed_with_its_meaning(approval_web):
    web = approval_web
    number = randomized(web)
    request = request_unblinding(web, number)
    with_password(web, "project_manager")
    manager = web.as_role("project_manager")
    form = manager.text(manager.get(f"/approvals/{request}"))
    reject_key = keys(form)[1]
    fields = {"idempotency_key": reject_key, "decision": "reject", "password": PASSWORD}
    no_reason = manager.post(f"/approvals/{request}/decision", fields)
    assert no_reason.status_code == 409
    assert visible_approvals(web.db, actor=ADMIN)[0].status == PENDING
    done = manager.post(f"/approvals/{request}/decision", {**fields, "reason": "not urgent"})
    assert done.status_code == 200 and f"Request {request} is rejected" in manager.text(done)
    (row,) = audit_rows(web, "approval_rejected")
    assert row.new["signature"]["meaning"] == (
        f"I reject request {request}: emergency unblinding of subject {number} "
        "(a medical emergency).")
    assert visible_approvals(web.db, actor=ADMIN, status=None)[0].status == REJECTED
    assert unblindings(web)[0].status == "rejected"


def test_a_decision_without_its_csrf_token_is_refused(approval_web):
    web = approval_web
    request = request_unblinding(web, randomized(web))
    with_password(web, "project_manager")
    manager = web.as_role("project_manager")
    manager.get(f"/approvals/{request}")
    answer = manager.post(f"/approvals/{request}/decision", {
        "idempotency_key": keys(manager.last_page)[0], "decision": "approve",
        "password": PASSWORD}, csrf=False)
    assert answer.status_code == 400
    assert visible_approvals(web.db, actor=ADMIN)[0].status == PENDING


def test_who_sees_a_request_and_who_may_decide_it(approval_web):
    web = approval_web
    number = randomized(web)
    request = request_unblinding(web, number)
    for role, sees, decides in [("project_manager", True, True),
                                ("unblinded_statistician", True, False),
                                ("admin", True, False), ("site_coordinator", True, False),
                                ("investigator", True, False), ("pharmacist", False, False),
                                ("investigator_102", False, False)]:
        browser = web.as_role(role)
        listing = browser.text(browser.get("/approvals"))
        assert (request in listing) == sees, role
        detail = browser.get(f"/approvals/{request}")
        assert detail.status_code == (200 if sees else 404), role
        assert ('name="password"' in browser.text(detail)) == decides, role
        if role not in UNBLINDED_ROLES:
            assert_blind(listing, f"/approvals as {role}")
            assert_blind(browser.text(detail), f"/approvals/{request} as {role}")
    # The requester may not decide their own request, even by posting the form.
    investigator = web.as_role("investigator")
    investigator.get(f"/approvals/{request}")
    refused = investigator.post(f"/approvals/{request}/decision", {
        "idempotency_key": "f" * 32, "decision": "approve", "password": PASSWORD})
    assert refused.status_code == 403
    assert visible_approvals(web.db, actor=ADMIN)[0].status == PENDING
    assert audit_rows(web, "approval_approved") == []
    # A pending request: the form says so instead of asking again.
    form = investigator.text(investigator.get(f"/subjects/{number}/unblind"))
    assert f"Unblinding request {request} for this subject is awaiting a decision." in form
    assert 'name="password"' not in form


# --- reports -----------------------------------------------------------------------------------


def _download_sites(web, role: str) -> dict:
    """The site a role names for a report with a site filter (one of several only)."""
    sites = web.web_user(USERS[role]).site_codes
    return {"site": sites[0]} if len(sites) > 1 else {}


@pytest.mark.parametrize("role", sorted(USERS))
def test_each_role_downloads_its_reports_in_every_format(web, role):
    number = randomized(web)
    randomized(web, site="102", user="5005")
    with_password(web, "investigator")
    browser = web.as_role("investigator")
    browser.get(f"/subjects/{number}/unblind")
    browser.post(f"/subjects/{number}/unblind", {
        "idempotency_key": keys(browser.last_page)[0], "step": "reveal",
        "reason": "other", "confirm": "yes", "password": PASSWORD})
    actor = web.web_user(USERS[role]).actor
    browser = web.as_role(role)
    listing = browser.text(browser.get("/reports"))
    names = readable_reports(actor)
    assert names, role
    for name in SPECS:
        assert (f"/reports/{name}/download" in listing) == (name in names), (role, name)
    if actor.blinded:
        assert_blind(listing, f"/reports as {role}")
    for name in names:
        query = _download_sites(web, role) if "site" in SPECS[name].filters else {}
        for fmt in ("csv", "xlsx", "pdf"):
            answer = browser.get(f"/reports/{name}/download", query_string={**query,
                                                                           "format": fmt})
            assert answer.status_code == 200, (role, name, fmt, answer.status_code)
            assert answer.headers["Content-Disposition"] == f"attachment; filename={name}.{fmt}"
            data = answer.get_data()
            assert data, (role, name, fmt)
            if actor.blinded:
                assert_blind_file(fmt, data, f"{name}.{fmt} as {role}")
    views = [row for row in audit_rows(web, "unblinded_view")
             if row.actor == f"user:{USERS[role]}"]
    assert len(views) == (3 * len(names) if not actor.blinded else 0)


@pytest.mark.parametrize(("role", "path", "status"), [
    ("depot_manager", "/reports/subjects/download?format=csv", 403),
    ("site_coordinator", "/reports/audit/download?format=pdf", 403),
    ("site_coordinator", "/reports/subjects/download?format=csv&site=102", 403),
    ("investigator_102", "/reports/subjects/download?format=xlsx", 409),  # which site?
    ("project_manager", "/reports/nothing/download?format=csv", 404),
    ("project_manager", "/reports/subjects/download?format=doc", 404),
    ("project_manager", "/reports/depot-inventory/download?format=csv&site=101", 422),
    ("project_manager", "/reports/subjects/download?format=csv&start=someday", 422),
])
def test_a_report_a_role_may_not_read_is_refused(web, role, path, status):
    answer = web.as_role(role).get(path)
    assert answer.status_code == status and answer.mimetype == "text/html"


def test_a_site_filter_limits_the_download(web):
    ours, theirs = randomized(web), randomized(web, site="102", user="5005")
    answer = web.as_role("project_manager").get("/reports/subjects/download?format=csv&site=101")
    content = answer.get_data(as_text=True)
    assert ours in content and theirs not in content
    coordinator = web.as_role("site_coordinator").get("/reports/subjects/download?format=csv")
    assert theirs not in coordinator.get_data(as_text=True)


# --- the audit trail ---------------------------------------------------------------------------


def test_the_audit_trail_pages_newest_first_blinded_for_blinded_roles(web):
    coordinator = web.web_user("5001").actor
    for _ in range(50):  # more than a page before the randomization
        screen_subject(web.db, site_code="101", actor=coordinator)
    number = randomized(web)
    manager = web.as_role("project_manager")
    page = html.unescape(manager.text(manager.get("/audit")))
    assert "subject_randomized" in page and '"arm":"(blinded)"' in page
    assert_blind(page, "/audit")
    next_page = re.search(r'href="(/audit\?before=\d+[^"]*)"', page)
    assert next_page is not None
    older = manager.text(manager.get(next_page.group(1)))
    assert "subject_randomized" not in older
    assert_blind(older, "/audit, older")
    filtered = manager.text(manager.get(f"/audit?entity_type=subject&entity_id={number}"))
    assert "subject_screened" in filtered and "kit_imported" not in filtered
    by_actor = manager.text(manager.get("/audit?by=user:5001"))
    assert "subject_screened" in by_actor and "study_loaded" not in by_actor
    statistician = web.as_role("unblinded_statistician")
    unblinded = html.unescape(statistician.text(statistician.get(f"/audit?entity_id={number}")))
    assert '"arm":"(blinded)"' not in unblinded and re.search(r'"arm":"[AP]"', unblinded)
    assert manager.get("/audit?start=yesterday").status_code == 422


def test_the_chain_is_verified_intact_then_broken_after_tampering(web):
    randomized(web)
    manager = web.as_role("project_manager")
    intact = manager.post("/audit/verify", form_page="/audit")
    assert intact.status_code == 200 and "The audit chain is intact." in manager.text(intact)
    with web.db.engine.begin() as connection:
        for statement in append_only.drop_statements(web.db.engine.dialect.name):
            connection.execute(text(statement))
        connection.execute(text("UPDATE audit_events SET actor = 'someone else' WHERE seq = 5"))
    broken = manager.post("/audit/verify", form_page="/audit")
    page = manager.text(broken)
    assert broken.status_code == 200 and "The audit chain is broken at row 5" in page
    assert "The content of this row was altered" in page
    assert manager.post("/audit/verify", csrf=False).status_code == 400
    coordinator = web.as_role("site_coordinator")
    coordinator.get("/subjects")
    assert coordinator.post("/audit/verify").status_code == 403


# --- the blinding scan -------------------------------------------------------------------------


def test_no_page_of_a_blinded_role_shows_an_arm(approval_web):
    web = approval_web
    number = randomized(web)
    randomized(web, site="102", user="5005")
    request = request_unblinding(web, number)
    with web.db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Subject)) == 2
    for role in sorted(USERS):
        if web.web_user(USERS[role]).role in UNBLINDED_ROLES:
            continue
        browser = web.as_role(role)
        paths = ["/approvals", "/approvals?status=all", f"/approvals/{request}", "/reports",
                 "/audit", f"/audit?entity_id={number}", f"/subjects/{number}/unblind",
                 f"/subjects/{number}"]
        for path in paths:
            answer = browser.get(path)
            if answer.status_code < 300:
                assert_blind(browser.text(answer), f"{path} as {role}")
        if web.web_user(USERS[role]).role in AUDIT_READERS:
            _scan_every_audit_page(browser, role)


def _scan_every_audit_page(browser, role: str) -> None:
    path = "/audit"
    while path:
        page = browser.text(browser.get(path))
        assert_blind(page, f"{path} as {role}")
        found = re.search(r'href="(/audit\?before=\d+[^"]*)"', page)
        path = html.unescape(found.group(1)) if found else None


def test_the_scan_finds_what_the_unblinded_see(web):
    """The scan itself: it finds the arm where an unblinded reader is shown it."""
    number = randomized(web)
    statistician = web.as_role("unblinded_statistician")
    with pytest.raises(AssertionError):
        assert_blind(statistician.text(statistician.get(f"/subjects/{number}")), "page")
    for fmt in ("csv", "xlsx", "pdf"):
        data = statistician.get(f"/reports/subjects/download?format={fmt}").get_data()
        with pytest.raises(AssertionError):
            assert_blind_file(fmt, data, fmt)
