"""Which pages each role has (SPEC §4, §11). The rules themselves are the core's:
every page calls a core service that refuses a role it does not serve; this
table only decides what the navigation offers and which pages answer 403 before
any service is asked, so that a page a role may not use is never half-drawn."""

from __future__ import annotations

from dataclasses import dataclass

from core.actors import ROLES, SITE_ROLES
from core.records import SUBJECT_READERS
from core.subjects import ENROLLING_ROLES
from core.supply.dispensing import DISPENSING_ROLES


@dataclass(frozen=True)
class Page:
    endpoint: str  # the Flask endpoint of the page
    label: str  # its message id in the navigation
    roles: frozenset[str]


PAGES: list[Page] = [
    Page("web.dashboard", "web.nav.dashboard", frozenset(ROLES)),
    Page("web.subjects", "web.nav.subjects", SUBJECT_READERS),
]


# Pages that act (not in the navigation), with the roles the core serves them for.
# The core refuses any other role itself; this table keeps the others from a
# half-drawn form, and keeps out the administrator, whom the core lets do
# anything (the CLI operator's powers) but whose role acts at no site (SPEC §4).
ACTIONS: dict[str, frozenset[str]] = {
    "web.screen": ENROLLING_ROLES,
    "web.randomize": ENROLLING_ROLES,
    "web.status_change": ENROLLING_ROLES,
    "web.dispense": DISPENSING_ROLES,
    "web.replace": DISPENSING_ROLES,
}


def pages_for(role: str) -> list[Page]:
    return [page for page in PAGES if role in page.roles]


def may_open(role: str, endpoint: str) -> bool:
    for page in PAGES:
        if page.endpoint == endpoint:
            return role in page.roles
    if endpoint in ACTIONS:
        return role in ACTIONS[endpoint]
    return True  # a page not in the table checks its own rights (e.g. a subject's)


def is_site_role(role: str) -> bool:
    return role in SITE_ROLES
