"""Who is acting: the identity every service checks and every audit row names."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import NotFound, Refused
from core.models import User

# Roles that may see arms. Everyone else is blinded.
UNBLINDED_ROLES = frozenset({"unblinded_statistician"})
ROLES = frozenset({"site_coordinator", "investigator", "pharmacist", "project_manager",
                   "depot_manager", "unblinded_statistician", "admin"})
SITE_ROLES = frozenset({"site_coordinator", "investigator", "pharmacist"})
# Who administers users (SPEC §4: the admin role). A signed-in administrator has
# these rights and those of every role set that names "admin", nothing more.
ADMINISTRATORS = frozenset({"admin"})


@dataclass(frozen=True)
class Actor:
    """``user_code`` None means the operator at the CLI or a scheduled job (an
    administrator with every power: whoever runs the server can run any
    command), or an API client (``client``, its name), which acts with its
    role's rights. A *user* with the admin role (signed in on the web) is not
    the operator: they have only the rights their role is listed for."""

    role: str
    user_code: str | None = None
    site_codes: frozenset[str] | None = None  # None: every site
    channel: str = "cli"
    client: str | None = None

    @property
    def label(self) -> str:
        if self.client:
            return f"api:{self.client}"
        return f"user:{self.user_code}" if self.user_code else f"{self.channel}:admin"

    @property
    def blinded(self) -> bool:
        return self.role not in UNBLINDED_ROLES

    def may_act_at(self, site_code: str) -> bool:
        return self.site_codes is None or site_code in self.site_codes

    @property
    def is_operator(self) -> bool:
        return self.role == "admin" and self.user_code is None and self.client is None

    def require(self, roles: frozenset[str] | set[str], what: str) -> None:
        if not self.is_operator and self.role not in roles:
            raise Refused(f"role {self.role} may not {what}", code="not_allowed")

    def require_site(self, site_code: str) -> None:
        if not self.may_act_at(site_code):
            raise Refused(f"site {site_code} is not one of your sites", code="wrong_site")


ADMIN = Actor(role="admin")


def actor_for_user(session: Session, study_id: int, user_code: str, channel: str) -> Actor:
    user = session.execute(
        select(User).where(User.study_id == study_id, User.user_code == user_code)
    ).scalar_one_or_none()
    if user is None or not user.active:
        raise NotFound(f"no user {user_code}", code="unknown_user")
    sites = None if user.role not in SITE_ROLES else frozenset(s.code for s in user.sites)
    return Actor(role=user.role, user_code=user.user_code, site_codes=sites, channel=channel)
