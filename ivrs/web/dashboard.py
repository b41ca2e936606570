"""The dashboard: the first page after signing in, for every role."""

from __future__ import annotations

from ivrs.web.base import blueprint, page


@blueprint.get("/")
def dashboard():
    return page("dashboard.html")
