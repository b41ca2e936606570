"""The dashboard page remembered (ivrs.web.dashboard): the same version read by
the same kind of reader in the same language is rendered once; a change, another
role, other sites or another language is another page; the audit state and the
page's frame are the request's own."""

from __future__ import annotations

import re

import pytest
from test_dashboard import _tamper
from test_web_pages import randomized_subject

from core.actors import ADMIN
from core.audit_checkpoints import record_verification
from core.subjects import screen_subject
from ivrs.web import dashboard as dashboard_view

SECRETS = re.compile(r"\b(KA|KP|LA1|LP1|Drug 10 mg|Placebo)\b")


@pytest.fixture
def renders(monkeypatch) -> list:
    """Each rendering of a dashboard's remembered part."""
    calls = []
    body = dashboard_view._body

    def counted(data):
        calls.append(data)
        return body(data)

    monkeypatch.setattr(dashboard_view, "_body", counted)
    return calls


def site_row(page: str, site: str) -> tuple[int, int]:
    """(screened, randomized) of a site's enrollment row."""
    found = re.search(rf'<th scope="row">{site} · [^<]*</th>\s*<td class="number">(\d+)</td>'
                      r'<td class="number">(\d+)</td>', page)
    return int(found.group(1)), int(found.group(2))


def test_the_same_version_is_rendered_once_and_a_change_shows_at_once(web, renders):
    manager = web.as_role("project_manager")
    first = manager.text(manager.get("/"))
    again = manager.text(manager.get("/"))
    assert len(renders) == 1 and site_row(again, "101") == site_row(first, "101")
    other = web.browser("5006")  # another browser of the same reader: the same page
    assert site_row(other.text(other.get("/")), "101") == site_row(first, "101")
    assert len(renders) == 1
    randomized_subject(web)  # at 101
    after = manager.text(manager.get("/"))
    screened, randomized = site_row(first, "101")
    assert site_row(after, "101") == (screened + 1, randomized + 1)
    assert len(renders) == 2


def test_a_blinded_reader_never_gets_the_unblinded_page(web, renders):
    randomized_subject(web)
    statistician = web.as_role("unblinded_statistician")
    assert SECRETS.search(statistician.text(statistician.get("/")))
    for role in ("project_manager", "site_coordinator", "admin"):
        browser = web.as_role(role)
        assert not SECRETS.search(browser.text(browser.get("/"))), role
    assert len(renders) == 4


def test_site_roles_of_different_sites_never_see_each_others(web, renders):
    randomized_subject(web)  # at 101
    randomized_subject(web, site="102", user="5005")
    at_101 = web.as_role("site_coordinator")
    at_102 = web.as_role("investigator_102")
    page_101 = at_101.text(at_101.get("/"))
    page_102 = at_102.text(at_102.get("/"))
    assert "101 · " in page_101 and "102 · " not in page_101
    assert "102 · " in page_102 and "101 · " not in page_102


def test_another_language_is_another_page(web, renders):
    english = web.as_role("site_coordinator")
    assert "Randomized" in english.text(english.get("/"))
    french = web.as_role("site_coordinator", language="fr")
    page = french.text(french.get("/"))
    assert "Tableau de bord" in page and "Randomisés" in page and "Randomized" not in page
    assert len(renders) == 2


def test_the_audit_state_and_the_frame_are_each_requests_own(web, renders):
    record_verification(web.db, actor=ADMIN)
    actor = web.browser().web.web_user("5001").actor
    screen_subject(web.db, site_code="101", actor=actor)  # a row after the checkpoint
    manager = web.as_role("project_manager")
    found = re.search(r"The audit chain is intact \((\d+) rows\)", manager.text(manager.get("/")))
    _tamper(web.db, int(found.group(1)))  # the newest row, in place: the same version
    broken = manager.text(manager.get("/"))
    assert len(renders) == 1  # the rest of the page as remembered
    assert 'class="error" role="status"' in broken and "intact" not in broken
    # Each browser's own CSRF token in the frame around the remembered part.
    other = web.as_role("project_manager")
    tokens = {re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
              for page in (broken, other.text(other.get("/")))}
    assert len(tokens) == 2
