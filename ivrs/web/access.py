"""Which pages each role has (SPEC §4, §11). The rules themselves are the core's:
every page calls a core service that refuses a role it does not serve; this
table only decides what the navigation offers and which pages answer 403 before
any service is asked, so that a page a role may not use is never half-drawn."""

from __future__ import annotations

from dataclasses import dataclass

from core.actors import ROLES, SITE_ROLES
from core.audit_trail import AUDIT_READERS
from core.gates import APPROVAL_READERS
from core.records import SUBJECT_READERS
from core.report_registry import REPORT_READERS


@dataclass(frozen=True)
class Page:
    endpoint: str  # the Flask endpoint of the page
    label: str  # its message id in the navigation
    roles: frozenset[str]


PAGES: list[Page] = [
    Page("web.dashboard", "web.nav.dashboard", frozenset(ROLES)),
    Page("web.subjects", "web.nav.subjects", SUBJECT_READERS),
    Page("web.approvals", "web.nav.approvals", APPROVAL_READERS),
    Page("web.reports", "web.nav.reports", REPORT_READERS),
    Page("web.audit", "web.nav.audit", AUDIT_READERS),
]


def pages_for(role: str) -> list[Page]:
    return [page for page in PAGES if role in page.roles]


def may_open(role: str, endpoint: str) -> bool:
    for page in PAGES:
        if page.endpoint == endpoint:
            return role in page.roles
    return True  # a page not in the table checks its own rights (e.g. a subject's)


def is_site_role(role: str) -> bool:
    return role in SITE_ROLES
