"""The console in headless Chromium over a real ``ivrs serve`` (SPEC §11): signing in
with a second factor, CSRF, the idle timeout, blinding in the DOM of every page
a blinded role can open, and axe-core's accessibility check of the main pages."""

from __future__ import annotations

import re
import time

import pyotp
import pytest
from browser_support import PASSWORD, TOTP_LABEL, Console, axe_violations, serve_console

ARM_TOKENS = re.compile(r"\b(KA|KP|LA1|LP1|Drug 10 mg|Placebo)\b")
BLINDED = {"site_coordinator": "5001", "investigator": "5002", "pharmacist": "5003",
           "project_manager": "5006", "depot_manager": "7001", "admin": "9001"}


def nav_pages(page) -> list[str]:
    return [link.get_attribute("href") for link in page.locator("nav a").all()]


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
    for role, user_code in BLINDED.items():
        context = chromium.new_context(locale="en-US")
        tab = context.new_page()
        console.sign_in(tab, user_code)
        assert nav_pages(tab), role
        for href in nav_pages(tab):
            tab.goto(console.url + href)
            text = tab.content()
            assert not ARM_TOKENS.search(tab.locator("body").inner_text()), (role, href)
            assert not ARM_TOKENS.search(text), (role, href)
        context.close()


def test_the_main_pages_have_no_serious_accessibility_violation(console, page):
    page.goto(console.url + "/signin")
    assert axe_violations(page) == []
    console.sign_in(page, "5001")
    for href in nav_pages(page):
        page.goto(console.url + href)
        assert axe_violations(page) == [], href


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
