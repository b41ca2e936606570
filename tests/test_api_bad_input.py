"""Bad input to the HTTP API: a clear problem+json with a code, and the data
exactly as it was (every table compared before and after)."""

from __future__ import annotations

import io

import pytest
from studyfiles import snapshot

from core.actors import ADMIN
from core.api_clients import revoke_client

PROBLEM = "application/problem+json"
ELIGIBLE = {"INC1": True, "INC2": True, "EXC1": True}


def problem_of(answer, status: int, code: str) -> dict:
    assert answer.status_code == status, answer.get_data(as_text=True)
    assert answer.headers["Content-Type"] == PROBLEM
    assert answer.json["code"] == code and answer.json["status"] == status
    return answer.json


@pytest.fixture
def screened(api):
    return api.client("edc-101").post("/subjects", {"site": "101"}).json["subject_number"]


BAD_BODIES = [
    ("malformed JSON", '{"factors": {', 400, "malformed_json"),
    ("a list, not an object", "[1, 2]", 422, "invalid_body"),
    ("a string for a truth value", ('{"factors": {"SEX": "F", "AGE": "LT65"}, '
                                   '"eligibility": {"INC1": "yes"}}'), 422, "invalid_input"),
    ("a number for a level", '{"factors": {"SEX": 1}}', 422, "invalid_input"),
    ("an unknown field", '{"factors": {}, "arm": "A"}', 422, "invalid_input"),
    ("a level the study lacks", ('{"factors": {"SEX": "X", "AGE": "LT65"}, '
                                '"eligibility": {"INC1": true, "INC2": true, "EXC1": true}}'),
     422, "bad_level"),
    ("deeply nested", "[" * 100000 + "]" * 100000, 400, "malformed_json"),
]


@pytest.mark.parametrize("what,body,status,code", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_a_bad_body_changes_nothing(api, screened, what, body, status, code):
    before = snapshot(api.db)
    answer = api.client("edc-101").post(f"/subjects/{screened}/randomize", data=body,
                                        headers={"Content-Type": "application/json"})
    problem = problem_of(answer, status, code)
    assert problem["detail"]
    assert snapshot(api.db) == before


def test_missing_fields_are_named(api, screened):
    answer = api.client("edc-101").post(f"/subjects/{screened}/status", {"reason": "x"})
    problem = problem_of(answer, 422, "invalid_input")
    assert problem["errors"][0]["field"] == "status"


def test_a_body_over_one_mebibyte_is_refused_unread(api, screened):
    before = snapshot(api.db)
    huge = '{"factors": {"SEX": "' + "F" * (1024 * 1024) + '"}}'
    client = api.client("edc-101")
    problem_of(client.post(f"/subjects/{screened}/randomize", data=huge,
                           headers={"Content-Type": "application/json"}), 413, "too_large")

    # No Content-Length (a chunked body): the limit applies as the body streams in.
    chunked = api.app.test_client().post(
        f"/api/v1/subjects/{screened}/randomize", input_stream=io.BytesIO(huge.encode()),
        headers={"Content-Type": "application/json",
                 "Authorization": f"Bearer {api.tokens['edc-101']}"},
        environ_overrides={"wsgi.input_terminated": True})
    problem_of(chunked, 413, "too_large")
    assert snapshot(api.db) == before


def test_not_json_is_415(api):
    problem_of(api.client("edc-101").post("/subjects", data="site=101",
                                          headers={"Content-Type": "text/plain"}),
               415, "not_json")


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer nonsense", "Basic dXNlcjpwdw==",
                                    "Bearer ivrs_" + "x" * 43])
def test_no_or_a_bad_token_is_401(api, header):
    before = snapshot(api.db)
    headers = {} if header is None else {"Authorization": header}
    answer = api.app.test_client().post("/api/v1/subjects", json={"site": "101"},
                                        headers=headers)
    problem_of(answer, 401, "unauthorized")
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert snapshot(api.db) == before


def test_a_revoked_token_is_refused_at_the_next_request(api):
    client = api.client("edc-101")
    assert client.get("/sites").status_code == 200
    revoke_client(api.db, name="edc-101", actor=ADMIN, reason="EDC replaced")
    before = snapshot(api.db)
    problem_of(client.post("/subjects", {"site": "101"}), 401, "unauthorized")
    assert snapshot(api.db) == before


def test_idempotency_keys(api, screened):
    client = api.client("edc-101")
    body = {"factors": {"SEX": "M", "AGE": "LT65"}, "eligibility": ELIGIBLE}
    first = client.post(f"/subjects/{screened}/randomize", body, key="rand-1")
    assert first.status_code == 200
    again = client.post(f"/subjects/{screened}/randomize", body, key="rand-1")
    assert again.json == first.json and again.headers["Idempotent-Replayed"] == "true"
    before = snapshot(api.db)
    other = client.post(f"/subjects/{screened}/randomize",
                        {**body, "factors": {"SEX": "F", "AGE": "LT65"}}, key="rand-1")
    problem_of(other, 409, "key_reused")
    problem_of(client.post("/subjects", {"site": "101"}, key="rand-1"), 409, "key_reused")
    problem_of(client.post("/subjects", {"site": "101"}, key="bad key"), 400,
               "bad_idempotency_key")
    problem_of(client.post("/subjects", {"site": "101"}, key="k" * 201), 400,
               "bad_idempotency_key")
    assert snapshot(api.db) == before
    # another client's same key is its own
    assert api.client("edc-all").post("/subjects", {"site": "101"},
                                      key="rand-1").status_code == 201


def test_a_refusal_is_the_keys_answer_too(api, screened):
    client = api.client("edc-101")
    no = {"factors": {"SEX": "M", "AGE": "LT65"}, "eligibility": {"INC1": False}}
    first = client.post(f"/subjects/{screened}/randomize", no, key="no-1")
    problem_of(first, 409, "not_eligible")
    again = client.post(f"/subjects/{screened}/randomize", no, key="no-1")
    assert again.json == first.json and again.headers["Idempotent-Replayed"] == "true"


def test_unknown_routes_and_methods_are_problems(api):
    client = api.client("edc-101")
    problem_of(client.get("/no-such-thing"), 404, "no_route")
    answer = api.app.test_client().delete("/api/v1/subjects")
    problem_of(answer, 405, "method_not_allowed")
    assert "GET" in answer.headers["Allow"]
    problem_of(client.get("/subjects/12ab"), 422, "bad_path")
    problem_of(client.get("/subjects?limit=0"), 422, "invalid_input")
    problem_of(client.get("/subjects?color=red"), 422, "invalid_input")
