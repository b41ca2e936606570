"""The terminal's, the demo's and the tests' telephone: ``ivrs.render.phone``
(moved there so that the web console's softphone drives ``/voice`` with the
same code); its names stay importable from here."""

from ivrs.render.phone import (  # noqa: F401 — re-exported
    AppTransport,
    Heard,
    HttpTransport,
    Phone,
    Transport,
    parse_twiml,
)
