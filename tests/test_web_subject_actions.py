"""The site roles' actions on subjects in the console (SPEC §11): screen,
randomize, dispense, replace a kit, screen failure and discontinuation.

Each action end to end through the forms a browser gets (the hidden fields
read from the page, as a browser would send them), the data checked through
the core's reads; every role and the other site refused with data unchanged;
a double submit acting once; the phone's refusals in its words; the blinding
scan of every page of the flows; and the same subject seen by the API and by
the phone.
"""

from __future__ import annotations

import html
import re
import uuid
from datetime import date, timedelta
from html.parser import HTMLParser

import pytest
from api_support import STUDY, ApiClient, stock
from sqlalchemy import func, select
from studyfiles import MRL_CSV, STUDY_YAML, snapshot
from web_support import USERS, Web, make_web

from core import clock, records
from core.actors import ADMIN
from core.api_clients import add_client
from core.eligibility import record_eligibility
from core.models import AuditEvent, Kit, Notification, Randomization
from core.mrl import import_mrl
from core.randomize import randomize
from core.study_loader import load_study
from core.subjects import screen_subject
from ivrs.app import create_app
from ivrs.config import Settings
from ivrs.conversations.sessions import MemorySessionStore
from ivrs.web import access

FACTORS = {"SEX": "F", "AGE": "LT65"}
YES = {"INC1": True, "INC2": True, "EXC1": True}
# Written out from SPEC §4/§6 (not taken from the code under test): who may do what.
ENROLLING = {"site_coordinator", "investigator", "investigator_102"}
DISPENSING = ENROLLING | {"pharmacist"}
ACTION_ROLES = {"randomize": ENROLLING, "status": ENROLLING, "dispense": DISPENSING,
                "replace": DISPENSING}
# The site each example user acts at (tests/data/study.yaml); the others read every site.
OWN_SITE = {"site_coordinator": "101", "investigator": "101", "pharmacist": "102",
            "investigator_102": "102"}
OTHER_SITE = {"101": "102", "102": "101"}
# What a blinded reader must never see: arm codes and names, kit types, lots.
UNBLINDED_TOKENS = re.compile(r"\b(A|P|KA|KP|LA1|LP1)\b|Drug 10 mg|Placebo")


# --- reading forms as a browser does ---------------------------------------------------------


class _Forms(HTMLParser):
    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self._form: dict | None = None
        self._select: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "form":
            self._form = {"action": attributes.get("action"),
                          "method": attributes.get("method", "get"), "hidden": {}, "radios": {},
                          "selects": {}}
            self.forms.append(self._form)
        elif self._form is None:
            return
        elif tag == "input" and attributes.get("type") == "hidden":
            self._form["hidden"][attributes["name"]] = attributes.get("value", "")
        elif tag == "input" and attributes.get("type") == "radio":
            self._form["radios"].setdefault(attributes["name"], []).append(attributes["value"])
        elif tag == "select":
            self._select = attributes["name"]
            self._form["selects"][self._select] = []
        elif tag == "option" and self._select and attributes.get("value"):
            self._form["selects"][self._select].append(attributes["value"])

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None


def form_of(page: str, action: str) -> dict | None:
    """The page's POST form to ``action`` (the list's filters GET the same path)."""
    parser = _Forms()
    parser.feed(page)
    return next((form for form in parser.forms
                 if form["action"] == action and form["method"] == "post"), None)


def words_of(page: str) -> str:
    """What a reader sees: the text without its tags, spaces collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page))).strip()


def assert_blinded(page: str) -> None:
    found = UNBLINDED_TOKENS.search(page)
    assert found is None, f"blinded page shows {found.group(0)!r}"


# --- the study's subjects, made through the core -----------------------------------------------


def actor_of(web: Web, user_code: str):
    return web.web_user(user_code).actor


def screened(web: Web, site: str = "101") -> str:
    user = "5001" if site == "101" else "5005"
    return screen_subject(web.db, site_code=site, actor=actor_of(web, user)).subject_number


def randomized(web: Web, site: str = "101") -> str:
    number = screened(web, site)
    user = "5001" if site == "101" else "5005"
    randomize(web.db, subject_number=number, actor=actor_of(web, user), eligibility=YES,
              factors=FACTORS)
    return number


def record(web: Web, number: str):
    return records.subject_record(web.db, subject_number=number, actor=ADMIN)


def kits_of(web: Web, number: str) -> list[str]:
    return [kit.kit_number for kit in record(web, number).kits]


def count(web: Web, what) -> int:
    with web.db.sessions() as session:
        return session.execute(select(func.count()).select_from(what)).scalar_one()


# --- the flows, as a browser walks them ---------------------------------------------------------


def screen_on_web(browser, site: str):
    browser.get("/subjects")
    form = form_of(browser.last_page, "/subjects")
    assert form is not None and site in form["selects"]["site"]
    return browser.post("/subjects", {**form["hidden"], "site": site})


def number_in(answer) -> str:
    return re.search(r"The new subject number is (\d{7})", words_of(answer.get_data(True)))[1]


def randomize_on_web(browser, number: str, answers: dict | None = None,
                     levels: dict | None = None):
    """The questions, then the summary: returns (summary answer, confirm answer)."""
    path = f"/subjects/{number}/randomize"
    questions = browser.get(path)
    assert questions.status_code == 200, browser.text(questions)
    form = form_of(browser.last_page, path)
    given = answers if answers is not None else {q: "yes" for q in YES}
    data = {**form["hidden"], **{f"eligibility.{q}": a for q, a in given.items()},
            **{f"factor.{f}": level for f, level in (levels or FACTORS).items()}}
    summary = browser.post(path, data)
    if summary.status_code != 200:
        return summary, None
    confirm = form_of(browser.last_page, path)
    return summary, browser.post(path, confirm["hidden"])


def submit_form(browser, path: str, **choices):
    """Open the action's page and send its form with ``choices``."""
    page = browser.get(path)
    assert page.status_code == 200, browser.text(page)
    form = form_of(browser.last_page, path)
    assert form is not None, words_of(browser.last_page)
    return browser.post(path, {**form["hidden"], **choices})


# --- screen ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["site_coordinator", "investigator"])
def test_a_site_role_screens_a_subject_at_its_site(web, role):
    browser = web.as_role(role)
    answer = screen_on_web(browser, "101")
    assert answer.status_code == 200
    text = words_of(browser.text(answer))
    number = number_in(answer)
    assert number.startswith("101")
    assert re.search(r"Confirmation number \d+", text)
    assert f'href="/subjects/{number}"' in browser.text(answer)
    assert record(web, number).status == "screened"
    assert record(web, number).history[0].by == f"user:{USERS[role]}"


@pytest.mark.parametrize("role", sorted(USERS))
def test_only_the_enrolling_roles_get_the_screening_form_and_may_screen(web, role):
    browser = web.as_role(role)
    listing = browser.get("/subjects")
    site = OWN_SITE.get(role, "101")
    form = form_of(browser.last_page, "/subjects")
    if role in ENROLLING:
        assert form is not None and form["selects"]["site"] == (
            ["102", "103"] if role == "investigator_102" else ["101"])
        return
    assert form is None or listing.status_code == 403
    before = snapshot(web.db)
    answer = browser.post("/subjects", {"site": site, "idempotency_key": str(uuid.uuid4())},
                          form_page="/")
    assert answer.status_code == 403
    assert snapshot(web.db) == before


def test_screening_at_another_site_is_refused_by_the_core(web):
    browser = web.as_role("site_coordinator")
    browser.get("/subjects")
    before = snapshot(web.db)
    answer = browser.post("/subjects", {"site": "102", "idempotency_key": str(uuid.uuid4())})
    assert answer.status_code == 403
    assert "That is not one of your sites." in browser.text(answer)
    assert form_of(browser.last_page, "/subjects") is not None  # the form, drawn again
    assert snapshot(web.db) == before


def test_a_double_submitted_screening_screens_once(web):
    browser = web.as_role("site_coordinator")
    browser.get("/subjects")
    form = form_of(browser.last_page, "/subjects")
    first = browser.post("/subjects", {**form["hidden"], "site": "101"})
    again = browser.post("/subjects", {**form["hidden"], "site": "101"})
    assert first.status_code == again.status_code == 200
    assert words_of(browser.text(first)) == words_of(browser.text(again))
    assert len(records.subjects_page(web.db, actor=ADMIN).items) == 1


# --- randomize ------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["site_coordinator", "investigator"])
def test_randomize_end_to_end_shows_number_and_kit_never_the_arm(web, role):
    browser = web.as_role(role)
    number = number_in(screen_on_web(browser, "101"))
    detail = browser.get(f"/subjects/{number}")
    assert f'href="/subjects/{number}/randomize"' in browser.text(detail)
    summary, done = randomize_on_web(browser, number)
    summary_text = words_of(browser.text(summary))
    assert "Sex female" in summary_text and "Age under 65" in summary_text
    assert done.status_code == 200
    text = words_of(browser.text(done))
    after = record(web, number)
    assert after.status == "randomized"
    (entry,) = after.randomizations
    (kit,) = after.kits
    assert f"Randomization number {entry.randomization_number}" in text
    assert f"Kits to give for visit 1 {kit.kit_number}" in text
    assert re.search(r"Confirmation number \d+", text)
    assert kit.status == "assigned" and kit.visit == "V1"
    with web.db.sessions() as session:
        stored = session.execute(select(Randomization)).scalar_one()
        assert stored.factors == FACTORS and stored.eligibility == YES
        assert stored.randomized_by == f"user:{USERS[role]}"


def test_the_kit_assignment_asks_the_user_for_an_sms_confirmation(web):
    """As on the phone (and unlike an API client, which has no phone): the core
    queues the SMS asking the user who was given the kits to confirm them."""
    browser = web.as_role("site_coordinator")
    number = number_in(screen_on_web(browser, "101"))
    _, done = randomize_on_web(browser, number)
    assert "reply KIT" in browser.text(done)
    (kit,) = kits_of(web, number)
    with web.db.sessions() as session:
        (note,) = session.scalars(select(Notification).where(
            Notification.kind == "kit_confirmation")).all()
        assert (note.key, note.audience, note.message_id) == (
            f"kit_confirm:{kit}", "user:5001", "sms.kit_confirm_request")


def test_a_double_submitted_randomization_randomizes_once(web):
    browser = web.as_role("site_coordinator")
    number = screened(web)
    path = f"/subjects/{number}/randomize"
    summary, first = randomize_on_web(browser, number)
    confirm = form_of(browser.text(summary), path)
    again = browser.post(path, confirm["hidden"])
    assert first.status_code == again.status_code == 200
    assert words_of(browser.text(first)) == words_of(browser.text(again))
    assert count(web, Randomization) == 1 and len(kits_of(web, number)) == 1


def test_a_no_is_recorded_as_the_phone_records_it_and_shown_as_a_refusal(web):
    browser = web.as_role("investigator")
    number = screened(web)
    path = f"/subjects/{number}/randomize"
    browser.get(path)
    answers = {**form_of(browser.last_page, path)["hidden"], "eligibility.INC1": "yes",
               "eligibility.INC2": "no", "eligibility.EXC1": "yes", "factor.SEX": "F",
               "factor.AGE": "LT65"}
    kits_before = snapshot(web.db)["kits"]
    refused = browser.post(path, answers)
    assert refused.status_code == 409
    assert f"Subject {number} is not eligible. This is recorded; the subject is not " \
        "randomized." in words_of(browser.text(refused))
    assert form_of(browser.text(refused), path) is None  # nothing more to answer
    assert record(web, number).status == "screened" and count(web, Randomization) == 0
    with web.db.sessions() as session:
        refusal = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "randomization_refused")).one()
        # The phone stops at the first "no": the answers up to it, no factor.
        assert refusal.new["eligibility"] == {"INC1": True, "INC2": False}
    assert snapshot(web.db)["kits"] == kits_before
    again = browser.post(path, answers)  # a reload: the same refusal, recorded once
    assert again.status_code == 409 and words_of(browser.text(again)) == words_of(
        browser.text(refused))
    with web.db.sessions() as session:
        assert session.execute(select(func.count()).where(
            AuditEvent.action == "randomization_refused")).scalar_one() == 1


def test_unanswered_questions_draw_the_form_again(web):
    browser = web.as_role("site_coordinator")
    number = screened(web)
    before = snapshot(web.db)
    summary, _ = randomize_on_web(browser, number, answers={"INC1": "yes"})
    assert summary.status_code == 422
    assert "Answer every eligibility question" in browser.text(summary)
    assert form_of(browser.text(summary), f"/subjects/{number}/randomize") is not None
    summary, _ = randomize_on_web(browser, number, levels={"SEX": "X", "AGE": "LT65"})
    assert summary.status_code == 422
    assert snapshot(web.db) == before


def test_randomizing_a_randomized_subject_is_refused_in_the_phone_s_words(web):
    browser = web.as_role("site_coordinator")
    number = randomized(web)
    detail = browser.text(browser.get(f"/subjects/{number}"))
    assert f"/subjects/{number}/randomize" not in detail
    page = browser.get(f"/subjects/{number}/randomize")
    assert page.status_code == 409
    assert "This subject is already randomized." in browser.text(page)
    before = snapshot(web.db)
    # The confirmation sent directly (a summary drawn before someone else randomized).
    answer = browser.post(f"/subjects/{number}/randomize", {
        "idempotency_key": str(uuid.uuid4()), "step": "confirm",
        **{f"eligibility.{q}": "yes" for q in YES},
        **{f"factor.{f}": level for f, level in FACTORS.items()}}, form_page="/subjects")
    assert answer.status_code == 409
    assert "already randomized" in browser.text(answer)
    assert snapshot(web.db) == before


def test_randomizing_a_screen_failure_is_refused(web):
    browser = web.as_role("site_coordinator")
    number = screened(web)
    submit_form(browser, f"/subjects/{number}/status", reason="not_eligible")
    page = browser.get(f"/subjects/{number}/randomize")
    assert page.status_code == 409
    assert "This subject is a screen failure." in browser.text(page)


@pytest.fixture
def scarce(db, tmp_path):
    """The example study with one kit of each type at site 101 and none at 102."""
    load_study(db, STUDY_YAML)
    import_mrl(db, MRL_CSV, study_code=STUDY)
    stock(db, tmp_path / "kits.csv", sites=("101", "90"), per_type=1)
    store = MemorySessionStore()
    return Web(db, create_app(Settings(database_url="unused"), db=db, store=store), store)


def test_no_stock_at_the_site_refuses_randomization_in_the_phone_s_words(scarce):
    browser = scarce.as_role("investigator_102")
    number = screened(scarce, "102")
    _, done = randomize_on_web(browser, number)
    assert done.status_code == 409
    text = browser.text(done)
    assert "Your site does not have enough kits to randomize. An urgent shipment is " \
        "requested." in text
    assert_blinded(text)
    assert record(scarce, number).status == "screened" and count(scarce, Randomization) == 0


def test_eligibility_from_the_edc_is_not_asked(db, tmp_path):
    web = make_web(db, tmp_path, ("  method: list\n",
                                  "  method: list\n  eligibility_source: edc\n"))
    browser = web.as_role("site_coordinator")
    number = screened(web)
    record_eligibility(web.db, subject_number=number, answers=YES, actor=ADMIN)
    page = browser.get(f"/subjects/{number}/randomize")
    form = form_of(browser.last_page, f"/subjects/{number}/randomize")
    assert not [name for name in form["radios"] if name.startswith("eligibility.")]
    assert "Eligibility is recorded in the EDC" in browser.text(page)
    _, done = randomize_on_web(browser, number, answers={})
    assert done.status_code == 200 and record(web, number).status == "randomized"
    other = screened(web)
    record_eligibility(web.db, subject_number=other, answers={**YES, "INC2": False},
                       actor=ADMIN)
    refused = browser.get(f"/subjects/{other}/randomize")
    assert refused.status_code == 409
    assert "According to the eligibility recorded in the EDC" in browser.text(refused)


# --- dispense and replace --------------------------------------------------------------------------


def test_the_pharmacist_dispenses_the_visit_due_at_its_site(web, monkeypatch):
    number = randomized(web, "102")
    monkeypatch.setenv("IVRS_TODAY", str(clock.today() + timedelta(days=28)))
    browser = web.as_role("pharmacist")
    detail = browser.text(browser.get(f"/subjects/{number}"))
    assert f"/subjects/{number}/dispense" in detail
    path = f"/subjects/{number}/dispense"
    page = browser.get(path)
    assert "Visit due now visit 2 Kits to dispense 2" in words_of(browser.text(page))
    form = form_of(browser.last_page, path)
    first = browser.post(path, form["hidden"])
    assert first.status_code == 200
    v2 = [kit.kit_number for kit in record(web, number).kits if kit.visit == "V2"]
    assert len(v2) == 2
    assert all(kit in browser.text(first) for kit in v2)
    assert next(v for v in record(web, number).visits if v.code == "V2").status == "done"
    again = browser.post(path, form["hidden"])  # a double submit: the same kits, once
    assert again.status_code == 200 and all(kit in browser.text(again) for kit in v2)
    assert len(kits_of(web, number)) == 3


def test_dispensing_early_says_so_and_records_it(web):
    number = randomized(web)
    browser = web.as_role("site_coordinator")
    page = browser.get(f"/subjects/{number}/dispense")
    assert "Today is before the window of visit 2" in browser.text(page)
    answer = submit_form(browser, f"/subjects/{number}/dispense")
    assert answer.status_code == 200
    assert "Recorded out of window" in browser.text(answer)


def test_no_stock_refuses_dispensing_and_changes_nothing(scarce):
    number = randomized(scarce)  # took the only kit of its type
    browser = scarce.as_role("site_coordinator")
    browser.get(f"/subjects/{number}/dispense")
    form = form_of(browser.last_page, f"/subjects/{number}/dispense")
    before = snapshot(scarce.db)
    answer = browser.post(f"/subjects/{number}/dispense", form["hidden"])
    assert answer.status_code == 409
    assert "Your site does not have enough kits for this visit." in browser.text(answer)
    assert_blinded(browser.text(answer))
    assert snapshot(scarce.db) == before


def test_dispensing_a_visit_no_longer_due_is_refused(web, monkeypatch):
    number = randomized(web)
    browser = web.as_role("site_coordinator")
    browser.get(f"/subjects/{number}/dispense")
    form = form_of(browser.last_page, f"/subjects/{number}/dispense")
    monkeypatch.setenv("IVRS_TODAY", str(clock.today() + timedelta(days=56)))  # V2 missed
    # The page was drawn 56 days ago: a browser signed in today sends it.
    browser = web.as_role("site_coordinator")
    before = snapshot(web.db)
    answer = browser.post(f"/subjects/{number}/dispense",
                          {**form["hidden"], "csrf_token": browser.token("/subjects")})
    assert answer.status_code == 409
    assert snapshot(web.db) == before


def test_the_investigator_replaces_a_damaged_kit(web):
    number = randomized(web)
    (old,) = kits_of(web, number)
    browser = web.as_role("investigator")
    path = f"/subjects/{number}/replace"
    browser.get(path)
    form = form_of(browser.last_page, path)
    assert form["radios"] == {"kit": [old], "reason": ["lost", "damaged"]}
    first = browser.post(path, {**form["hidden"], "kit": old, "reason": "damaged"})
    assert first.status_code == 200
    kits = {kit.kit_number: kit for kit in record(web, number).kits}
    (new,) = [n for n in kits if n != old]
    assert kits[old].status == "damaged" and kits[new].status == "assigned"
    assert kits[new].visit == "V1"
    text = words_of(browser.text(first))
    assert f"Kit {old} is replaced." in text and new in text and "a damaged kit" in text
    again = browser.post(path, {**form["hidden"], "kit": old, "reason": "damaged"})
    assert again.status_code == 200 and new in browser.text(again)
    assert len(kits_of(web, number)) == 2


def test_replacing_a_kit_not_the_subject_s_is_refused(web):
    number, other = randomized(web), randomized(web)
    (foreign,) = kits_of(web, other)
    browser = web.as_role("site_coordinator")
    browser.get(f"/subjects/{number}/replace")
    form = form_of(browser.last_page, f"/subjects/{number}/replace")
    before = snapshot(web.db)
    answer = browser.post(f"/subjects/{number}/replace",
                          {**form["hidden"], "kit": foreign, "reason": "lost"})
    assert answer.status_code == 409
    assert "That kit is not one of this subject's kits." in words_of(browser.text(answer))
    answer = browser.post(f"/subjects/{number}/replace", {**form["hidden"], "kit": foreign})
    assert answer.status_code == 422
    assert snapshot(web.db) == before


# --- screen failure and discontinuation ------------------------------------------------------------


def test_screen_failure_with_the_phone_s_reasons(web):
    number = screened(web)
    browser = web.as_role("site_coordinator")
    path = f"/subjects/{number}/status"
    browser.get(path)
    form = form_of(browser.last_page, path)
    assert form["radios"]["reason"] == ["not_eligible", "consent_withdrawn", "other"]
    answer = browser.post(path, {**form["hidden"], "reason": "consent_withdrawn"})
    assert answer.status_code == 200
    assert f"Screen failure of subject {number} recorded." in browser.text(answer)
    after = record(web, number)
    assert after.status == "screen_failed" and after.history[-1].reason == "consent_withdrawn"
    again = browser.post(path, {**form["hidden"], "reason": "consent_withdrawn"})
    assert again.status_code == 200 and len(record(web, number).history) == 2


def test_discontinuation_of_a_randomized_subject(web):
    number = randomized(web)
    browser = web.as_role("investigator")
    answer = submit_form(browser, f"/subjects/{number}/status", reason="adverse_event")
    assert answer.status_code == 200
    assert f"Discontinuation of subject {number} recorded." in browser.text(answer)
    assert record(web, number).status == "discontinued"
    detail = browser.text(browser.get(f"/subjects/{number}"))
    assert not re.search(rf"/subjects/{number}/(randomize|dispense|replace|status)", detail)


def test_a_status_change_the_subject_no_longer_takes_is_refused(web):
    number = screened(web)
    browser = web.as_role("site_coordinator")
    browser.get(f"/subjects/{number}/status")
    form = form_of(browser.last_page, f"/subjects/{number}/status")
    randomize(web.db, subject_number=number, actor=actor_of(web, "5002"), eligibility=YES,
              factors=FACTORS)  # meanwhile, someone randomized the subject
    before = snapshot(web.db)
    answer = browser.post(f"/subjects/{number}/status",
                          {**form["hidden"], "reason": "not_eligible"})
    assert answer.status_code == 409
    assert "This subject is already randomized." in browser.text(answer)
    answer = browser.post(f"/subjects/{number}/status", {**form["hidden"], "reason": ""})
    assert answer.status_code == 422
    assert snapshot(web.db) == before


# --- who may: every role, own and other site ------------------------------------------------------


ACTION_LINK = re.compile(r'href="/subjects/\d+/(randomize|status|dispense|replace)"')


@pytest.mark.parametrize("role", sorted(USERS))
def test_the_subject_page_links_only_the_actions_the_reader_may_take(web, role):
    site = OWN_SITE.get(role, "101")
    links = {}
    for state, make in (("screened", screened), ("randomized", randomized)):
        number = make(web, site)
        page = web.as_role(role).get(f"/subjects/{number}")
        links[state] = set(ACTION_LINK.findall(page.get_data(as_text=True)))
    expected_screened = {"randomize", "status"} if role in ENROLLING else set()
    expected_randomized = ({"dispense", "replace"} if role in DISPENSING else set()) | (
        {"status"} if role in ENROLLING else set())
    assert links == {"screened": expected_screened, "randomized": expected_randomized}



@pytest.fixture
def cohort(web):
    """A screened and a randomized subject at sites 101 and 102."""
    return {(state, site): (screened if state == "screened" else randomized)(web, site)
            for state in ("screened", "randomized") for site in ("101", "102")}


STATE_FOR = {"randomize": "screened", "status": "screened", "dispense": "randomized",
             "replace": "randomized"}


@pytest.mark.parametrize("action", sorted(ACTION_ROLES))
@pytest.mark.parametrize("role", sorted(USERS))
def test_every_role_and_site_opens_only_what_it_may(web, cohort, role, action):
    browser = web.as_role(role)
    site = OWN_SITE.get(role, "101")
    own = cohort[(STATE_FOR[action], site)]
    other = cohort[(STATE_FOR[action], OTHER_SITE[site])]
    allowed = role in ACTION_ROLES[action]
    assert browser.get(f"/subjects/{own}/{action}").status_code == (200 if allowed else 403)
    other_page = browser.get(f"/subjects/{other}/{action}")
    assert other_page.status_code == 403
    if allowed:
        assert "That is not one of your sites." in browser.text(other_page)


def _post_for(web, action: str, number: str) -> dict:
    """A complete form for ``action`` (as the allowed roles get it)."""
    data = {"idempotency_key": str(uuid.uuid4())}
    if action == "randomize":
        data |= {"step": "confirm", **{f"eligibility.{q}": "yes" for q in YES},
                 **{f"factor.{f}": level for f, level in FACTORS.items()}}
    elif action == "status":
        data |= {"kind": "screen_failure", "reason": "other"}
    elif action == "replace":
        data |= {"kit": kits_of(web, number)[0], "reason": "lost"}
    return data


@pytest.mark.parametrize("action", sorted(ACTION_ROLES))
@pytest.mark.parametrize("role", sorted(USERS))
def test_a_direct_post_by_a_role_or_for_a_site_it_may_not_act_at_changes_nothing(
        web, cohort, role, action):
    browser = web.as_role(role)
    site = OWN_SITE.get(role, "101")
    targets = [cohort[(STATE_FOR[action], OTHER_SITE[site])]]
    if role not in ACTION_ROLES[action]:
        targets.append(cohort[(STATE_FOR[action], site)])
    browser.get("/")
    for number in targets:
        before = snapshot(web.db)
        answer = browser.post(f"/subjects/{number}/{action}", _post_for(web, action, number))
        assert answer.status_code == 403, (number, browser.text(answer))
        assert snapshot(web.db) == before


@pytest.mark.parametrize("role", ["pharmacist", "project_manager", "unblinded_statistician"])
def test_the_core_refuses_a_role_even_past_the_console_s_table(web, cohort, role, monkeypatch):
    """The table only saves a half-drawn form: opened to every role, the core
    still refuses, in its words."""
    monkeypatch.setitem(access.BEHIND, "web.randomize", frozenset(access.ROLES))
    number = cohort[("screened", "102")]
    browser = web.as_role(role)
    browser.get("/")
    before = snapshot(web.db)
    answer = browser.post(f"/subjects/{number}/randomize", _post_for(web, "randomize", number))
    assert answer.status_code == 403
    assert "Your role may not do this." in browser.text(answer)
    assert snapshot(web.db) == before


@pytest.mark.parametrize("action", ["", *sorted(ACTION_ROLES)])
def test_a_post_without_its_csrf_token_or_its_key_changes_nothing(web, cohort, action):
    browser = web.as_role("site_coordinator")
    number = cohort[(STATE_FOR.get(action, "screened"), "101")]
    path = f"/subjects/{number}/{action}" if action else "/subjects"
    data = _post_for(web, action, number) if action else {
        "site": "101", "idempotency_key": str(uuid.uuid4())}
    browser.get("/subjects")
    before = snapshot(web.db)
    assert browser.post(path, data, csrf=False).status_code == 400
    del data["idempotency_key"]
    assert browser.post(path, data).status_code == 400
    assert snapshot(web.db) == before


# --- blinding: every page of every flow ---------------------------------------------------------


def test_no_page_of_the_flows_shows_an_arm_kit_type_or_lot(web, monkeypatch):
    pages: list[str] = []

    def seen(answer):
        assert answer.status_code in (200, 409), answer.status_code
        pages.append(answer.get_data(as_text=True))
        return answer

    browser = web.as_role("site_coordinator")
    seen(browser.get("/subjects"))
    number = number_in(seen(screen_on_web(browser, "101")))
    seen(browser.get(f"/subjects/{number}"))
    summary, done = randomize_on_web(browser, number)
    seen(summary), seen(done)
    seen(browser.get(f"/subjects/{number}"))
    seen(browser.get(f"/subjects/{number}/replace"))
    (kit,) = kits_of(web, number)
    seen(submit_form(browser, f"/subjects/{number}/replace", kit=kit, reason="lost"))
    monkeypatch.setenv("IVRS_TODAY", str(clock.today() + timedelta(days=28)))
    pharmacist = web.as_role("pharmacist")
    other = randomized(web, "102")
    seen(pharmacist.get(f"/subjects/{other}/dispense"))
    seen(submit_form(pharmacist, f"/subjects/{other}/dispense"))
    seen(pharmacist.get(f"/subjects/{other}"))
    browser = web.as_role("site_coordinator")  # signed in again on the later day
    seen(browser.get(f"/subjects/{number}/status"))
    seen(submit_form(browser, f"/subjects/{number}/status", reason="other"))
    refused = screened(web)
    summary, _ = randomize_on_web(browser, refused, answers={q: "no" for q in YES})
    seen(summary)
    for language in ("fr", "ja"):
        reader = web.as_role("investigator", language=language)
        seen(reader.get(f"/subjects/{number}"))
        seen(reader.get(f"/subjects/{refused}/randomize"))
    assert len(pages) == 18
    for page in pages:
        assert_blinded(page)


# --- the same subject through the other doors -------------------------------------------------


def test_a_subject_randomized_on_the_web_reads_the_same_through_the_api(web):
    browser = web.as_role("site_coordinator")
    number = number_in(screen_on_web(browser, "101"))
    randomize_on_web(browser, number)
    token = add_client(web.db, name="edc-101", role="site_coordinator", sites=["101"],
                       actor=ADMIN).token
    answer = ApiClient(web.app.test_client(), token).get(f"/subjects/{number}")
    assert answer.status_code == 200
    body = answer.get_json()
    core = record(web, number)
    assert body["status"] == core.status == "randomized"
    assert [r["randomization_number"] for r in body["randomizations"]] == [
        r.randomization_number for r in core.randomizations]
    assert [k["kit_number"] for k in body["kits"]] == [k.kit_number for k in core.kits]
    assert "arm" not in str(body["randomizations"][0]) or \
        body["randomizations"][0]["arm"] is None


def test_a_subject_screened_and_randomized_on_the_web_is_dispensed_by_phone(voice,
                                                                            monkeypatch):
    from voice import TODAY, says

    web = Web(voice.db, voice.app, voice.store)
    browser = web.browser("5001")
    number = number_in(screen_on_web(browser, "101"))
    _, done = randomize_on_web(browser, number)
    assert done.status_code == 200
    monkeypatch.setenv("IVRS_TODAY", str(date.fromisoformat(TODAY) + timedelta(days=28)))
    phone = voice.signed_in()  # user 5001, who randomized on the web
    phone.press("3")
    phone.press(number + "#")
    heard = phone.press("1")
    assert says(heard, "Due now: visit 2, 2 kits"), heard.text
    heard = phone.press("1")
    assert says(heard, "For visit 2, give kit"), heard.text
    with voice.db.sessions() as session:
        v2 = set(session.scalars(select(Kit.kit_number).where(Kit.visit_code == "V2")))
    spoken = {digits.replace(" ", "") for digits in re.findall(r"\d(?: \d)+", heard.text)}
    assert len(v2) == 2 and v2 <= spoken
    assert record(web, number).status == "randomized"
