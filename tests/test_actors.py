"""Who may do what: the operator at the CLI (or a scheduled job) has every power;
a user signed in with the admin role has only what the admin role is listed for
(SPEC §4: administration), whichever door they came in by."""

from __future__ import annotations

import pytest
from studyfiles import STUDY_YAML, snapshot

from core.actors import ADMIN, Actor
from core.errors import Refused
from core.study_loader import load_study
from core.subjects import screen_subject
from core.users import add_user, set_locked


@pytest.fixture
def study(db):
    load_study(db, STUDY_YAML)
    return db


def test_the_operator_is_the_admin_without_a_user_code():
    assert ADMIN.is_operator
    assert not Actor(role="admin", user_code="9001", channel="web").is_operator
    assert not Actor(role="admin", client="edc").is_operator
    assert not Actor(role="project_manager").is_operator


def test_a_signed_in_administrator_acts_at_no_site(study):
    admin_user = Actor(role="admin", user_code="9001", channel="web")
    before = snapshot(study)
    with pytest.raises(Refused, match="role admin may not screen subjects") as refused:
        screen_subject(study, site_code="101", actor=admin_user)
    assert refused.value.code == "not_allowed"
    assert snapshot(study) == before
    # the operator at the CLI may (whoever runs the server can run any command)
    assert screen_subject(study, site_code="101", actor=ADMIN).subject_number == "1010001"


def test_a_signed_in_administrator_administers_users(study):
    admin_user = Actor(role="admin", user_code="9001", channel="web")
    add_user(study, user_code="7701", name="New Coordinator", role="site_coordinator",
             sites=["101"], phone=None, language=None, pin="4826", actor=admin_user)
    set_locked(study, user_code="7701", locked=True, actor=admin_user, reason="left the site")
    coordinator = Actor(role="site_coordinator", user_code="5001", site_codes=frozenset({"101"}))
    with pytest.raises(Refused, match="may not add users"):
        add_user(study, user_code="7702", name="Someone", role="site_coordinator",
                 sites=["101"], phone=None, language=None, pin="4826", actor=coordinator)
