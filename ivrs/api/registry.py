"""One table of operations that both serves ``/api/v1`` and describes it.

Each operation is declared once with ``@operation(...)``: its method and path,
its pydantic models (query, body, answer) and the problems it may answer. The
Flask routes are made from that table, and so is the OpenAPI 3.1 document, so
what is documented is what is served: the same models validate the requests,
shape the answers and give the JSON Schemas (pydantic writes JSON Schema
2020-12, which is OpenAPI 3.1's own dialect).

Why not flask-openapi3 or spectree: the first wants its own Flask subclass for
the whole application, which the Twilio door and the console share; the second
answers validation errors in its own format, where SPEC §10 wants problem+json
with our codes. Both would still leave us pydantic for the models, which is the
part that writes the schemas.

Every request goes the same way (``_serve``): the bearer token, the path, query
and body checked against their models, the ``Idempotency-Key`` of a POST (a
retry gets the first answer back), then the handler, which calls one core
service; a refusal of the core becomes a problem with its code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from flask import Blueprint, Response, current_app, request
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import wrap_file

from core.api_clients import Authenticated, authenticate
from core.api_requests import MAX_KEY, service_key, store_answer, stored_answer
from core.db import Database
from core.errors import IvrsError
from ivrs.api.problems import PROBLEM, from_error, problem, problem_response

log = logging.getLogger("ivrs.api")

PREFIX = "/api/v1"
MAX_BODY = 1024 * 1024  # 1 MiB: a bigger body is refused with 413 before it is read
KEY_PATTERN = re.compile(rf"^[\x21-\x7e]{{1,{MAX_KEY}}}$")
# Answers kept for a retry under the same key: successes and the core's
# refusals; not a bad body (a retry may fix it) nor anything before the handler.
KEPT = frozenset({200, 201, 403, 404, 409, 422})
# Nor a refusal of the key itself: the core refuses ``key_reused`` to the second of
# two different requests sent at once under one key, after the first committed.
# Kept, it could be stored before the first's answer and be replayed to the
# first, whose request acted.
KEY_REFUSED = "key_reused"
JSON = "application/json"


@dataclass(frozen=True)
class Context:
    """What a handler gets: the database, the client, and the key its core
    service call is idempotent by (None without an ``Idempotency-Key``)."""

    db: Database
    client: Authenticated
    key: str | None

    @property
    def actor(self):
        return self.client.actor

    @property
    def study(self) -> str:
        return self.client.study_code


@dataclass(frozen=True)
class File:
    """A handler's answer that is a file (a report), not JSON: an open binary
    file positioned at its start, sent in chunks and closed when sent."""

    stream: IO[bytes]
    mimetype: str
    filename: str


@dataclass
class Operation:
    method: str
    path: str  # OpenAPI form: /subjects/{number}
    handler: Callable
    summary: str
    description: str
    tag: str
    answer: type[BaseModel] | None
    status: int
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: dict[str, str] = field(default_factory=dict)  # name -> regex
    problems: tuple[int, ...] = ()
    files: dict[str, str] = field(default_factory=dict)  # mimetype -> description
    links: dict[str, dict] = field(default_factory=dict)
    media: str = "application/json"

    @property
    def name(self) -> str:
        return self.handler.__name__

    @property
    def changes_data(self) -> bool:
        return self.method == "POST"


OPERATIONS: list[Operation] = []
NUMBER = r"^[0-9]{1,20}$"
COMMON_PROBLEMS = (400, 401, 403, 404, 409, 422)


def operation(method: str, path: str, *, summary: str, tag: str,
              answer: type[BaseModel] | None = None, status: int = 200,
              body: type[BaseModel] | None = None, query: type[BaseModel] | None = None,
              problems: tuple[int, ...] = COMMON_PROBLEMS, files: dict[str, str] | None = None,
              links: dict[str, dict] | None = None, media: str = "application/json",
              patterns: dict[str, str] | None = None):
    """Declare a handler ``(ctx, *, body=..., query=..., <path params>) -> model``.
    Path parameters are digit strings (every number in a trial is) unless
    ``patterns`` says otherwise."""

    def register(handler: Callable) -> Callable:
        params = {name: (patterns or {}).get(name, NUMBER)
                  for name in re.findall(r"{(\w+)}", path)}
        OPERATIONS.append(Operation(
            method, path, handler, summary, (handler.__doc__ or "").strip(), tag, answer,
            status, body, query, params, problems, files or {}, links or {}, media))
        return handler

    return register


# --- serving --------------------------------------------------------------------------


def install(blueprint: Blueprint) -> None:
    """Make a Flask route of every declared operation."""
    for op in OPERATIONS:
        rule = re.sub(r"{(\w+)}", r"<\1>", op.path)
        blueprint.add_url_rule(rule, endpoint=op.name, view_func=_view(op), methods=[op.method])


def _view(op: Operation) -> Callable:
    def view(**path_values):
        try:
            return _serve(op, path_values)
        except RequestEntityTooLarge:
            return problem(413, "too_large", f"the body is larger than {MAX_BODY} bytes")
        except Exception:
            log.exception("api %s %s failed", op.method, op.path)
            return problem(500, "internal_error", "the request could not be completed; "
                           "nothing was changed unless a retry says otherwise")

    view.__name__ = op.name
    return view


def _serve(op: Operation, path_values: dict[str, str]) -> Response:
    db = current_app.extensions["ivrs"].db
    client = _client(db)
    if client is None:
        return problem(401, "unauthorized", "a valid bearer token is required",
                       headers={"WWW-Authenticate": 'Bearer realm="ivrs"'})
    for name, value in path_values.items():
        if not re.match(op.path_params[name], value):
            return problem(422, "bad_path", f"{name} does not match {op.path_params[name]}",
                           field=name)
    kwargs: dict[str, Any] = dict(path_values)
    if op.query is not None:
        query, refusal = _validated(op.query, _query_values())
        if refusal is not None:
            return refusal
        kwargs["query"] = query
    raw: Any = None
    if op.body is not None:
        raw, refusal = _json_body()
        if refusal is not None:
            return refusal
        # Validated from the JSON text: strict, yet a date may be a string.
        body, refusal = _validated(op.body, raw, as_json=True)
        if refusal is not None:
            return refusal
        kwargs["body"] = body
    key = request.headers.get("Idempotency-Key") if op.changes_data else None
    digest = None
    if key is not None:
        if not KEY_PATTERN.match(key):
            return problem(400, "bad_idempotency_key",
                           f"Idempotency-Key is 1-{MAX_KEY} printable ASCII characters")
        digest = _digest(op, path_values, raw)
        first = stored_answer(db, client.client_id, key)
        if first is not None:
            return _replay(first, digest)
    ctx = Context(db, client, None if key is None else service_key(client.client_id, key))
    status, body, file = _answer(op, ctx, kwargs)
    if file is not None:
        return Response(wrap_file(request.environ, file.stream), mimetype=file.mimetype,
                        direct_passthrough=True, headers={
                            "Content-Disposition": f'attachment; filename="{file.filename}"'})
    if key is not None and status in KEPT and body.get("code") != KEY_REFUSED:
        first = store_answer(db, client.client_id, key, method=op.method, path=request.path,
                             body_digest=digest, status=status, response=body)
        if first.body_digest != digest or first.response != body:
            return _replay(first, digest)
    if status >= 400:
        return problem_response(status, body)
    return _json(status, body, op.media)


def _answer(op: Operation, ctx: Context, kwargs: dict) -> tuple[int, dict, File | None]:
    try:
        result = op.handler(ctx, **kwargs)
    except IvrsError as error:
        status, body = from_error(error)
        return status, body, None
    if isinstance(result, File):
        return op.status, {}, result
    return op.status, result.model_dump(mode="json", exclude_none=True), None


def _replay(first, digest: str, media: str = JSON) -> Response:
    if first.body_digest != digest:
        return problem(409, "key_reused", "this Idempotency-Key was used for another request")
    response = (problem_response(first.status, first.response) if first.status >= 400
                else _json(first.status, first.response, media))
    response.headers["Idempotent-Replayed"] = "true"
    return response


def _json(status: int, body: dict, media: str = JSON) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status=status, mimetype=media)


def _client(db: Database) -> Authenticated | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return authenticate(db, token.strip())


def _query_values() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in request.args:
        given = request.args.getlist(name)
        values[name] = given[0] if len(given) == 1 else given
    return values


def _json_body() -> tuple[Any, Response | None]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        return None, problem(413, "too_large", f"the body is larger than {MAX_BODY} bytes")
    request.max_content_length = MAX_BODY
    data = request.get_data(cache=True)
    if not data.strip():
        return {}, None
    mimetype = request.mimetype or ""
    if mimetype != JSON and not mimetype.endswith("+json"):
        return None, problem(415, "not_json", "the body must be application/json")
    try:
        return json.loads(data), None
    except (ValueError, RecursionError) as error:
        return None, problem(400, "malformed_json", f"the body is not JSON: {_short(error)}")


def _validated(model: type[BaseModel], data: Any, as_json: bool = False
               ) -> tuple[BaseModel | None, Response | None]:
    if not isinstance(data, dict):
        return None, problem(422, "invalid_body", "a JSON object is expected")
    try:
        if as_json:
            return model.model_validate_json(json.dumps(data)), None
        return model.model_validate(data), None
    except ValidationError as error:
        errors = [{"field": ".".join(str(part) for part in e["loc"]), "problem": e["msg"]}
                  for e in error.errors(include_url=False, include_input=False)]
        return None, problem(422, "invalid_input", "; ".join(
            f"{e['field'] or 'body'}: {e['problem']}" for e in errors[:5]), errors=errors)


def _digest(op: Operation, path_values: dict, raw: Any) -> str:
    canonical = json.dumps([op.method, op.path, path_values, raw], sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _short(error: Exception) -> str:
    return str(error).splitlines()[0][:120]


# --- the OpenAPI document -----------------------------------------------------------------

PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details; `code` is stable (the phone speaks the same).",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"},
        "status": {"type": "integer"}, "code": {"type": "string"},
        "detail": {"type": "string"},
        "params": {"type": "object", "additionalProperties": True},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "field": {"type": "string"}, "problem": {"type": "string"}}}},
        "field": {"type": "string"},
    },
}
PROBLEM_WHEN = {400: "Malformed request (JSON, header)", 401: "No valid bearer token",
                403: "Not allowed to this role, at this site, or without a valid signature",
                404: "No such record (or not one of the client's)",
                409: "The trial's state refuses it (the `code` says why), or an "
                     "Idempotency-Key reused for another request",
                413: "Body larger than 1 MiB", 415: "Body is not JSON",
                422: "Input that does not fit the schema or the study"}


def openapi_document(title: str, version: str) -> dict:
    models = sorted({m for op in OPERATIONS for m in (op.body, op.answer, op.query) if m},
                    key=lambda m: m.__name__)
    modes = [(m, "validation" if any(m in (op.body, op.query) for op in OPERATIONS)
              else "serialization") for m in models]
    _, definitions = models_json_schema(modes, ref_template="#/components/schemas/{model}")
    schemas = {**definitions.get("$defs", {}), "Problem": PROBLEM_SCHEMA}
    paths: dict[str, dict] = {}
    for op in OPERATIONS:
        paths.setdefault(PREFIX + op.path, {})[op.method.lower()] = _describe(op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "The HTTP API of ivrs for EDCs and other systems (SPEC §10)."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "A token from `ivrs api-clients add`"}}},
        "security": [{"bearer": []}],
    }


def _describe(op: Operation, schemas: dict) -> dict:
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "string", "pattern": pattern}}
                  for name, pattern in op.path_params.items()]
    if op.query is not None:
        query_schema = schemas[op.query.__name__]
        required = set(query_schema.get("required", ()))
        for name, schema in query_schema.get("properties", {}).items():
            parameters.append({"name": name, "in": "query", "required": name in required,
                               "schema": schema})
    if op.changes_data:
        parameters.append({"name": "Idempotency-Key", "in": "header", "required": False,
                           "description": "A retry with the same key and body gets the first "
                                          "answer; the same key with another body is 409.",
                           "schema": {"type": "string", "pattern": KEY_PATTERN.pattern}})
    responses: dict[str, Any] = {}
    if op.files:
        responses[str(op.status)] = {"description": "The file", "content": {
            mimetype: {"schema": {"type": "string", "contentMediaType": mimetype}}
            for mimetype in op.files}}
    else:
        success = {"description": "OK" if op.status == 200 else "Created"}
        if op.answer is not None:
            success["content"] = {op.media: {"schema": {
                "$ref": f"#/components/schemas/{op.answer.__name__}"}}}
        if op.links:
            success["links"] = op.links
        responses[str(op.status)] = success
    problems = set(op.problems) | {401} | ({413, 415} if op.body is not None else set())
    if op.path_params or op.query is not None or op.body is not None:
        problems.add(422)
    if op.changes_data:
        problems |= {400, 409}
    for status in sorted(problems):
        responses[str(status)] = {"description": PROBLEM_WHEN[status], "content": {
            PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    described = {"operationId": op.name, "summary": op.summary, "tags": [op.tag],
                 "parameters": parameters, "responses": responses}
    if op.description:
        described["description"] = op.description
    if op.body is not None:
        described["requestBody"] = {"required": False, "content": {JSON: {"schema": {
            "$ref": f"#/components/schemas/{op.body.__name__}"}}}}
    return described
