"""The HTTP API for EDCs and other systems (SPEC §10): a blueprint at ``/api/v1``.

A door like the Twilio one: it turns JSON into calls of the core services the
phone uses and their results (or refusals) back into JSON, and holds no rule of
its own. The operations are declared in ``subjects``, ``supply``,
``oversight`` and ``fhir``; ``registry`` makes the routes and the OpenAPI
document from those declarations.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version

from flask import Blueprint, Response, current_app, request

from ivrs.api import fhir, oversight, subjects, supply  # noqa: F401 — they declare operations
from ivrs.api.problems import problem
from ivrs.api.registry import PREFIX, install, openapi_document

blueprint = Blueprint("api", __name__, url_prefix=PREFIX)
install(blueprint)


def _version() -> str:
    try:
        return version("ivrs")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0"


@blueprint.get("/openapi.json")
def openapi_json():
    """The document is made once per process: it depends on the code only."""
    document = current_app.extensions.get("ivrs.openapi")
    if document is None:
        document = json.dumps(openapi_document("ivrs API", _version()), ensure_ascii=False)
        current_app.extensions["ivrs.openapi"] = document
    return Response(document, mimetype="application/json")


@blueprint.app_errorhandler(404)
def _not_found(error):
    if request.path.startswith(PREFIX + "/") or request.path == PREFIX:
        return problem(404, "no_route", f"no such route: {request.path}")
    return error


@blueprint.app_errorhandler(405)
def _not_allowed(error):
    if request.path.startswith(PREFIX + "/"):
        allowed = ", ".join(sorted(error.valid_methods or ()))
        return problem(405, "method_not_allowed", f"{request.method} is not allowed here "
                       f"(allowed: {allowed})", headers={"Allow": allowed})
    return error
