"""Which pages each role has (SPEC §4, §11). The rules themselves are the core's:
every page calls a core service that refuses a role it does not serve; this
table only decides what the navigation offers and which pages answer 403 before
any service is asked, so that a page a role may not use is never half-drawn."""

from __future__ import annotations

from dataclasses import dataclass

from core.actors import ROLES, SITE_ROLES
from core.records import SHIPMENT_READERS, SUBJECT_READERS
from core.supply.records import KIT_READERS
from core.supply.shipments import SUPPLY_MANAGER_ROLES


@dataclass(frozen=True)
class Page:
    endpoint: str  # the Flask endpoint of the page
    label: str  # its message id in the navigation
    roles: frozenset[str]


PAGES: list[Page] = [
    Page("web.dashboard", "web.nav.dashboard", frozenset(ROLES)),
    Page("web.subjects", "web.nav.subjects", SUBJECT_READERS),
    Page("web.shipments", "web.nav.shipments", SHIPMENT_READERS),
    # admin: Actor.require lets the administrator do what every service does
    Page("web.quarantine", "web.nav.quarantine", SUPPLY_MANAGER_ROLES | {"admin"}),
    Page("web.kits", "web.nav.kits", KIT_READERS),
    Page("web.lots", "web.nav.lots", KIT_READERS),
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
