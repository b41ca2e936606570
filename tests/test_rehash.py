"""A hash made under other argon2 parameters (a deployment raised the cost) is
replaced at the next successful sign-in, for phone PINs and web passwords
alike, audited as a rehash and not as a credential change; a failed sign-in
leaves it as it was."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher, Type
from sqlalchemy import select
from studyfiles import STUDY_YAML

from core import pins
from core.errors import Refused
from core.login import sign_in
from core.models import AuditEvent, User
from core.passwords import check_password, hash_password
from core.study_loader import load_study
from core.web_login import sign_in_password

PIN = "2468"  # user 5001's, in the example study
PASSWORD = "a long web password 4 tests"
# Cheaper than core.pins.HASHER: what a deployment stored before raising the cost.
OLDER = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1, hash_len=32,
                       salt_len=16, type=Type.ID)


@pytest.fixture
def study(db):
    load_study(db, STUDY_YAML)
    return db


def made_with_older_parameters(monkeypatch, make):
    with monkeypatch.context() as patched:
        patched.setattr(pins, "HASHER", OLDER)
        made = make()
    assert pins.needs_rehash(made) and not OLDER.check_needs_rehash(made)
    return made


def store(db, user_code: str, **hashes: str) -> None:
    with db.transaction() as session:
        user = session.scalars(select(User).where(User.user_code == user_code)).one()
        for column, value in hashes.items():
            setattr(user, column, value)


def user_row(db, user_code: str) -> User:
    with db.sessions() as session:
        return session.scalars(select(User).where(User.user_code == user_code)).one()


def rehash_rows(db) -> list[AuditEvent]:
    with db.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(
            AuditEvent.action == "credential_rehashed").order_by(AuditEvent.seq)))


def test_a_pin_hashed_under_older_parameters_is_rehashed_at_sign_in(study, monkeypatch):
    old = made_with_older_parameters(monkeypatch, lambda: pins.hash_pin(PIN))
    store(study, "5001", pin_hash=old, pin_temporary=True)
    sign_in(study, user_code="5001", pin=PIN, channel="voice")
    row = user_row(study, "5001")
    assert row.pin_hash != old and not pins.needs_rehash(row.pin_hash)
    assert pins.check_pin(row.pin_hash, PIN) and not pins.check_pin(row.pin_hash, "1111")
    assert row.pin_temporary  # the same PIN: still the temporary one it was
    (audited,) = rehash_rows(study)
    assert audited.actor == "user:5001" and audited.entity_id == "5001"
    assert audited.new == {"credential": "pin", "hash": "rehashed"}
    assert old not in str(audited.new) and row.pin_hash not in str(audited.new)
    # Current now: the next sign-in leaves it alone.
    sign_in(study, user_code="5001", pin=PIN, channel="sms")
    assert user_row(study, "5001").pin_hash == row.pin_hash and len(rehash_rows(study)) == 1


def test_a_wrong_pin_does_not_rehash(study, monkeypatch):
    old = made_with_older_parameters(monkeypatch, lambda: pins.hash_pin(PIN))
    store(study, "5001", pin_hash=old)
    with pytest.raises(Refused):
        sign_in(study, user_code="5001", pin="1111", channel="voice")
    assert user_row(study, "5001").pin_hash == old and rehash_rows(study) == []


def test_a_password_hashed_under_older_parameters_is_rehashed_at_sign_in(study, monkeypatch):
    old = made_with_older_parameters(monkeypatch, lambda: hash_password(PASSWORD))
    store(study, "5001", password_hash=old)
    signed = sign_in_password(study, user_code="5001", password=PASSWORD)
    assert signed.second_factor == "none"
    new = user_row(study, "5001").password_hash
    assert new != old and not pins.needs_rehash(new) and check_password(new, PASSWORD)
    (audited,) = rehash_rows(study)
    assert audited.new == {"credential": "password", "hash": "rehashed"}
    assert user_row(study, "5001").pin_hash is not None  # the PIN is not touched


def test_a_password_is_rehashed_before_the_second_factor_is_asked(study, monkeypatch):
    """A role with a second factor: the password was right, so its hash is
    replaced (and audited) though the sign-in is not complete yet."""
    old = made_with_older_parameters(monkeypatch, lambda: hash_password(PASSWORD))
    store(study, "5006", password_hash=old)
    signed = sign_in_password(study, user_code="5006", password=PASSWORD)
    assert signed.second_factor == "enrol"
    new = user_row(study, "5006").password_hash
    assert new != old and check_password(new, PASSWORD)
    assert [row.entity_id for row in rehash_rows(study)] == ["5006"]


def test_a_wrong_password_does_not_rehash(study, monkeypatch):
    old = made_with_older_parameters(monkeypatch, lambda: hash_password(PASSWORD))
    store(study, "5001", password_hash=old)
    with pytest.raises(Refused):
        sign_in_password(study, user_code="5001", password="not the password at all")
    assert user_row(study, "5001").password_hash == old and rehash_rows(study) == []
    assert user_row(study, "5001").failed_attempts == 1


def test_a_current_hash_is_not_rehashed(study):
    store(study, "5001", password_hash=hash_password(PASSWORD))
    before = user_row(study, "5001").password_hash
    sign_in_password(study, user_code="5001", password=PASSWORD)
    sign_in(study, user_code="5001", pin=PIN, channel="voice")
    assert user_row(study, "5001").password_hash == before and rehash_rows(study) == []


def test_only_a_right_secret_can_be_rehashed():
    old = OLDER.hash("something")
    assert pins.rehashed(old, "") is None and pins.rehashed(None, PIN) is None
    assert pins.rehashed("not an argon2 hash", PIN) is None
    assert pins.rehashed(pins.hash_pin(PIN), PIN) is None  # current parameters
