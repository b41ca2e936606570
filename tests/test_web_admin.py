"""The administrator's users page and the UAT softphone, through Flask's test client.

Users: only the admin role opens them; every action calls the core service of
``ivrs users`` and is checked through the core; refusals and posts without a
CSRF token change nothing; nothing set (PIN, password, secret) is shown again.

Softphone: it exists only when the server runs with ``IVRS_ENV=uat``; a call
from the browser plays the real ``/voice`` dialog, signed as Twilio signs, so
that a coordinator can sign in by keypad and screen a subject.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select, update
from web_support import USERS, Web, make_web

import webhooks
from core.actors import ADMIN, Actor
from core.errors import Refused
from core.models import AuditEvent, User
from core.pins import check_pin
from core.records import subjects_page
from core.user_directory import calling_numbers, list_users
from core.web_login import invited_user, set_password
from ivrs.app import create_app
from ivrs.config import Settings
from ivrs.conversations.sessions import MemorySessionStore

TOKEN = "test-twilio-auth-token"
ROLES = sorted(USERS)
# The study's blinded words (tests/data/study.yaml, tests/api_support.stock). The arm
# codes A and P are looked for on pages read in Japanese, where "A" is not an article.
BLINDED = re.compile(r"\b(KA|KP|LA1|LP1)\b|Drug 10 mg|Placebo")
ARM_CODES = re.compile(r"\b(A|P)\b")
NEW_USER = {"user_id": "5010", "name": "Rosalind Franklin", "role": "pharmacist",
            "sites": "103", "phone": "+33655500110", "email": "rf@example.org",
            "language": "fr", "pin": "7391"}


def line(db, user_code: str):
    return next((u for u in list_users(db, actor=ADMIN) if u.user_code == user_code), None)


def user_row(db, user_code: str) -> User:
    with db.sessions() as session:
        return session.scalars(select(User).where(User.user_code == user_code)).one()


def audit_actions(db, user_code: str) -> list[tuple[str, str | None]]:
    with db.sessions() as session:
        return [(e.action, e.reason) for e in session.scalars(
            select(AuditEvent).where(AuditEvent.entity_type == "user",
                                     AuditEvent.entity_id == user_code)
            .order_by(AuditEvent.seq))]


def changes(db, user_code: str) -> list[tuple[str, str | None]]:
    """The audit rows of a user since the study file made them."""
    return [row for row in audit_actions(db, user_code) if row[0] != "user_created"]


def visible_text(html: str) -> str:
    """The page as read: without tags and attributes (a CSRF token is not text)."""
    return re.sub(r"<[^>]+>", " ", html)


def shown(html: str) -> str:
    """The page with its random tokens taken out (a CSRF token or an idempotency key
    may contain any digits), attributes kept: a PIN in a value would be found."""
    return re.sub(r'name="(csrf_token|idempotency_key)" value="[^"]*"', "", html)


def transcript(html: str) -> str:
    """The softphone's transcript as read (what the dialog said, what was pressed)."""
    return visible_text(html.split('id="softphone-transcript"', 1)[1].split("</ol>", 1)[0])


def with_key(browser, data: dict) -> dict:
    """The form as drawn: its idempotency key from the page last read."""
    key = re.search(r'name="idempotency_key" value="([^"]+)"', browser.last_page).group(1)
    return {**data, "idempotency_key": key}


def admin_at(web, path: str):
    browser = web.as_role("admin")
    assert browser.get(path).status_code == 200
    return browser


# --- the read model ----------------------------------------------------------------------


def test_the_users_list_has_no_hash_and_is_the_administrators_only(web):
    set_password(web.db, user_code="5002", password="correct horse battery", actor=ADMIN)
    users = list_users(web.db, actor=ADMIN)
    assert [u.user_code for u in users] == sorted(USERS.values())
    marie = next(u for u in users if u.user_code == "5001")
    assert (marie.name, marie.role, marie.sites, marie.language) == \
        ("Marie Curie", "site_coordinator", ("101",), "fr")
    assert not marie.password_set and not marie.totp_enrolled and not marie.locked
    assert next(u for u in users if u.user_code == "5002").password_set
    assert next(u for u in users if u.user_code == "5005").sites == ("102", "103")
    assert not any("hash" in field or "secret" in field for field in marie.__dataclass_fields__)
    for role in ("site_coordinator", "project_manager", "unblinded_statistician"):
        with pytest.raises(Refused):
            list_users(web.db, actor=Actor(role=role, user_code="5001"))


def test_calling_numbers_are_the_users_phone_and_the_studys_number(web):
    numbers = calling_numbers(web.db, user_code="5001")
    assert (numbers.caller, numbers.dialed) == ("+33655500101", "+15005550006")
    assert calling_numbers(web.db, user_code="9001").caller is None


# --- who may open the users page ---------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_only_the_admin_opens_the_users_pages(web, role):
    browser = web.as_role(role)
    expected = 200 if role == "admin" else 403
    assert browser.get("/users").status_code == expected
    assert browser.get("/users/5001").status_code == expected
    nav = browser.text(browser.get("/"))
    assert ('href="/users"' in nav) == (role == "admin")
    if role == "admin":
        return  # the admin's actions: the tests below
    for action, data in (("/users/5001/lock", {"reason": "x"}),
                         ("/users/5001/unlock", {"reason": "x"}),
                         ("/users/5001/pin", {"pin": "4321"}),
                         ("/users/5001/invite", {}), ("/users/5001/totp", {}),
                         ("/users", NEW_USER)):
        assert browser.post(action, data, form_page="/").status_code == 403, action
    assert line(web.db, "5001").locked is False
    assert line(web.db, "5010") is None
    assert changes(web.db, "5001") == []


def test_the_users_page_lists_every_user_with_their_state(web):
    set_password(web.db, user_code="5002", password="correct horse battery", actor=ADMIN)
    browser = web.as_role("admin")
    html = browser.text(browser.get("/users"))
    for code in USERS.values():
        assert f'href="/users/{code}"' in html
    assert "Marie Curie" in html and "+33655500101" in html and "101" in html
    # No hash of any kind leaves the server.
    row = user_row(web.db, "5002")
    assert row.pin_hash not in html and row.password_hash not in html
    assert "argon2" not in html


# --- the actions, end to end -------------------------------------------------------------


def test_the_admin_adds_a_user_once_and_the_pin_is_never_shown(web):
    browser = admin_at(web, "/users")
    form = with_key(browser, NEW_USER)
    answer = browser.post("/users", form)
    text = browser.text(answer)
    assert answer.status_code == 200 and "5010" in text
    confirmation = re.search(r"Confirmation number (\d+)", text).group(1)
    added = line(web.db, "5010")
    assert (added.name, added.role, added.sites, added.language, added.email) == \
        ("Rosalind Franklin", "pharmacist", ("103",), "fr", "rf@example.org")
    assert added.pin_temporary and check_pin(user_row(web.db, "5010").pin_hash, "7391")
    assert "7391" not in shown(text)
    # The same form again (a double click, a reload): one user, the same answer.
    again = browser.post("/users", form)
    assert again.status_code == 200 and f"Confirmation number {confirmation}" in browser.text(again)
    assert [a for a, _ in audit_actions(web.db, "5010")] == ["user_created"]


@pytest.mark.parametrize(("change", "status"), [
    ({"user_id": "5001"}, 409),  # exists already
    ({"pin": "12"}, 422),
    ({"user_id": "50a1"}, 422),
    ({"role": "janitor"}, 422),
    ({"sites": "999"}, 422),
    ({"email": "not an address"}, 422),
    ({"language": "it"}, 422),  # not one of the study's
])
def test_a_refused_new_user_changes_nothing_and_the_form_keeps_all_but_the_pin(
        web, change, status):
    browser = admin_at(web, "/users")
    before = list_users(web.db, actor=ADMIN)
    answer = browser.post("/users", with_key(browser, {**NEW_USER, **change}))
    html = browser.text(answer)
    assert answer.status_code == status
    assert 'role="alert"' in html and "Rosalind Franklin" in html
    pin_field = re.search(r'<input id="pin"[^>]*>', html).group(0)
    assert "value=" not in pin_field and NEW_USER["pin"] not in shown(html)
    assert list_users(web.db, actor=ADMIN) == before


def test_the_admin_locks_and_unlocks_a_user_with_a_reason(web):
    coordinator = web.as_role("site_coordinator")
    assert coordinator.get("/subjects").status_code == 200
    browser = admin_at(web, "/users/5001")
    form = with_key(browser, {"reason": "left the site"})
    answer = browser.post("/users/5001/lock", form)
    assert answer.status_code == 200 and "Confirmation number" in browser.text(answer)
    assert line(web.db, "5001").locked
    assert browser.post("/users/5001/lock", form).status_code == 200  # the same, once
    assert changes(web.db, "5001") == [("user_locked", "left the site")]
    # The locked user's console ends at the next page, as their phone does.
    assert "ended=1" in coordinator.get("/subjects").headers["Location"]
    page = browser.text(browser.get("/users/5001"))
    assert 'action="/users/5001/unlock"' in page
    answer = browser.post("/users/5001/unlock", with_key(browser, {"reason": "back"}))
    assert answer.status_code == 200 and not line(web.db, "5001").locked
    assert changes(web.db, "5001")[-1] == ("user_unlocked", "back")


def test_the_admin_resets_a_pin_to_a_temporary_one_never_shown(web):
    browser = admin_at(web, "/users/5003")
    answer = browser.post("/users/5003/pin", with_key(browser, {"pin": "5173"}))
    assert answer.status_code == 200 and "5173" not in shown(browser.text(answer))
    assert line(web.db, "5003").pin_temporary
    assert check_pin(user_row(web.db, "5003").pin_hash, "5173")
    assert "5173" not in shown(browser.text(browser.get("/users/5003")))


def test_a_refused_pin_reset_changes_nothing(web):
    browser = admin_at(web, "/users/5003")
    before = user_row(web.db, "5003").pin_hash
    answer = browser.post("/users/5003/pin", with_key(browser, {"pin": "12ab"}))
    assert answer.status_code == 422 and 'role="alert"' in browser.text(answer)
    assert user_row(web.db, "5003").pin_hash == before
    assert not line(web.db, "5003").pin_temporary


def test_an_unknown_user_is_404_and_nothing_happens(web):
    browser = admin_at(web, "/users")
    assert browser.get("/users/4242").status_code == 404
    assert browser.post("/users/4242/lock", {"reason": "x"}).status_code == 404
    assert browser.post("/users/4242/invite", {}).status_code == 404
    assert line(web.db, "4242") is None


def test_an_invite_shows_its_one_time_link_once(web):
    browser = admin_at(web, "/users/5002")
    form = with_key(browser, {})
    answer = browser.post("/users/5002/invite", form)
    html = browser.text(answer)
    assert answer.status_code == 200
    link = re.search(r'value="(http://localhost/invite/[^"]+)"', html).group(1)
    token = urlsplit(link).path.rsplit("/", 1)[1]
    assert invited_user(web.db, token=token) == "5002"
    # The form sent again does not make (or show) another link; the first one still works.
    again = browser.post("/users/5002/invite", form)
    assert again.status_code == 409 and "/invite/" not in browser.text(again)
    assert invited_user(web.db, token=token) == "5002"
    # Nowhere else is the link shown again.
    assert token not in browser.text(browser.get("/users/5002"))
    assert token not in browser.text(browser.get("/users"))
    # The link works in a browser: the invited user sets a password.
    assert web.browser().get(urlsplit(link).path).status_code == 200


def test_an_invite_link_uses_the_public_base_url(db, tmp_path):
    web = make_web(db, tmp_path)
    app = create_app(Settings(database_url="unused",
                              public_base_url="https://ivrs.example.org"),
                     db=db, store=web.store)
    public = Web(db, app, web.store)
    browser = admin_at(public, "/users/5002")
    html = browser.text(browser.post("/users/5002/invite", with_key(browser, {})))
    assert 'value="https://ivrs.example.org/invite/' in html


def test_the_admin_resets_a_second_factor(web):
    with web.db.transaction() as session:
        session.execute(update(User).where(User.user_code == "5006")
                        .values(totp_secret="JBSWY3DPEHPK3PXP", totp_last_step=1))
    browser = admin_at(web, "/users")
    assert line(web.db, "5006").totp_enrolled
    assert "JBSWY3DPEHPK3PXP" not in browser.text(browser.get("/users/5006"))
    form = with_key(browser, {})
    answer = browser.post("/users/5006/totp", form)
    assert answer.status_code == 200 and "Confirmation number" in browser.text(answer)
    assert not line(web.db, "5006").totp_enrolled
    assert browser.post("/users/5006/totp", form).status_code == 200
    assert [a for a, _ in changes(web.db, "5006")] == ["totp_reset"]


@pytest.mark.parametrize(("path", "data"), [
    ("/users", NEW_USER), ("/users/5001/lock", {"reason": "x"}),
    ("/users/5001/pin", {"pin": "4321"}), ("/users/5001/invite", {}),
    ("/users/5001/totp", {})])
def test_a_users_form_without_its_csrf_token_is_refused_and_changes_nothing(web, path, data):
    browser = admin_at(web, "/users/5001")
    before = list_users(web.db, actor=ADMIN)
    assert browser.post(path, data, csrf=False).status_code == 400
    assert list_users(web.db, actor=ADMIN) == before
    assert changes(web.db, "5001") == []


def test_the_users_pages_name_no_arm(web):
    for language, scan in (("en", BLINDED), ("ja", ARM_CODES)):
        browser = web.as_role("admin", language=language)
        for path in ("/users", "/users/5001", "/users/5004"):
            assert not scan.search(visible_text(browser.text(browser.get(path)))), path


# --- the softphone -----------------------------------------------------------------------


def uat_web(db, tmp_path, **settings) -> Web:
    """The console in UAT with the Twilio door's signature check on."""
    make_web(db, tmp_path)  # the study, its list and its kits
    app = create_app(Settings(database_url="unused", twilio_auth_token=TOKEN, **settings),
                     db=db, store=MemorySessionStore())
    return Web(db, app, app.extensions["ivrs"].store)


@pytest.fixture
def uat(db, tmp_path) -> Web:
    return uat_web(db, tmp_path)


@pytest.mark.parametrize("role", ROLES)
def test_the_softphone_is_absent_in_production(db, tmp_path, role):
    web = uat_web(db, tmp_path, environment="production")
    signed_in = web.as_role(role)
    assert signed_in.get("/softphone").status_code == 404
    assert signed_in.post("/softphone/dial", {}, form_page="/").status_code == 404
    assert signed_in.post("/softphone/press", {"keys": "1"}, form_page="/").status_code == 404
    assert 'href="/softphone"' not in signed_in.text(signed_in.get("/"))
    assert web.browser().get("/softphone").status_code == 404  # not even a sign-in asked


@pytest.mark.parametrize("role", ROLES)
def test_every_role_has_the_softphone_in_uat(uat, role):
    browser = uat.as_role(role)
    answer = browser.get("/softphone")
    html = browser.text(answer)
    assert answer.status_code == 200 and 'href="/softphone"' in html
    for key in "0123456789*#":
        assert f'name="key" value="{key}"' in html
    assert 'src="/static/softphone.js"' in html and "<script>" not in html


def press(browser, keys: str, **kwargs):
    return browser.post("/softphone/press", {"keys": keys}, **kwargs)


def test_a_coordinator_screens_a_subject_by_softphone_in_french(uat, monkeypatch):
    checked: list[bool] = []
    original = webhooks.signature_valid

    def spied() -> bool:
        checked.append(original())
        return checked[-1]

    monkeypatch.setattr(webhooks, "signature_valid", spied)
    browser = uat.as_role("site_coordinator")  # Marie Curie, French, site 101
    browser.get("/softphone")
    answer = browser.post("/softphone/dial", {})
    html = browser.text(answer)
    assert answer.status_code == 200
    assert "Saisissez votre identifiant" in html and 'lang="fr-FR"' in html
    press(browser, "5001#")
    html = browser.text(press(browser, "2468#"))
    assert "Pour inscrire un nouveau sujet en sélection, tapez 1." in html
    assert "2468" not in shown(html)  # a PIN is not written down
    press(browser, "1")  # screen a subject: one site, straight to the confirmation
    html = browser.text(press(browser, "1"))
    screened = subjects_page(uat.db, actor=uat.web_user("5001").actor).items
    assert [s.subject_number for s in screened] == ["1010001"]
    assert "1 0 1 0 0 0 1" in html
    subjects = browser.text(browser.get("/subjects"))
    assert 'href="/subjects/1010001"' in subjects
    assert not BLINDED.search(visible_text(html)) and not ARM_CODES.search(transcript(html))
    # Every request the softphone sent passed the door's own signature check.
    assert len(checked) >= 5 and all(checked)
    answer = browser.post("/softphone/hang-up", {})
    assert answer.status_code == 200
    assert press(browser, "1").status_code == 409  # no call any more


def test_the_signature_check_stays_on(uat):
    unsigned = uat.app.test_client().post("/voice", data={
        "CallSid": "CA" + "1" * 32, "From": "+33655500101", "To": "+15005550006"})
    assert unsigned.status_code == 403


def test_without_the_door_token_the_softphone_says_the_door_refused(db, tmp_path):
    web = make_web(db, tmp_path)  # no TWILIO_AUTH_TOKEN, no --dev: every webhook is 403
    browser = web.as_role("site_coordinator")
    browser.get("/softphone")
    html = browser.text(browser.post("/softphone/dial", {}))
    assert "403" in html
    assert press(browser, "1").status_code == 409


def test_the_softphone_script_gets_json(uat):
    browser = uat.as_role("project_manager")  # English
    browser.get("/softphone")
    answer = browser.post("/softphone/dial", {}, headers={"Accept": "application/json"})
    data = answer.get_json()
    assert answer.status_code == 200 and data["reset"] and data["in_call"]
    assert data["waits"] == "digits" and data["secret"] is False
    assert any(line["who"] == "ivrs" and "user ID" in line["text"] for line in data["lines"])
    press(browser, "5006#", form_page="/softphone", headers={"Accept": "application/json"})
    data = press(browser, "246810#", form_page="/softphone",
                 headers={"Accept": "application/json"}).get_json()
    assert data["lines"][0] == {"who": "you", "text": "••••••#"}
    assert data["waits"] == "one"


def test_a_softphone_key_press_from_the_keypad_without_script(uat):
    browser = uat.as_role("project_manager")
    browser.get("/softphone")
    browser.post("/softphone/dial", {})
    browser.post("/softphone/press", {"keys": "5006#"})
    html = browser.text(browser.post("/softphone/press", {"keys": "246810#"}))
    assert "press 9" in html or "9." in html
    # A keypad button posts its own key, whatever is typed in the entry.
    html = browser.text(browser.post("/softphone/press", {"key": "9", "keys": ""}))
    assert "<li class=\"line-you\"><span class=\"who\">You:</span> 9</li>" in html


def test_bad_keys_are_refused_without_reaching_the_dialog(uat):
    browser = uat.as_role("site_coordinator")
    browser.get("/softphone")
    browser.post("/softphone/dial", {})
    assert press(browser, "12ab").status_code == 422


@pytest.mark.parametrize("path", ["/softphone/dial", "/softphone/press", "/softphone/hang-up"])
def test_a_softphone_post_without_its_csrf_token_is_refused(uat, path):
    browser = uat.as_role("site_coordinator")
    browser.get("/softphone")
    assert browser.post(path, {"keys": "1"}, csrf=False).status_code == 400
    assert "Saisissez" not in browser.text(browser.get("/softphone"))  # no call started


def test_a_new_call_ends_the_one_under_way(uat):
    browser = uat.as_role("site_coordinator")
    browser.get("/softphone")
    browser.post("/softphone/dial", {})
    first = uat.store.load("web-phone:" + _sid(browser))["call"]["call_sid"]
    browser.post("/softphone/dial", {})
    second = uat.store.load("web-phone:" + _sid(browser))["call"]["call_sid"]
    assert first != second
    assert uat.store.load("voice:" + first).get("ended")


def _sid(browser) -> str:
    with browser.http.session_transaction() as cookie:
        return cookie["sid"]
