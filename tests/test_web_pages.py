"""The console's pages through Flask's test client: who may open what, what each
role reads (blinded or not), the language, CSRF, and the idle timeout."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from core.actors import ADMIN
from core.randomize import randomize
from core.subjects import screen_subject
from core.users import set_locked
from ivrs.web import sessions

FACTORS = {"SEX": "F", "AGE": "LT65"}
ARMS = ("Drug 10 mg", "Placebo")


def randomized_subject(web, site="101", user="5001") -> str:
    actor = web.browser().web.web_user(user).actor
    number = screen_subject(web.db, site_code=site, actor=actor).subject_number
    randomize(web.db, subject_number=number, actor=actor, factors=FACTORS,
              eligibility={"INC1": True, "INC2": True, "EXC1": True})
    return number


def test_a_page_without_a_session_sends_the_browser_to_sign_in(web):
    answer = web.browser().get("/subjects")
    assert answer.status_code == 302
    assert answer.headers["Location"].startswith("/signin?next=/subjects")


def test_the_site_coordinator_reads_its_own_subjects_without_an_arm(web):
    number = randomized_subject(web)
    other = randomized_subject(web, site="102", user="5005")
    browser = web.as_role("site_coordinator")
    page = browser.text(browser.get("/subjects"))
    assert number in page and other not in page
    detail = browser.get(f"/subjects/{number}")
    assert detail.status_code == 200
    text = browser.text(detail)
    assert number in text and not any(arm in text for arm in ("KA", "KP", *ARMS))
    assert browser.get(f"/subjects/{other}").status_code == 403


def test_the_unblinded_statistician_reads_the_arm(web):
    number = randomized_subject(web)
    browser = web.as_role("unblinded_statistician")
    text = browser.text(browser.get(f"/subjects/{number}"))
    assert "Arm" in text and ("KA" in text or "KP" in text)


def test_the_depot_manager_may_not_open_subjects(web):
    assert web.as_role("depot_manager").get("/subjects").status_code == 403


def test_every_page_is_in_the_readers_language(web):
    browser = web.as_role("site_coordinator", language="fr")
    text = browser.text(browser.get("/subjects"))
    assert 'lang="fr"' in text and "Sujets" in text


def test_the_language_switch_changes_the_session_language(web):
    browser = web.as_role("site_coordinator")
    browser.get("/subjects")
    answer = browser.post("/language", {"language": "de", "next": "/subjects"})
    assert answer.status_code == 302
    assert 'lang="de"' in browser.text(browser.get("/subjects"))


def test_a_post_without_its_csrf_token_is_refused_and_changes_nothing(web):
    browser = web.as_role("site_coordinator")
    browser.get("/subjects")
    answer = browser.post("/language", {"language": "de"}, csrf=False)
    assert answer.status_code == 400
    assert 'lang="en"' in browser.text(browser.get("/subjects"))


def test_a_session_idle_for_15_minutes_ends(web, monkeypatch):
    browser = web.as_role("site_coordinator")
    assert browser.get("/subjects").status_code == 200
    later = sessions.utcnow() + timedelta(minutes=16)
    monkeypatch.setattr(sessions, "utcnow", lambda: later)
    answer = browser.get("/subjects")
    assert answer.status_code == 302 and "timeout=1" in answer.headers["Location"]


def test_a_user_locked_meanwhile_is_signed_out_at_the_next_page(web):
    browser = web.as_role("site_coordinator")
    assert browser.get("/subjects").status_code == 200
    set_locked(web.db, user_code="5001", locked=True, actor=ADMIN, reason="test")
    answer = browser.get("/subjects")
    assert answer.status_code == 302 and "ended=1" in answer.headers["Location"]


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "javascript:x"])
def test_the_next_address_never_leaves_the_site(web, target):
    browser = web.as_role("site_coordinator")
    browser.get("/subjects")
    answer = browser.post("/language", {"language": "de", "next": target})
    assert answer.headers["Location"] == "/"


ROLES = ("site_coordinator", "investigator", "pharmacist", "unblinded_statistician",
         "project_manager", "depot_manager", "admin")


@pytest.mark.parametrize("role", ROLES)
def test_the_dashboard_opens_for_every_role_and_shows_what_its_role_may_see(web, role):
    randomized_subject(web)
    browser = web.as_role(role)
    answer = browser.get("/")
    assert answer.status_code == 200
    text = browser.text(answer)
    assert "Stock at the sites" in text and "<svg" in text
    assert ("Enrollment by site" in text) == (role != "depot_manager")
    assert ("Audit trail" in text) == (role in ("project_manager", "unblinded_statistician",
                                                 "admin"))
    if role != "unblinded_statistician":
        assert not re.search(r"\b(KA|KP|LA1|LP1|Drug 10 mg|Placebo)\b", text), role


def test_a_site_coordinator_dashboard_counts_only_its_own_site(web):
    randomized_subject(web)  # at 101
    randomized_subject(web, site="102", user="5005")
    text = web.as_role("site_coordinator").text(web.as_role("site_coordinator").get("/"))
    assert "101 · " in text and "102 · " not in text


def test_the_console_serves_its_stylesheet(web):
    answer = web.browser().get("/static/console.css")
    assert answer.status_code == 200 and b"--accent" in answer.get_data()


def test_a_site_role_without_sites_reads_no_site():
    from ivrs.web.sessions import WebUser

    nobody = WebUser("ABC-301", "5999", "N", "site_coordinator", (), "en").actor
    assert nobody.site_codes == frozenset() and not nobody.may_act_at("101")
    manager = WebUser("ABC-301", "5006", "P", "project_manager", (), "en").actor
    assert manager.site_codes is None
