"""The HTTP API under real concurrency, next to phone callers, on PostgreSQL + Redis.

A real ``ivrs serve`` (gunicorn, 4 workers, as tests/e2e.py starts it) serves the
example study (tests/data/study.yaml, with a longer list of the same design).
32 EDC threads (16 API clients, each token used by two threads, half at site 101
and half at 102) screen and randomize subjects over HTTP while phone callers do
the same through the real /voice webhook, into the same four strata at once.
Some requests are sent twice with one Idempotency-Key (the second after the
first's answer, as a client retries a lost answer, or both at the same moment),
some randomizations twice without a key (a double submit).

Afterwards the database must hold exactly what one-after-another calls would
have made: every subject, list entry, randomization number and kit given to one
subject only; in each stratum the list used in file order with no gap, in commit
order (as tests/test_concurrency_pg.py checks for the core); every answer a
client got or a caller heard is what is stored; a retried request acted once
(idempotency records, audit rows and API answers counted against the requests
sent); ``ivrs audit verify`` exits 0; and no request got a 5xx.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import traceback
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field

import pytest
from api_support import make_api
from click.testing import CliRunner
from e2e import (
    DAY_1,
    Call,
    assert_every_answer_was_valid_twiml,
    assert_given_once,
    assert_heard_is_stored,
    kill_server,
    read_outcome,
    screen_and_randomize,
    signed_up_users,
    start_server,
    stock_sites,
)
from sqlalchemy import select, text
from studyfiles import STUDY_YAML
from test_concurrency_pg import assert_list_order_exact

from core.actors import ADMIN
from core.api_clients import add_client
from core.models import ApiClient, ApiRequest
from core.mrl import import_mrl
from core.study_loader import load_study
from ivrs.api import registry
from ivrs.demo.scenario import write_demo_mrl
from ivrs.main import main

pytestmark = pytest.mark.postgres

STUDY = "ABC-301"
ELIGIBLE = {"INC1": True, "INC2": True, "EXC1": True}
STRATA = [{"SEX": "M", "AGE": "LT65"}, {"SEX": "F", "AGE": "LT65"},
          {"SEX": "M", "AGE": "GE65"}, {"SEX": "F", "AGE": "GE65"}]
SITES = ("101", "102")
API_THREADS = 32
API_CLIENTS = 16  # each token is used by two threads, as a site system's workers share one
# Each EDC thread randomizes at least MIN_SUBJECTS and goes on while the phone
# callers are still calling (so that both channels hit the strata at the same
# time), up to MAX_SUBJECTS: at most 192 subjects through the API.
MIN_SUBJECTS, MAX_SUBJECTS = 3, 6
PHONE_USERS, CALLS_PER_USER = 4, 2
LIST_PER_STRATUM = 60  # >= 192 / 4 + the callers' subjects; 2:1 in blocks of 3
KITS_PER_TYPE_AND_SITE = 110  # >= every subject of a site, whatever arms the list gives
# How each API subject's requests are sent, by its index:
#   retry:  screen and randomize under a key, each sent again after its answer
#   race:   screen and randomize under a key, two copies sent at the same moment
#   once:   under a key, once
#   none:   no key
#   double: randomize twice at the same moment without a key (a double submit)
MODES = ("retry", "race", "once", "none", "retry", "double")
JOIN_TIMEOUT = 120


# --- an EDC over HTTP ---------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    client: str
    path: str
    key: str | None
    status: int
    body: dict
    replayed: bool


class Edc:
    """One API client's token over HTTP. A new connection per request: retrying a
    request on a kept-alive connection the server had closed would send a copy
    the test did not mean to send."""

    def __init__(self, url: str, name: str, token: str):
        self.netloc = urllib.parse.urlsplit(url).netloc
        self.name, self.token = name, token

    def post(self, path: str, body: dict, key: str | None = None) -> Answer:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        connection = http.client.HTTPConnection(self.netloc, timeout=60)
        try:
            connection.request("POST", "/api/v1" + path, body=json.dumps(body), headers=headers)
            response = connection.getresponse()
            data = response.read()
            replayed = response.getheader("Idempotent-Replayed") == "true"
        finally:
            connection.close()
        return Answer(self.name, path, key, response.status, json.loads(data), replayed)


def at_once(*sends) -> list[Answer]:
    """Each ``send()`` in its own thread, released together."""
    barrier = threading.Barrier(len(sends))
    answers: list = [None] * len(sends)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            answers[index] = sends[index]()
        except BaseException as error:  # noqa: BLE001 — re-raised below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sends))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    if errors:
        raise errors[0]
    assert None not in answers, "a racing copy never answered"
    return answers


@dataclass
class ApiSubject:
    """One subject an EDC thread screened and randomized, and every answer it got."""

    index: int
    edc: Edc
    site: str
    mode: str
    factors: dict[str, str]
    screens: list[Answer] = field(default_factory=list)
    randomizations: list[Answer] = field(default_factory=list)

    @property
    def number(self) -> str:
        return self.screens[0].body["subject_number"]

    @property
    def randomized(self) -> Answer:
        """The answer that randomized it (the others are copies or a refusal)."""
        done = [a for a in self.randomizations if a.status == 200]
        return done[0]


def send(edc: Edc, mode: str, path: str, body: dict, key: str | None) -> list[Answer]:
    """One request as ``mode`` sends it; checks that copies got the same answer."""
    if mode == "retry":
        first = edc.post(path, body, key)
        again = edc.post(path, body, key)
        assert (again.status, again.body, again.replayed) == (first.status, first.body, True), \
            (first, again)
        return [first, again]
    if mode == "race":
        copies = at_once(lambda: edc.post(path, body, key), lambda: edc.post(path, body, key))
        assert copies[0].status == copies[1].status and copies[0].body == copies[1].body, copies
        return copies
    return [edc.post(path, body, key)]


def screen_and_randomize_by_api(subject: ApiSubject) -> None:
    edc, mode, i = subject.edc, subject.mode, subject.index
    keyed = mode in ("retry", "race", "once")
    screen_mode = "once" if mode == "double" else mode
    subject.screens = send(edc, screen_mode, "/subjects", {"site": subject.site},
                           f"screen-{i}" if keyed else None)
    assert all(a.status == 201 for a in subject.screens), subject.screens
    path = f"/subjects/{subject.number}/randomize"
    body = {"factors": subject.factors, "eligibility": ELIGIBLE}
    if mode == "double":
        subject.randomizations = at_once(lambda: edc.post(path, body), lambda: edc.post(path, body))
        statuses = sorted(a.status for a in subject.randomizations)
        assert statuses == [200, 409], subject.randomizations
        refused = next(a for a in subject.randomizations if a.status == 409)
        assert refused.body["code"] == "already_randomized", refused
        return
    subject.randomizations = send(edc, mode, path, body, f"randomize-{i}" if keyed else None)
    assert all(a.status == 200 for a in subject.randomizations), subject.randomizations


def phone_stratum(index: int) -> dict[str, str]:
    """The levels ``screen_and_randomize`` keys in for a caller's ``index``."""
    return {"SEX": "MF"[(index // 2) % 2], "AGE": ("LT65", "GE65")[(index // 4) % 2]}


def stratum_key(factors: dict[str, str]) -> str:
    return f"SEX={factors['SEX']}|AGE={factors['AGE']}"


# --- the run --------------------------------------------------------------------------------


@pytest.fixture
def study(pg_db, tmp_path, monkeypatch):
    if not os.environ.get("REDIS_URL"):
        pytest.skip("needs Redis: set REDIS_URL")
    monkeypatch.setenv("IVRS_TODAY", DAY_1.isoformat())
    load_study(pg_db, STUDY_YAML)
    mrl = tmp_path / "mrl.csv"
    write_demo_mrl(mrl, per_stratum=LIST_PER_STRATUM)
    import_mrl(pg_db, mrl, study_code=STUDY)
    stock_sites(pg_db, tmp_path / "site-kits.csv", KITS_PER_TYPE_AND_SITE, study=STUDY)
    return pg_db


def run_together(api_work, phone_work) -> None:
    """Every EDC thread and every phone user at once; failures re-raised."""
    workers = [*api_work, *phone_work]
    barrier = threading.Barrier(len(workers))
    errors: list[str] = []

    def run(work) -> None:
        try:
            barrier.wait(timeout=30)
            work()
        except BaseException:  # noqa: BLE001 — reported below
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=run, args=(work,), daemon=True) for work in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a client never finished"
    assert not errors, f"{len(errors)} client(s) failed, e.g.:\n" + "\n".join(errors[:3])


def test_api_clients_and_callers_randomize_into_the_same_strata_exactly_once(study, tmp_path):
    db = study
    tokens = {f"edc-{c:02d}": add_client(db, name=f"edc-{c:02d}", role="site_coordinator",
                                         sites=[SITES[(c // 2) % 2]], actor=ADMIN,
                                         study=STUDY).token
              for c in range(API_CLIENTS)}
    users = signed_up_users(db, PHONE_USERS, first=6101, study=STUDY)
    url_of_db = db.engine.url.render_as_string(hide_password=False)
    server = start_server(url_of_db, DAY_1, tmp_path, workers=4)
    subjects: list[ApiSubject] = []
    calls: list[Call] = []
    lock = threading.Lock()
    phones_done = threading.Event()
    phones_left = [PHONE_USERS]
    try:
        edcs = [Edc(server.url, name, token) for name, token in tokens.items()]

        def edc_thread(thread: int):
            edc = edcs[thread % API_CLIENTS]
            site = SITES[(thread % API_CLIENTS // 2) % 2]

            def work() -> None:
                for n in range(MAX_SUBJECTS):
                    if n >= MIN_SUBJECTS and phones_done.is_set():
                        return
                    index = n * API_THREADS + thread
                    # modes, strata and sites vary independently of each other
                    subject = ApiSubject(index, edc, site, MODES[index % len(MODES)],
                                         STRATA[(index + index // len(MODES)) % len(STRATA)])
                    with lock:
                        subjects.append(subject)
                    screen_and_randomize_by_api(subject)
            return work

        def phone_user(u: int):
            def work() -> None:
                try:
                    for c in range(CALLS_PER_USER):
                        call = Call.to(server.url, users[u])
                        with lock:
                            calls.append(call)
                        screen_and_randomize(call, u * CALLS_PER_USER + c)
                finally:
                    with lock:
                        phones_left[0] -= 1
                        if phones_left[0] == 0:
                            phones_done.set()
            return work

        run_together([edc_thread(t) for t in range(API_THREADS)],
                     [phone_user(u) for u in range(PHONE_USERS)])
        log = server.log()
    finally:
        kill_server(server)

    # Nothing failed: no 5xx anywhere, no error logged by the server.
    answers = [a for s in subjects for a in s.screens + s.randomizations]
    assert all(a.status < 500 for a in answers), [a for a in answers if a.status >= 500][:3]
    assert_every_answer_was_valid_twiml(calls)
    assert "Traceback" not in log, log[-4000:]

    # What the database holds: each subject once, each entry, number and kit once.
    outcome = read_outcome(db, study=STUDY)  # the audit chain verified on the way
    total = len(subjects) + len(calls)
    assert len(outcome.subjects) == total
    assert len(outcome.randomizations) == outcome.randomization_rows == total
    assert {s.status for s in outcome.subjects.values()} == {"randomized"}
    assert_given_once(outcome)
    assert len(outcome.kits) == total and {k.visit_code for k in outcome.kits} == {"V1"}

    # Each stratum's list used in file order, no gap, in commit order; both channels in it.
    expected = Counter(stratum_key(s.factors) for s in subjects)
    expected.update(stratum_key(phone_stratum(i)) for i in range(len(calls)))
    assert_list_order_exact(db, STUDY, dict(expected))

    # Every answer an EDC got is what is stored, and told to that subject only.
    assert_heard_is_stored(outcome, calls)
    numbers = [s.number for s in subjects] + [c.heard["subject"] for c in calls]
    assert len(set(numbers)) == total
    kits_told = [kit for s in subjects for kit in s.randomized.body["kits"]]
    kits_told += [kit for c in calls for kit in c.heard["v1_kits"]]
    assert sorted(kits_told) == sorted(k.kit_number for k in outcome.kits)
    for subject in subjects:
        stored = outcome.subjects[subject.number]
        assert subject.number.startswith(subject.site)
        assert stored.site_id == outcome.site_ids[subject.site]
        assert stored.screened_by == f"api:{subject.edc.name}"
        screened = subject.screens[0].body
        assert outcome.transactions[("subject_screened", subject.number)] == {
            int(screened["confirmation"])}
        told = subject.randomized.body
        assert told["subject_number"] == subject.number and "arm" not in told
        assert told["randomization_number"] == \
            outcome.randomizations[stored.id].randomization_number
        assert [(k.visit_code, k.kit_number) for k in outcome.kits
                if k.subject_id == stored.id] == [("V1", kit) for kit in told["kits"]]
        assert outcome.transactions[("subject_randomized", subject.number)] == {
            int(told["confirmation"])}

    # A retried request acted once: one service record per subject screened and
    # randomized, one kept API answer per key, and it is the answer every copy got.
    with db.sessions() as session:
        operations = Counter(dict(session.execute(text(
            "SELECT CASE WHEN operation LIKE 'randomize %' THEN 'randomize' ELSE operation END,"
            " count(*) FROM idempotency_records GROUP BY 1")).all()))
        kept = {(name, key): (status, response) for name, key, status, response in
                session.execute(select(ApiClient.name, ApiRequest.key, ApiRequest.status,
                                       ApiRequest.response)
                                .join(ApiClient, ApiClient.id == ApiRequest.client_id))}
    assert (operations["screen"], operations["randomize"]) == (total, total)
    keyed = [a for a in answers if a.key is not None]
    assert set(kept) == {(a.client, a.key) for a in keyed}
    for answer in keyed:
        assert kept[(answer.client, answer.key)] == (answer.status, answer.body), answer
    modes = Counter(s.mode for s in subjects)
    assert all(modes[mode] > 0 for mode in set(MODES)), modes
    # (a racing copy may come late enough to be answered from the kept answer)
    assert sum(a.replayed for s in subjects if s.mode != "race"
               for a in s.screens + s.randomizations) == 2 * modes["retry"]

    result = CliRunner().invoke(main, ["audit", "verify"], env={"DATABASE_URL": url_of_db})
    assert result.exit_code == 0, result.output
    assert f"ok {STUDY}:" in result.output


def test_one_key_for_two_subjects_at_once_answers_the_request_that_acted(pg_db, tmp_path,
                                                                        monkeypatch):
    """A client that sends two randomizations (two subjects) under one key at the
    same moment: one acts, the other is refused ``key_reused``; the one that acted
    is answered with its randomization, and so is its retry, even when the refusal
    is ready first. Here the successful request's answer is held back between its
    commit and its being kept, as a descheduled worker thread would hold it."""
    api = make_api(pg_db, tmp_path)
    keep = registry.store_answer

    def kept_late(db, client_id, key, **answer):
        if answer["status"] == 200:
            time.sleep(0.3)
        return keep(db, client_id, key, **answer)

    monkeypatch.setattr(registry, "store_answer", kept_late)
    edc = api.client("edc-all")
    subjects = [edc.post("/subjects", {"site": site}).json["subject_number"]
                for site in ("101", "102")]
    body = {"factors": {"SEX": "M", "AGE": "LT65"}, "eligibility": ELIGIBLE}

    def randomize(number: str):
        return api.client("edc-all").post(f"/subjects/{number}/randomize", body, key="same")

    answers = dict(zip(subjects, at_once(*(lambda n=n: randomize(n) for n in subjects)),
                       strict=True))
    statuses = {number: answer.status_code for number, answer in answers.items()}
    assert sorted(statuses.values()) == [200, 409], {n: a.json for n, a in answers.items()}
    acted = next(number for number, status in statuses.items() if status == 200)
    other = next(number for number in subjects if number != acted)
    assert answers[other].json["code"] == "key_reused"
    with pg_db.sessions() as session:
        randomized = session.execute(text(
            "SELECT s.subject_number, r.randomization_number FROM randomizations r"
            " JOIN subjects s ON s.id = r.subject_id")).all()
    assert randomized == [(acted, answers[acted].json["randomization_number"])]
    again = randomize(acted)
    assert (again.status_code, again.json) == (200, answers[acted].json)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert randomize(other).json["code"] == "key_reused"
