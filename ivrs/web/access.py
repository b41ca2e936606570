"""Which pages each role has (SPEC §4, §11). The rules themselves are the core's:
every page calls a core service that refuses a role it does not serve; this
table only decides what the navigation offers and which pages answer 403 before
any service is asked, so that a page a role may not use is never half-drawn."""

from __future__ import annotations

from dataclasses import dataclass

from core.actors import ROLES, SITE_ROLES
from core.audit_trail import AUDIT_READERS
from core.gates import APPROVAL_READERS
from core.records import SHIPMENT_READERS, SUBJECT_READERS
from core.report_registry import REPORT_READERS
from core.subjects import ENROLLING_ROLES
from core.supply.dispensing import DISPENSING_ROLES
from core.supply.records import KIT_READERS
from core.supply.shipments import SUPPLY_MANAGER_ROLES
from core.user_directory import USER_ADMINISTRATORS

# The environment (``IVRS_ENV``) where the UAT-only pages exist, and those pages'
# endpoints (the softphone and the forms it posts).
UAT = "uat"
UAT_ONLY = frozenset({"web.softphone", "web.softphone_dial", "web.softphone_press",
                      "web.softphone_hang_up"})


@dataclass(frozen=True)
class Page:
    endpoint: str  # the Flask endpoint of the page
    label: str  # its message id in the navigation
    roles: frozenset[str]

    @property
    def uat_only(self) -> bool:  # offered, and answering, only when the server runs in UAT
        return self.endpoint in UAT_ONLY


PAGES: list[Page] = [
    Page("web.dashboard", "web.nav.dashboard", frozenset(ROLES)),
    Page("web.subjects", "web.nav.subjects", SUBJECT_READERS),
    Page("web.approvals", "web.nav.approvals", APPROVAL_READERS),
    Page("web.shipments", "web.nav.shipments", SHIPMENT_READERS),
    Page("web.quarantine", "web.nav.quarantine", SUPPLY_MANAGER_ROLES),
    Page("web.kits", "web.nav.kits", KIT_READERS),
    Page("web.lots", "web.nav.lots", KIT_READERS),
    Page("web.reports", "web.nav.reports", REPORT_READERS),
    Page("web.audit", "web.nav.audit", AUDIT_READERS),
    Page("web.users", "web.nav.users", USER_ADMINISTRATORS),
    # A phone in the browser that acts on the study: for acceptance testing, never production.
    Page("web.softphone", "web.nav.softphone", frozenset(ROLES)),
]


# Pages behind the navigation (forms that act), with the roles they answer. The
# core refuses any other role itself (a signed-in administrator included: only
# the operator at the CLI has every power, core.actors); this table keeps the
# others from a half-drawn form.
BEHIND: dict[str, frozenset[str]] = {
    "web.screen": ENROLLING_ROLES,
    "web.randomize": ENROLLING_ROLES,
    "web.status_change": ENROLLING_ROLES,
    "web.dispense": DISPENSING_ROLES,
    "web.replace": DISPENSING_ROLES,
    **{endpoint: USER_ADMINISTRATORS
       for endpoint in ("web.user_add", "web.user_detail", "web.user_lock", "web.user_unlock",
                        "web.user_reset_pin", "web.user_invite", "web.user_reset_totp")},
}


def pages_for(role: str, environment: str = UAT) -> list[Page]:
    return [page for page in PAGES
            if role in page.roles and (not page.uat_only or environment == UAT)]


def exists_in(endpoint: str, environment: str) -> bool:
    """Whether a route exists in this environment (a UAT-only one is a 404 elsewhere)."""
    return endpoint not in UAT_ONLY or environment == UAT


def may_open(role: str, endpoint: str) -> bool:
    if endpoint in BEHIND:
        return role in BEHIND[endpoint]
    for page in PAGES:
        if page.endpoint == endpoint:
            return role in page.roles
    return True  # a page not in the table checks its own rights (e.g. a subject's)


def is_site_role(role: str) -> bool:
    return role in SITE_ROLES
