"""Errors as RFC 9457 problem details (``application/problem+json``).

Each carries the stable ``code`` the phone speaks too (``not_screened``,
``stratum_exhausted``, ``wrong_site`` ...): the core raises it, and only the
HTTP status is chosen here, from the kind of error: bad input 400/422, no or
bad token 401, a role or a site 403, an unknown thing 404, the state of the
trial 409. The ``detail`` is the core's message, which is written for blinded
readers (the phone reads the same refusals aloud).
"""

from __future__ import annotations

import json

from flask import Response

from core.audit import UNBLINDED_KEYS
from core.errors import IvrsError
from ivrs.render.refusal_status import status_for  # one choice of status for every door

PROBLEM = "application/problem+json"
TYPE_PREFIX = "urn:ivrs:problem:"

TITLES = {400: "Bad request", 401: "Not authenticated", 403: "Not allowed", 404: "Not found",
          405: "Method not allowed", 409: "Conflict with the trial's state",
          413: "Request body too large", 415: "Unsupported media type",
          422: "Invalid input", 500: "Internal error"}
BLINDED_OUT = UNBLINDED_KEYS | {"lot", "lots", "kit_types"}


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return str(value)


def problem_body(status: int, code: str, detail: str, **extra) -> dict:
    body = {"type": TYPE_PREFIX + code, "title": TITLES.get(status, "Error"), "status": status,
            "code": code, "detail": detail}
    body.update({key: _jsonable(value) for key, value in extra.items() if value is not None})
    return body


def problem(status: int, code: str, detail: str, *, headers: dict | None = None,
            **extra) -> Response:
    return problem_response(status, problem_body(status, code, detail, **extra), headers)


def problem_response(status: int, body: dict, headers: dict | None = None) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status=status, mimetype=PROBLEM,
                    headers=headers)


def from_error(error: IvrsError) -> tuple[int, dict]:
    status = status_for(error)
    # Refusal parameters name subjects, kits and questions; never let a key that
    # could carry allocation through, whatever a future refusal puts in them.
    params = {key: value for key, value in error.params.items() if key not in BLINDED_OUT}
    return status, problem_body(status, error.code, str(error), params=params or None)
