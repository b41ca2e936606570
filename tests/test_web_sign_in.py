"""The web console's sign-in rules (core.web_login, core.web_accounts, SPEC §11):
passwords and their policy, the TOTP second factor with replay refused, one-time
invites, the lockout shared with the phone, the password e-signature; and on
PostgreSQL, simultaneous wrong passwords counted exactly."""

from __future__ import annotations

import threading
from datetime import date, timedelta

import pyotp
import pytest
from factories import make_study
from sqlalchemy import select
from studyfiles import snapshot

from core import totp
from core.actors import ADMIN, Actor
from core.errors import IvrsError, NotFound, Refused
from core.lockout import MAX_FAILED_ATTEMPTS
from core.login import sign_in
from core.models import AuditEvent, User, UserInvite
from core.passwords import check_password, hash_password, password_problem
from core.signatures import require_signature, sign_with_password
from core.users import add_user, set_locked
from core.web_login import (
    WebSignIn,
    enrol_totp,
    invite,
    invited_user,
    new_totp_secret,
    redeem_invite,
    reset_totp,
    set_password,
    sign_in_password,
    study_options,
    totp_required,
    totp_uri,
    verify_totp,
)

PASSWORD = "correct horse battery staple"
COORDINATOR, MANAGER, PHARMACIST = "5001", "7001", "6001"
PIN = "2468"


@pytest.fixture
def study(db):
    make_study(db, code="W-1")
    for code, role, sites in ((COORDINATOR, "site_coordinator", ["101"]),
                              (MANAGER, "project_manager", []),
                              (PHARMACIST, "pharmacist", ["101", "102"])):
        add_user(db, user_code=code, name=f"User {code}", role=role, sites=sites, phone=None,
                 language=None, pin=PIN, actor=ADMIN)
    return db


@pytest.fixture
def with_passwords(study):
    for code in (COORDINATOR, MANAGER, PHARMACIST):
        set_password(study, user_code=code, password=PASSWORD, actor=ADMIN)
    return study


def user_row(db, user_code: str) -> User:
    with db.reads() as session:
        return session.scalars(select(User).where(User.user_code == user_code)).one()


def audit(db, action: str | None = None) -> list[AuditEvent]:
    with db.reads() as session:
        query = select(AuditEvent).order_by(AuditEvent.seq)
        if action:
            query = query.where(AuditEvent.action == action)
        return list(session.scalars(query))


def refused(expected: str, call, /, *args, **kwargs) -> IvrsError:
    with pytest.raises(IvrsError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == expected, caught.value
    return caught.value


def unchanged(db, expected: str, call, /, *args, **kwargs) -> IvrsError:
    """``call`` is refused with ``expected`` and leaves every table as it was."""
    before = snapshot(db)
    error = refused(expected, call, *args, **kwargs)
    assert snapshot(db) == before
    return error


class Clock:
    """The wall clock TOTP codes are made for, moved by hand."""

    def __init__(self, monkeypatch):
        self.now = 1_800_000_000.0
        monkeypatch.setattr(totp, "wall_clock", lambda: self.now)

    def code(self, secret: str, steps: int = 0) -> str:
        return pyotp.TOTP(secret).at(self.now + steps * totp.INTERVAL)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    return Clock(monkeypatch)


def enrolled(db, clock, user_code: str) -> str:
    secret = new_totp_secret()
    sign_in_password(db, user_code=user_code, password=PASSWORD)
    enrol_totp(db, user_code=user_code, secret=secret, code=clock.code(secret))
    clock.advance(totp.INTERVAL)
    return secret


# --- passwords ------------------------------------------------------------------------


def test_password_hashes_are_argon2id_peppered_and_normalized():
    hashed = hash_password(PASSWORD)
    assert hashed.startswith("$argon2id$") and PASSWORD not in hashed
    assert check_password(hashed, PASSWORD)
    assert not check_password(hashed, PASSWORD + "!") and not check_password(None, PASSWORD)
    # é composed (U+00E9) and decomposed (e + U+0301) are one password
    composed = hash_password("caf\u00e9 au lait noir")
    assert check_password(composed, "cafe\u0301 au lait noir")


@pytest.mark.parametrize("password, problem", [
    ("short one", "at least 12"),
    ("x" * 129, "at most 128"),
    ("123456789012", "the user ID"),
    ("aaaaaaaaaaaaaa", "repeated"),
    ("abcabcabcabc", "repeated"),
    ("123456789012123456789012", "the user ID"),
    ("Password1234", "most common"),
    ("QWERTYUIOP12", "most common"),
])
def test_password_policy_refusals(password, problem):
    assert problem in password_problem(password, "123456789012")


def test_password_policy_accepts_long_passphrases():
    assert password_problem(PASSWORD, "5001") is None
    assert password_problem("é" * 11 + "ü", "5001") is None  # characters, not bytes
    assert "repeated" in password_problem("z" * 11 + "Z", "5001")  # case does not help


def test_set_password_is_audited_without_the_value(study):
    set_password(study, user_code=COORDINATOR, password=PASSWORD, actor=ADMIN)
    assert check_password(user_row(study, COORDINATOR).password_hash, PASSWORD)
    row = audit(study, "password_set")[-1]
    assert (row.entity_id, row.actor, row.old, row.new) == (
        COORDINATOR, "cli:admin", {"password": "none"}, {"password": "set"})
    assert PASSWORD not in str([(r.old, r.new, r.reason) for r in audit(study)])


def test_set_password_refusals_change_nothing(study):
    unchanged(study, "weak_password", set_password, study, user_code=COORDINATOR,
              password="too short", actor=ADMIN)
    unchanged(study, "weak_password", set_password, study, user_code=COORDINATOR,
              password=COORDINATOR * 3, actor=ADMIN)
    unchanged(study, "unknown_user", set_password, study, user_code="9999",
              password=PASSWORD, actor=ADMIN)
    unchanged(study, "not_allowed", set_password, study, user_code=COORDINATOR,
              password=PASSWORD, actor=Actor(role="project_manager", user_code=MANAGER))


# --- password sign-in -----------------------------------------------------------------


def test_a_site_role_signs_in_with_the_password_alone(with_passwords):
    db = with_passwords
    signed = sign_in_password(db, user_code=PHARMACIST, password=PASSWORD)
    assert signed == WebSignIn(study="W-1", user_code=PHARMACIST, name=f"User {PHARMACIST}",
                               role="pharmacist", site_codes=("101", "102"), language="en",
                               second_factor="none")
    row = audit(db, "signed_in")[-1]
    assert (row.actor, row.new["channel"]) == (f"user:{PHARMACIST}", "web")


def test_wrong_password_unknown_user_and_no_password_all_say_bad_credentials(study):
    set_password(study, user_code=COORDINATOR, password=PASSWORD, actor=ADMIN)
    wrong = refused("bad_credentials", sign_in_password, study, user_code=COORDINATOR,
                    password=PASSWORD + "x")
    unknown = unchanged(study, "bad_credentials", sign_in_password, study, user_code="9999",
                        password=PASSWORD)
    no_password = refused("bad_credentials", sign_in_password, study, user_code=MANAGER,
                          password=PASSWORD)
    not_digits = unchanged(study, "bad_credentials", sign_in_password, study,
                           user_code="x' OR 1=1", password=PASSWORD)
    assert str(wrong) == str(unknown) == str(no_password) == str(not_digits)
    assert user_row(study, COORDINATOR).failed_attempts == 1
    assert user_row(study, MANAGER).failed_attempts == 1  # a real user's wrong secret
    failed = audit(study, "password_failed")
    assert [(r.entity_id, r.new) for r in failed] == [
        (COORDINATOR, {"failed_attempts": 1, "locked": False, "channel": "web"}),
        (MANAGER, {"failed_attempts": 1, "locked": False, "channel": "web"})]


def test_three_wrong_passwords_lock_and_a_locked_user_is_refused(with_passwords, caplog):
    db = with_passwords
    for _ in range(MAX_FAILED_ATTEMPTS - 1):
        refused("bad_credentials", sign_in_password, db, user_code=COORDINATOR, password="nope",
                request_id="req-1")
    refused("locked", sign_in_password, db, user_code=COORDINATOR, password="nope",
            request_id="req-1")
    assert '"event": "lockout"' in caplog.text and '"request": "req-1"' in caplog.text
    assert user_row(db, COORDINATOR).locked
    # the right password changes nothing now
    unchanged(db, "locked", sign_in_password, db, user_code=COORDINATOR, password=PASSWORD)


def test_the_lockout_is_shared_with_the_phone(with_passwords):
    db = with_passwords
    for _ in range(2):
        refused("bad_credentials", sign_in, db, user_code=COORDINATOR, pin="0000",
                channel="voice")
    refused("locked", sign_in_password, db, user_code=COORDINATOR, password="wrong password")
    assert user_row(db, COORDINATOR).locked
    refused("locked", sign_in, db, user_code=COORDINATOR, pin=PIN, channel="sms")


def test_the_phone_is_locked_by_web_failures_too(with_passwords):
    db = with_passwords
    refused("bad_credentials", sign_in_password, db, user_code=PHARMACIST, password="a")
    refused("bad_credentials", sign_in_password, db, user_code=PHARMACIST, password="b")
    refused("locked", sign_in, db, user_code=PHARMACIST, pin="0000", channel="voice")


def test_a_right_password_resets_the_count_when_no_second_factor(with_passwords):
    db = with_passwords
    refused("bad_credentials", sign_in_password, db, user_code=COORDINATOR, password="a")
    sign_in_password(db, user_code=COORDINATOR, password=PASSWORD)
    assert user_row(db, COORDINATOR).failed_attempts == 0


def test_deactivated_and_locked_users_are_refused(with_passwords):
    db = with_passwords
    with db.transaction() as session:
        session.execute(User.__table__.update().where(User.user_code == PHARMACIST)
                        .values(active=False))
    unchanged(db, "bad_credentials", sign_in_password, db, user_code=PHARMACIST,
              password=PASSWORD)
    set_locked(db, user_code=COORDINATOR, locked=True, actor=ADMIN, reason="test")
    unchanged(db, "locked", sign_in_password, db, user_code=COORDINATOR, password=PASSWORD)


# --- TOTP -----------------------------------------------------------------------------


def test_which_roles_need_a_second_factor():
    for role in ("project_manager", "depot_manager", "unblinded_statistician", "admin"):
        assert totp_required(role, {}) and totp_required(role, None)
    for role in ("site_coordinator", "investigator", "pharmacist"):
        assert not totp_required(role, {})
        assert not totp_required(role, {"web": {"totp_for_site_roles": False}})
        assert totp_required(role, {"web": {"totp_for_site_roles": True}})
        assert totp_required(role, {"totp_for_site_roles": True})  # the section itself


def test_totp_uri_names_the_issuer_and_the_user():
    secret = new_totp_secret()
    assert totp.is_valid_secret(secret)
    uri = totp_uri(secret, user_code="7001", study="ABC-301")
    assert uri.startswith("otpauth://totp/ivrs%20ABC-301:7001?")
    assert f"secret={secret}" in uri and "issuer=ivrs%20ABC-301" in uri


def test_a_manager_enrols_then_verifies(with_passwords, clock):
    db = with_passwords
    first = sign_in_password(db, user_code=MANAGER, password=PASSWORD)
    assert first.second_factor == "enrol"
    assert audit(db, "signed_in") == []  # not yet: the second factor is missing
    secret = new_totp_secret()
    enrol_totp(db, user_code=MANAGER, secret=secret, code=clock.code(secret))
    user = user_row(db, MANAGER)
    assert user.totp_secret == secret and user.totp_last_step == totp.current_step(clock.now)
    assert [r.action for r in audit(db)[-2:]] == ["totp_enrolled", "signed_in"]
    assert secret not in str([(r.old, r.new) for r in audit(db)])

    clock.advance(totp.INTERVAL)
    assert sign_in_password(db, user_code=MANAGER, password=PASSWORD).second_factor == "verify"
    verify_totp(db, user_code=MANAGER, code=clock.code(secret))
    row = audit(db, "signed_in")[-1]
    assert (row.actor, row.new) == (f"user:{MANAGER}",
                                    {"channel": "web", "factors": "password+totp"})


def test_a_code_used_once_is_refused_the_second_time(with_passwords, clock):
    db = with_passwords
    secret = enrolled(db, clock, MANAGER)
    code = clock.code(secret)
    verify_totp(db, user_code=MANAGER, code=code)
    refused("bad_totp", verify_totp, db, user_code=MANAGER, code=code)
    # an older code (the step before, still within the window) is a replay too
    refused("bad_totp", verify_totp, db, user_code=MANAGER, code=clock.code(secret, -1))
    assert user_row(db, MANAGER).failed_attempts == 2


def test_codes_within_one_step_are_accepted_others_not(with_passwords, clock):
    db = with_passwords
    secret = enrolled(db, clock, MANAGER)
    verify_totp(db, user_code=MANAGER, code=clock.code(secret, +1))  # a phone a little fast
    clock.advance(10 * totp.INTERVAL)
    refused("bad_totp", verify_totp, db, user_code=MANAGER, code=clock.code(secret, -2))
    refused("bad_totp", verify_totp, db, user_code=MANAGER, code=clock.code(secret, +2))
    spaced = clock.code(secret)
    verify_totp(db, user_code=MANAGER, code=f"{spaced[:3]} {spaced[3:]}")


def test_wrong_and_malformed_codes_count_toward_the_shared_lockout(with_passwords, clock):
    db = with_passwords
    secret = enrolled(db, clock, MANAGER)
    refused("bad_totp", verify_totp, db, user_code=MANAGER, code="12345")
    refused("bad_credentials", sign_in, db, user_code=MANAGER, pin="0000", channel="voice")
    refused("locked", verify_totp, db, user_code=MANAGER, code="abcdef")
    assert [r.action for r in audit(db) if r.action.endswith("_failed")] == [
        "totp_failed", "pin_failed", "totp_failed"]
    unchanged(db, "locked", verify_totp, db, user_code=MANAGER, code=clock.code(secret))


def test_a_pending_second_factor_keeps_the_failure_count(with_passwords, clock):
    db = with_passwords
    secret = enrolled(db, clock, MANAGER)
    refused("bad_credentials", sign_in_password, db, user_code=MANAGER, password="wrong")
    sign_in_password(db, user_code=MANAGER, password=PASSWORD)
    assert user_row(db, MANAGER).failed_attempts == 1  # the code is still to come
    verify_totp(db, user_code=MANAGER, code=clock.code(secret))
    assert user_row(db, MANAGER).failed_attempts == 0


def test_enrolment_refusals(with_passwords, clock):
    db = with_passwords
    secret = new_totp_secret()
    refused("bad_totp", enrol_totp, db, user_code=MANAGER, secret=secret,
            code=clock.code(new_totp_secret()))
    user = user_row(db, MANAGER)
    assert user.totp_secret is None and user.failed_attempts == 1
    unchanged(db, "bad_totp_secret", enrol_totp, db, user_code=MANAGER, secret="not base32!",
              code="123456")
    unchanged(db, "totp_not_enrolled", verify_totp, db, user_code=MANAGER, code="123456")
    enrol_totp(db, user_code=MANAGER, secret=secret, code=clock.code(secret))
    clock.advance(totp.INTERVAL)
    other = new_totp_secret()
    unchanged(db, "totp_enrolled_already", enrol_totp, db, user_code=MANAGER, secret=other,
              code=clock.code(other))
    unchanged(db, "bad_credentials", verify_totp, db, user_code="9999", code="123456")


def test_an_enrolled_site_role_is_asked_for_the_code(with_passwords, clock):
    db = with_passwords
    secret = new_totp_secret()
    enrol_totp(db, user_code=COORDINATOR, secret=secret, code=clock.code(secret))
    assert sign_in_password(db, user_code=COORDINATOR,
                            password=PASSWORD).second_factor == "verify"


def test_reset_totp_makes_the_next_sign_in_enrol(with_passwords, clock):
    db = with_passwords
    enrolled(db, clock, MANAGER)
    reset_totp(db, user_code=MANAGER, actor=ADMIN)
    user = user_row(db, MANAGER)
    assert user.totp_secret is None and user.totp_last_step is None
    assert sign_in_password(db, user_code=MANAGER, password=PASSWORD).second_factor == "enrol"
    row = audit(db, "totp_reset")[-1]
    assert (row.old, row.new) == ({"totp": "enrolled"}, {"totp": "none"})
    unchanged(db, "unknown_user", reset_totp, db, user_code="9999", actor=ADMIN)
    unchanged(db, "not_allowed", reset_totp, db, user_code=MANAGER,
              actor=Actor(role="project_manager", user_code=MANAGER))


def test_the_study_option_asks_site_roles_for_a_code(db):
    make_study(db, code="W-2", config={"web": {"totp_for_site_roles": True}})
    add_user(db, user_code=COORDINATOR, name="C", role="site_coordinator", sites=["101"],
             phone=None, language=None, pin=PIN, actor=ADMIN)
    set_password(db, user_code=COORDINATOR, password=PASSWORD, actor=ADMIN)
    assert study_options(db)["web"] == {"totp_for_site_roles": True}
    assert sign_in_password(db, user_code=COORDINATOR, password=PASSWORD).second_factor == "enrol"


# --- invites --------------------------------------------------------------------------


def test_an_invite_sets_the_password_once(study):
    token = invite(study, user_code=MANAGER, actor=ADMIN)
    with study.reads() as session:
        stored = session.scalars(select(UserInvite)).one()
    assert token not in stored.token_digest and len(stored.token_digest) == 64
    assert token not in str([(r.old, r.new) for r in audit(study)])
    assert invited_user(study, token=token) == MANAGER
    assert redeem_invite(study, token=token, password=PASSWORD) == MANAGER
    assert check_password(user_row(study, MANAGER).password_hash, PASSWORD)
    assert [r.action for r in audit(study)[-2:]] == ["invite_redeemed", "password_set"]
    assert audit(study)[-1].actor == f"user:{MANAGER}"
    unchanged(study, "invite_invalid", invited_user, study, token=token)
    unchanged(study, "invite_invalid", redeem_invite, study, token=token,
              password="another long passphrase")


def test_a_weak_password_leaves_the_invite_usable(study):
    token = invite(study, user_code=MANAGER, actor=ADMIN)
    unchanged(study, "weak_password", redeem_invite, study, token=token, password="short")
    assert redeem_invite(study, token=token, password=PASSWORD) == MANAGER


def test_an_invite_expires(study, monkeypatch):
    token = invite(study, user_code=MANAGER, actor=ADMIN)
    monkeypatch.setenv("IVRS_TODAY", (date.today() + timedelta(days=2)).isoformat())
    assert invited_user(study, token=token) == MANAGER
    monkeypatch.setenv("IVRS_TODAY", (date.today() + timedelta(days=4)).isoformat())
    unchanged(study, "invite_invalid", invited_user, study, token=token)
    unchanged(study, "invite_invalid", redeem_invite, study, token=token, password=PASSWORD)


def test_a_new_invite_voids_the_older_one(study):
    first = invite(study, user_code=MANAGER, actor=ADMIN)
    second = invite(study, user_code=MANAGER, actor=ADMIN, valid_for=timedelta(hours=1))
    assert audit(study, "user_invited")[-1].new["earlier_invites_voided"] == 1
    unchanged(study, "invite_invalid", redeem_invite, study, token=first, password=PASSWORD)
    assert redeem_invite(study, token=second, password=PASSWORD) == MANAGER


def test_invite_refusals(study):
    for token in ("", "x" * 500, "not-a-token", None):
        unchanged(study, "invite_invalid", invited_user, study, token=token)
    unchanged(study, "unknown_user", invite, study, user_code="9999", actor=ADMIN)
    unchanged(study, "not_allowed", invite, study, user_code=MANAGER,
              actor=Actor(role="project_manager", user_code=MANAGER))
    token = invite(study, user_code=MANAGER, actor=ADMIN)
    unchanged(study, "invite_invalid", invited_user, study, token=token, study="OTHER")
    set_locked(study, user_code=MANAGER, locked=True, actor=ADMIN, reason="test")
    unchanged(study, "locked", redeem_invite, study, token=token, password=PASSWORD)
    with study.transaction() as session:
        session.execute(User.__table__.update().where(User.user_code == MANAGER)
                        .values(active=False))
    unchanged(study, "invite_invalid", invited_user, study, token=token)


def test_an_invite_finds_its_study_among_several(study):
    make_study(study, code="W-2")
    token = invite(study, user_code=MANAGER, actor=ADMIN, study="W-1")
    assert invited_user(study, token=token) == MANAGER
    assert redeem_invite(study, token=token, password=PASSWORD) == MANAGER
    with pytest.raises(NotFound):
        sign_in_password(study, user_code=MANAGER, password=PASSWORD)  # which study?
    assert sign_in_password(study, user_code=MANAGER, password=PASSWORD, study="W-1")


# --- the password e-signature ---------------------------------------------------------


def test_a_password_signature_is_a_signature(with_passwords):
    db = with_passwords
    actor = Actor(role="investigator", user_code=COORDINATOR, channel="web")
    signature = sign_with_password(db, password=PASSWORD, actor=actor, meaning="approve 12")
    assert (signature.user_code, signature.meaning) == (COORDINATOR, "approve 12")
    assert require_signature(signature, actor) is signature
    row = audit(db, "signed")[-1]
    assert (row.reason, row.new) == ("approve 12", {"channel": "web", "meaning": "approve 12",
                                                    "components": "password"})


def test_wrong_signature_passwords_count_toward_the_lockout(with_passwords):
    db = with_passwords
    actor = Actor(role="site_coordinator", user_code=COORDINATOR, channel="web")
    refused("bad_credentials", sign_with_password, db, password="x", actor=actor, meaning="m")
    refused("bad_credentials", sign_in, db, user_code=COORDINATOR, pin="0000", channel="voice")
    refused("locked", sign_with_password, db, password="y", actor=actor, meaning="m")
    unchanged(db, "locked", sign_with_password, db, password=PASSWORD, actor=actor, meaning="m")
    unchanged(db, "not_allowed", sign_with_password, db, password=PASSWORD, actor=ADMIN,
              meaning="m")


def test_a_user_without_a_password_cannot_sign_by_password(study):
    actor = Actor(role="project_manager", user_code=MANAGER, channel="web")
    refused("bad_credentials", sign_with_password, study, password=PASSWORD, actor=actor,
            meaning="m")
    assert user_row(study, MANAGER).failed_attempts == 1


# --- PostgreSQL: simultaneous wrong passwords -----------------------------------------


@pytest.mark.postgres
def test_simultaneous_wrong_passwords_lock_exactly(pg_db):
    make_study(pg_db, code="W-1")
    add_user(pg_db, user_code=MANAGER, name="M", role="project_manager", sites=[], phone=None,
             language=None, pin=PIN, actor=ADMIN)
    set_password(pg_db, user_code=MANAGER, password=PASSWORD, actor=ADMIN)
    clients = 8
    start = threading.Barrier(clients)
    codes: list[str] = []
    lock = threading.Lock()

    def attempt(index: int) -> None:
        start.wait()
        try:
            sign_in_password(pg_db, user_code=MANAGER, password=f"wrong password {index}")
        except Refused as refusal:
            with lock:
                codes.append(refusal.code)

    threads = [threading.Thread(target=attempt, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive(), "a sign-in hung (lock wait?)"
    # The first three are counted (the third locks); the five after find the user locked.
    assert sorted(codes) == sorted(["bad_credentials"] * (MAX_FAILED_ATTEMPTS - 1)
                                   + ["locked"] * (clients - MAX_FAILED_ATTEMPTS + 1))
    user = user_row(pg_db, MANAGER)
    assert (user.failed_attempts, user.locked) == (MAX_FAILED_ATTEMPTS, True)
    failed = audit(pg_db, "password_failed")
    assert [r.new["failed_attempts"] for r in failed] == [1, 2, 3]
    assert [r.new["locked"] for r in failed] == [False, False, True]
