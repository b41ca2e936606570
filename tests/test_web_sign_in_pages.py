"""Signing in to the console through its pages (SPEC §11): password, the TOTP
second factor and its enrolment, the lockout shared with the phone, the
one-time set-up link, signing out."""

from __future__ import annotations

import re

import pyotp
import pytest
from sqlalchemy import select

from core.actors import ADMIN
from core.errors import Refused
from core.login import sign_in
from core.models import User
from core.web_accounts import invite, set_password

PASSWORD = "correct horse battery staple"
_SECRET = re.compile(r'<code class="secret">([A-Z2-7]+)</code>')


@pytest.fixture
def passwords(web):
    for user_code in ("5001", "5006"):
        set_password(web.db, user_code=user_code, password=PASSWORD, actor=ADMIN)
    return web


def sign_in_form(browser, user_code: str, password: str = PASSWORD, **extra):
    browser.get("/signin")
    return browser.post("/signin", {"user_id": user_code, "password": password, **extra})


def test_a_site_coordinator_signs_in_with_a_password_alone(passwords):
    browser = passwords.browser()
    answer = sign_in_form(browser, "5001")
    assert answer.status_code == 302 and answer.headers["Location"] == "/"
    assert browser.get("/subjects").status_code == 200


def test_the_page_asked_for_before_signing_in_opens_after(passwords):
    browser = passwords.browser()
    browser.get("/subjects")
    answer = sign_in_form(browser, "5001", next="/subjects")
    assert answer.headers["Location"] == "/subjects"


def test_a_project_manager_enrols_a_second_factor_and_a_code_works_once(passwords):
    browser = passwords.browser()
    answer = sign_in_form(browser, "5006")
    assert answer.headers["Location"] == "/signin/enrol"
    page = browser.text(browser.get("/signin/enrol"))
    assert "<svg" in page  # the QR code, drawn on the server
    secret = _SECRET.search(page).group(1)
    assert browser.get("/").status_code == 302  # not signed in before the code
    code = pyotp.TOTP(secret).now()
    assert browser.post("/signin/enrol", {"code": code}).headers["Location"] == "/"
    assert browser.get("/").status_code == 200
    browser.post("/signout", {})
    again = passwords.browser()
    assert sign_in_form(again, "5006").headers["Location"] == "/signin/totp"
    again.get("/signin/totp")
    replay = again.post("/signin/totp", {"code": code})
    assert replay.status_code == 401 and "each code works once" in again.text(replay)


def test_a_wrong_password_never_says_which_of_the_two_was_wrong(passwords):
    wrong_password = sign_in_form(passwords.browser(), "5001", "not the right one at all")
    unknown_user = sign_in_form(passwords.browser(), "5999", PASSWORD)
    assert wrong_password.status_code == unknown_user.status_code == 401
    assert "User ID or password not valid." in wrong_password.get_data(as_text=True)
    assert "User ID or password not valid." in unknown_user.get_data(as_text=True)


def test_the_lockout_is_the_phones_two_wrong_pins_and_one_wrong_password_lock(passwords):
    for _ in range(2):
        with pytest.raises(Refused):
            sign_in(passwords.db, user_code="5001", pin="0000", channel="voice")
    answer = sign_in_form(passwords.browser(), "5001", "not the right one at all")
    assert answer.status_code == 403 and "locked" in answer.get_data(as_text=True)
    # Now even the right password is refused, and the phone is locked too.
    assert sign_in_form(passwords.browser(), "5001").status_code == 403
    with passwords.db.sessions() as session:
        assert session.scalars(select(User.locked).where(User.user_code == "5001")).one()


def test_signing_out_ends_the_session_on_the_server(passwords):
    browser = passwords.browser()
    sign_in_form(browser, "5001")
    with browser.http.session_transaction() as cookie:
        stolen = cookie["sid"]
    browser.get("/subjects")
    browser.post("/signout", {})
    thief = passwords.browser()
    with thief.http.session_transaction() as cookie:
        cookie["sid"] = stolen
    assert thief.get("/subjects").status_code == 302


def test_a_one_time_link_sets_a_password_once(web):
    token = invite(web.db, user_code="5002", actor=ADMIN)
    browser = web.browser()
    assert "5002" in browser.text(browser.get(f"/invite/{token}"))
    short = browser.post(f"/invite/{token}", {"password": "short", "password_again": "short"})
    assert short.status_code == 422 and "12 to 128 characters" in browser.text(short)
    answer = browser.post(f"/invite/{token}", {"password": PASSWORD, "password_again": PASSWORD})
    assert answer.status_code == 302 and "invited=1" in answer.headers["Location"]
    assert sign_in_form(web.browser(), "5002").headers["Location"] == "/"
    used = web.browser().get(f"/invite/{token}")
    assert used.status_code == 404


def test_a_sign_in_post_without_its_csrf_token_is_refused_and_signs_nobody_in(passwords):
    browser = passwords.browser()
    answer = browser.post("/signin", {"user_id": "5001", "password": PASSWORD}, csrf=False)
    assert answer.status_code == 400
    assert browser.get("/subjects").status_code == 302
