"""The console in headless Chromium over a real ``ivrs serve`` (SPEC §11): signing in
with a second factor, CSRF, the idle timeout, blinding in the DOM of every page
a blinded role can open, axe-core's accessibility check of the main pages, and
the main flows end to end as a person would drive them (by labels and roles):
screening and randomizing then finding the subject by phone (the UAT softphone),
a dispatch and a receipt with a damaged kit, an unblinding approved with an
e-signature. Each outcome is read back through the core."""

from __future__ import annotations

import re
import time
from contextlib import contextmanager

import pyotp
import pytest
from api_support import STUDY
from browser_support import PASSWORD, TODAY, TOTP_LABEL, Console, axe_violations, serve_console

from core.actors import ADMIN, actor_for_user
from core.randomize import randomize
from core.records import subject_record
from core.studies import get_study
from core.subjects import screen_subject
from core.supply import records as supply_records
from core.supply.receipt import receive_shipment
from core.supply.shipments import dispatch_shipment, request_shipment

ARM_TOKENS = re.compile(r"\b(KA|KP|LA1|LP1|Drug 10 mg|Placebo)\b")
ARM_NAMES = {"A": "Drug 10 mg", "P": "Placebo"}
BLINDED = {"site_coordinator": "5001", "investigator": "5002", "pharmacist": "5003",
           "project_manager": "5006", "depot_manager": "7001", "admin": "9001"}
FACTORS = {"SEX": "F", "AGE": "LT65"}
ELIGIBLE = {"INC1": True, "INC2": True, "EXC1": True}
APPROVAL_MODE = ("unblinding: {mode: investigator}", "unblinding: {mode: approval}")


@pytest.fixture(autouse=True)
def same_today(monkeypatch):
    """What the tests write through the core happens on the server's day."""
    monkeypatch.setenv("IVRS_TODAY", TODAY.isoformat())


def nav_pages(page) -> list[str]:
    return [link.get_attribute("href") for link in page.locator("nav a").all()]


def expect(locator):
    """Playwright's waiting assertions (imported here: the module loads without it)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def assert_no_arm(page, where) -> None:
    """Neither the text a reader reads nor the DOM names an arm, kit type or lot."""
    assert not ARM_TOKENS.search(page.locator("body").inner_text()), where
    assert not ARM_TOKENS.search(page.content()), where


def read_in_english(page) -> None:
    """The language switch in the header, as a French or German reader would use it."""
    header = page.get_by_role("banner")
    header.get_by_role("combobox").select_option("en")
    header.get_by_role("button", name=re.compile("^(Change|Changer|Ändern)$")).click()
    expect(page.locator("html")).to_have_attribute("lang", "en")


def actor(db, user_code: str):
    with db.sessions() as session:
        return actor_for_user(session, get_study(session, STUDY).id, user_code, "test")


def randomized(db, user_code: str = "5001") -> str:
    """A subject of site 101 screened and randomized through the core."""
    by = actor(db, user_code)
    number = screen_subject(db, site_code="101", actor=by).subject_number
    randomize(db, subject_number=number, actor=by, factors=FACTORS, eligibility=ELIGIBLE)
    return number


def requested(db, per_type: int = 2) -> str:
    return request_shipment(db, site_code="101", kits_per_type=per_type,
                            actor=actor(db, "5001")).shipment_number


def kit_statuses(db, shipment: str) -> dict[str, str]:
    detail = supply_records.shipment_detail(db, shipment_number=shipment, actor=ADMIN)
    return {kit.kit_number: kit.status for kit in detail.kits}


def arm_of(db, subject: str) -> str:
    record = subject_record(db, subject_number=subject, actor=actor(db, "5004"))
    return ARM_NAMES[record.randomizations[0].arm]


def said(message_id: str, language: str, **params) -> str:
    """What the voice dialog says for a message, in a language (its catalogs)."""
    from dialogs.output import Say
    from ivrs.render.speech import text

    return text(Say(message_id, params), language)


def test_a_project_manager_enrols_a_second_factor_then_signs_in_with_it(console, page):
    console.sign_in(page, "5006")
    assert "5006" in console.totp_secrets
    assert page.get_by_role("heading", name="Dashboard").is_visible()
    page.get_by_role("button", name="Sign out").click()
    assert "/signin" in page.url
    page.get_by_label("User ID").fill("5006")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    assert "/signin/totp" in page.url
    # The code used at enrolment is refused: a code signs in once.
    page.get_by_label(TOTP_LABEL).fill(pyotp.TOTP(console.totp_secrets["5006"]).at(
        console.last_steps["5006"] * 30))
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").is_visible() and "/signin/totp" in page.url
    page.get_by_label(TOTP_LABEL).fill(console.totp_code("5006"))
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("heading", name="Dashboard").is_visible()


def test_a_wrong_password_says_not_valid_and_never_which(console, page):
    page.goto(console.url + "/signin")
    page.get_by_label("User ID").fill("5001")
    page.get_by_label("Password").fill("not the password at all")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").is_visible()
    assert "/signin" in page.url and not nav_pages(page)


def test_a_post_without_its_csrf_token_is_refused_and_changes_nothing(console, page):
    console.sign_in(page, "5001")
    answer = page.request.post(console.url + "/language", form={"language": "de"})
    assert answer.status == 400
    page.goto(console.url + "/subjects")
    assert page.locator("html").get_attribute("lang") == "fr"  # Marie Curie's, not "de"


def test_every_page_of_a_blinded_role_has_no_arm_in_its_dom(console, chromium):
    # Beside the navigation's pages, those the flows reach: a randomized subject
    # and its unblinding form, a shipment waiting for dispatch and one received
    # with a damaged kit, every approval.
    subject = randomized(console.db)
    waiting, received = requested(console.db), requested(console.db)
    dispatch_shipment(console.db, shipment_number=received, carrier="DHL", tracking_number="JD1",
                      actor=actor(console.db, "7001"))
    receive_shipment(console.db, shipment_number=received, actor=actor(console.db, "5001"),
                     damaged=sorted(kit_statuses(console.db, received))[:1])
    reached = [f"/subjects/{subject}", f"/subjects/{subject}/unblind", f"/shipments/{waiting}",
               f"/shipments/{received}", "/approvals?status=all"]
    for role, user_code in BLINDED.items():
        context = chromium.new_context(locale="en-US")
        tab = context.new_page()
        console.sign_in(tab, user_code)
        assert nav_pages(tab), role
        for href in dict.fromkeys(nav_pages(tab) + reached):
            tab.goto(console.url + href)
            assert_no_arm(tab, (role, href))
        context.close()


def test_the_main_pages_have_no_serious_accessibility_violation(console, page):
    page.goto(console.url + "/signin")
    assert axe_violations(page) == []
    subject, screened = randomized(console.db), screen_subject(
        console.db, site_code="101", actor=actor(console.db, "5001")).subject_number
    shipment = requested(console.db)
    dispatch_shipment(console.db, shipment_number=shipment, carrier="DHL", tracking_number="JD2",
                      actor=actor(console.db, "7001"))
    console.sign_in(page, "5001")
    # The subject page, the randomization form, a shipment's receipt form, the
    # softphone and the reports beside the rest; the dispatch form and the
    # approvals are checked in their flows below (other roles).
    for href in dict.fromkeys(nav_pages(page) + [
            f"/subjects/{subject}", f"/subjects/{screened}/randomize", f"/shipments/{shipment}",
            "/softphone", "/reports"]):
        page.goto(console.url + href)
        assert axe_violations(page) == [], href


# --- the flows, end to end -------------------------------------------------------------------


@contextmanager
def signed_in(console, chromium, user_code: str):
    """A browser of its own for one user, signed in and reading English."""
    context = chromium.new_context(locale="en-US")
    tab = context.new_page()
    try:
        console.sign_in(tab, user_code)
        read_in_english(tab)
        yield tab
    finally:
        context.close()


def fact(scope, term: str) -> str:
    """The value a definition list gives for a term."""
    return scope.locator("dt", has_text=term).locator("xpath=following-sibling::dd[1]").inner_text()


class Softphone:
    """The console's UAT softphone, used by its labels: every answer of the
    dialog through /voice is shown in its transcript."""

    def __init__(self, page):
        self.page = page
        self.lines = page.get_by_role("region", name="What is said").get_by_role("listitem")

    def answered(self, act) -> str:
        """What the dialog said back to one action (the script adds it all at once)."""
        before = self.lines.count()
        act()
        expect(self.lines).not_to_have_count(before)
        return " ".join(self.lines.all_inner_texts()[before:])

    def call(self) -> str:
        self.page.get_by_role("button", name="Call", exact=True).click()
        expect(self.page.get_by_role("status").filter(has_text="waits")).to_be_visible()
        return " ".join(self.lines.all_inner_texts())

    def enter(self, keys: str) -> str:
        def act():
            self.page.get_by_label("Keys to send").fill(keys)
            self.page.get_by_role("button", name="Send", exact=True).click()
        return self.answered(act)

    def press(self, key: str) -> str:
        keypad = self.page.get_by_role("group", name="Keypad")
        return self.answered(lambda: keypad.get_by_role("button", name=key, exact=True).click())


def test_a_subject_screened_and_randomized_on_the_web_is_the_phones_subject(console, chromium):
    db = console.db
    with signed_in(console, chromium, "5001") as page:
        page.get_by_role("navigation", name="Pages").get_by_role("link", name="Subjects").click()
        page.get_by_role("button", name="Screen a new subject").click()
        done = page.get_by_role("status")
        expect(done).to_contain_text("The new subject number is")
        found = re.search(r"The new subject number is (\S+), at site 101\.", done.inner_text())
        subject = found.group(1)
        assert subject_record(db, subject_number=subject, actor=actor(db, "5001")).status == \
            "screened"

        page.get_by_role("link", name="Randomize", exact=True).click()
        expect(page.get_by_role("heading", name=f"Randomize subject {subject}")).to_be_visible()
        assert_no_arm(page, "randomize form")
        for question in ("Is the subject 18 or older?", "Has the subject signed the consent form?",
                         "Is the subject free of the exclusion conditions?"):
            page.get_by_role("group", name=question).get_by_label("Yes, met").check()
        page.get_by_label("Sex", exact=True).select_option(label="female")
        page.get_by_label("Age", exact=True).select_option(label="under 65")
        page.get_by_role("button", name="Continue to the summary").click()
        assert fact(page, "Eligibility") == "Eligible: every criterion is met"
        assert (fact(page, "Sex"), fact(page, "Age")) == ("female", "under 65")
        assert_no_arm(page, "randomize summary")
        page.get_by_role("button", name="Randomize", exact=True).click()
        done = page.get_by_role("status")
        expect(done).to_contain_text(f"Subject {subject} is randomized.")
        number = fact(done, "Randomization number")
        kits = done.get_by_role("list").get_by_role("listitem").all_inner_texts()
        assert number and len(kits) == 1  # V1 dispenses one kit
        assert_no_arm(page, "randomize result")

        record = subject_record(db, subject_number=subject, actor=actor(db, "5001"))
        assert record.status == "randomized" and record.site == "101"
        assert [r.randomization_number for r in record.randomizations] == [number]
        assert [(k.kit_number, k.visit) for k in record.kits] == [(kits[0], "V1")]

        page.get_by_role("link", name=f"Back to subject {subject}").click()
        expect(page.get_by_role("heading", name=f"Subject {subject}")).to_be_visible()
        expect(page.get_by_role("cell", name=number, exact=True)).to_be_visible()
        expect(page.get_by_role("cell", name=kits[0], exact=True)).to_be_visible()
        assert_no_arm(page, "subject page")

        # The phone: the softphone calls /voice from Marie Curie's number, so the
        # dialog speaks her French (her PIN is the study file's, not temporary).
        page.get_by_role("link", name="Softphone (UAT)").click()
        phone = Softphone(page)
        assert said("login.user_id", "fr") in phone.call()
        assert said("login.pin", "fr") in phone.enter("5001#")
        phone.enter("2468#")  # the menu
        assert said("subject.enter", "fr") in phone.press("2")  # randomize
        phone.enter(subject + "#")  # read back, digit by digit
        assert said("error.already_randomized", "fr") in phone.press("1")
        # Back to the menu; a dispensation: visit 1 was the web's, visit 2 is named.
        assert said("subject.enter", "fr") not in phone.enter("*")
        assert said("subject.enter", "fr") in phone.press("3")
        phone.enter(subject + "#")
        heard = phone.press("1")
        assert "visite 2, 2 kits" in heard, heard  # "À réaliser maintenant : visite 2, 2 kits."
        phone.press("2")  # cancel: nothing is dispensed
        assert_no_arm(page, "softphone")
        assert "You hung up." in phone.answered(
            page.get_by_role("button", name="Hang up").click)
    # Still the one randomization the web made, and its one kit.
    record = subject_record(db, subject_number=subject, actor=actor(db, "5001"))
    assert [r.randomization_number for r in record.randomizations] == [number]
    assert [(k.kit_number, k.visit) for k in record.kits] == [(kits[0], "V1")]


def test_the_depot_dispatches_and_the_site_receives_with_a_damaged_kit(console, chromium):
    db = console.db
    shipment = requested(db)
    kits = sorted(kit_statuses(db, shipment))
    assert len(kits) == 4
    with signed_in(console, chromium, "7001") as page:
        page.goto(f"{console.url}/shipments/{shipment}")
        assert_no_arm(page, "shipment to dispatch")
        assert axe_violations(page) == []
        page.get_by_label("Carrier").fill("DHL Express")
        page.get_by_label("Tracking number").fill("JD014600")
        page.get_by_label("Dispatch date").fill(TODAY.isoformat())
        page.get_by_role("button", name="Record the dispatch").click()
        expect(page.get_by_role("status")).to_contain_text(f"Shipment {shipment} dispatched")
        assert_no_arm(page, "dispatched")
    detail = supply_records.shipment_detail(db, shipment_number=shipment, actor=ADMIN)
    assert (detail.status, detail.carrier, detail.tracking_number, detail.dispatched_on) == (
        "dispatched", "DHL Express", "JD014600", TODAY)
    assert set(kit_statuses(db, shipment).values()) == {"in_transit"}

    with signed_in(console, chromium, "5001") as page:
        page.goto(f"{console.url}/shipments/{shipment}")
        page.get_by_label("Report damaged or missing kits, or a temperature excursion").check()
        page.get_by_role("group", name="Damaged kits").get_by_label(f"Kit number {kits[0]}").check()
        page.get_by_role("button", name="Confirm receipt").click()
        expect(page.get_by_role("status")).to_contain_text(
            f"Shipment {shipment} received: 3 available, 0 in quarantine, 1 damaged, 0 missing.")
        assert_no_arm(page, "received")
        page.goto(f"{console.url}/shipments/{shipment}")
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=kits[0], exact=True))
        expect(row).to_contain_text("Damaged")
        assert_no_arm(page, "received shipment")
    assert kit_statuses(db, shipment) == {kits[0]: "damaged", kits[1]: "available",
                                          kits[2]: "available", kits[3]: "available"}


@pytest.fixture(scope="module")
def approval_console(tmp_path_factory, chromium):
    """The example study with its unblinding in mode approval."""
    db, server, stop = serve_console(tmp_path_factory, APPROVAL_MODE)
    yield Console(server.url, db)
    stop()


def test_a_project_manager_approves_an_unblinding_with_an_e_signature(approval_console, chromium):
    console, db = approval_console, approval_console.db
    subject = randomized(db)
    with signed_in(console, chromium, "5002") as page:
        page.goto(f"{console.url}/subjects/{subject}")
        page.get_by_role("link", name="Emergency unblinding").click()
        expect(page.get_by_role("heading", name=f"Emergency unblinding of subject {subject}")
               ).to_be_visible()
        assert axe_violations(page) == []
        page.get_by_label("a medical emergency").check()
        page.get_by_label("Your password, to sign").fill(PASSWORD)
        page.get_by_label(f"I confirm the emergency unblinding of subject {subject}.").check()
        page.get_by_role("button", name="Sign and send the request").click()
        done = page.get_by_role("status").filter(has_text="was sent for approval")
        request = re.search(r"Unblinding request (\S+) for subject", done.inner_text()).group(1)
        assert_no_arm(page, "unblinding requested")

    with signed_in(console, chromium, "5006") as page:
        page.get_by_role("navigation", name="Pages").get_by_role("link", name="Approvals").click()
        expect(page.get_by_role("heading", name="Approvals")).to_be_visible()
        assert_no_arm(page, "approvals")
        assert axe_violations(page) == []
        page.get_by_role("link", name=request, exact=True).click()
        expect(page.get_by_role("heading", name=f"Request {request}")).to_be_visible()
        assert_no_arm(page, "approval")
        assert axe_violations(page) == []
        approve = page.get_by_role("group", name="Approve")
        expect(approve).to_contain_text(f"I approve request {request}: emergency unblinding of "
                                        f"subject {subject} (a medical emergency).")
        approve.get_by_label("Your password, to sign").fill(PASSWORD)
        approve.get_by_role("button", name="Sign and approve").click()
        expect(page.get_by_role("status")).to_contain_text(f"Request {request} is approved.")
        assert_no_arm(page, "approved")
        for href in ("/approvals?status=all", f"/approvals/{request}", f"/subjects/{subject}"):
            page.goto(console.url + href)
            assert_no_arm(page, href)

    with signed_in(console, chromium, "5002") as page:
        page.goto(f"{console.url}/subjects/{subject}/unblind")
        expect(page.get_by_text(f"as approved in request {request}")).to_be_visible()
        page.get_by_label("Your password, to sign").fill(PASSWORD)
        page.get_by_label(f"I confirm the emergency unblinding of subject {subject}.").check()
        page.get_by_role("button", name="Sign and unblind").click()
        expect(page.get_by_role("status")).to_contain_text(
            f"Subject {subject} receives: {arm_of(db, subject)}.")


@pytest.fixture(scope="module")
def impatient_console(tmp_path_factory, chromium):
    db, server, stop = serve_console(tmp_path_factory, IVRS_WEB_IDLE_SECONDS="2")
    yield Console(server.url, db)
    stop()


def test_an_idle_session_ends_and_the_next_page_asks_to_sign_in_again(impatient_console, page):
    impatient_console.sign_in(page, "5001")
    page.goto(impatient_console.url + "/subjects")
    assert page.url.endswith("/subjects") and page.get_by_role("heading", name="Sujets").is_visible()
    time.sleep(3)
    page.goto(impatient_console.url + "/subjects")
    assert "/signin" in page.url
    assert "15 minutes" in page.get_by_role("status").inner_text()  # Marie Curie's French
