"""Randomization and screening under real concurrency, on PostgreSQL only.

Many clients (threads; the shared ``Database``'s pool gives each its own
connection) hit one study at once. Whatever the interleaving, the database must
end up exactly as if the calls had been made one after the other in the order
they committed: no list entry or number used twice, nobody randomized twice,
the k-th subject of a stratum to commit holds the stratum's k-th list position,
block sequences exactly as the seed generates them, minimization totals equal
to what the randomizations say, and an unbroken audit chain. The audit
sequence number of a subject's "subject_randomized" row is the commit order.

Skipped unless IVRS_TEST_DATABASE_URL points at PostgreSQL (fixture ``pg_db``).
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
from factories import make_study
from sqlalchemy import text

from core.actors import ADMIN
from core.audit import verify
from core.errors import Refused
from core.randomization.block import block_arms
from core.randomization.minimization import choose, imbalance_per_arm
from core.randomize import randomize
from core.subjects import screen_subject

pytestmark = pytest.mark.postgres

YES = {"INC1": True, "EXC1": True}
STRATA = [{"SEX": sex, "AGE": age} for sex, age in itertools.product(["M", "F"], ["LT65", "GE65"])]
CLIENTS = 32
JOIN_TIMEOUT = 120  # seconds; a deadlock or a lost wake-up fails instead of hanging

# --- running things in parallel ---------------------------------------------------------


def run_parallel(clients: int, items: list, call) -> list[tuple[object, object, BaseException | None]]:
    """``call(item)`` for every item, from ``clients`` threads released together.

    Threads take items from one queue, so the work interleaves freely. Returns
    (item, result, exception) per item, in completion order.
    """
    work: queue.Queue = queue.Queue()
    for item in items:
        work.put(item)
    start = threading.Barrier(clients)
    outcomes: list = []
    lock = threading.Lock()

    def client():
        start.wait()
        while True:
            try:
                item = work.get_nowait()
            except queue.Empty:
                return
            try:
                outcome = (item, call(item), None)
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                outcome = (item, None, exc)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive(), "a client hung (deadlock or lost lock wake-up?)"
    assert len(outcomes) == len(items)
    return outcomes


def succeeded(outcomes) -> dict:
    failures = [(item, exc) for item, _, exc in outcomes if exc is not None]
    assert not failures, f"{len(failures)} calls failed, e.g. {failures[:3]!r}"
    return {item: result for item, result, _ in outcomes}


def prescreen(db, study: str, count: int) -> list[str]:
    """Screen ``count`` subjects (through the service, 8 at a time) over sites 101/102."""
    with ThreadPoolExecutor(8) as pool:
        numbers = list(pool.map(
            lambda i: screen_subject(db, site_code=("101", "102")[i % 2], actor=ADMIN,
                                     study=study).subject_number,
            range(count)))
    assert len(set(numbers)) == count
    return numbers


def factors_for(index: int) -> dict[str, str]:
    return STRATA[index % len(STRATA)]


def randomize_all(db, study: str, numbers: list[str], clients: int = CLIENTS) -> dict:
    """Randomize every subject from ``clients`` threads; subject i goes to stratum i % 4."""
    stratum_of = {number: factors_for(i) for i, number in enumerate(numbers)}
    outcomes = run_parallel(clients, numbers, lambda number: randomize(
        db, subject_number=number, actor=ADMIN, eligibility=YES,
        factors=stratum_of[number], study=study))
    return succeeded(outcomes)


def rows(db, sql: str, **params) -> list:
    with db.transaction() as session:
        return list(session.execute(text(sql), params))


def scalar(db, sql: str, **params):
    with db.transaction() as session:
        return session.execute(text(sql), params).scalar_one()


def study_id(db, code: str) -> int:
    return scalar(db, "SELECT id FROM studies WHERE code = :code", code=code)


def assert_chain_intact(db, code: str) -> None:
    with db.transaction() as session:
        assert verify(session, study_id(db, code)) is None


def assert_each_subject_once(db, code: str, numbers: list[str], results: dict) -> list:
    """Nobody twice, everybody once, numbers unique, and what the clients were told
    is what the database holds. Returns the randomizations in commit order."""
    sid = study_id(db, code)
    total, subjects, numbers_used = rows(db, """
        SELECT count(*), count(DISTINCT subject_id), count(DISTINCT randomization_number)
        FROM randomizations WHERE study_id = :sid""", sid=sid)[0]
    assert (total, subjects, numbers_used) == (len(numbers),) * 3
    status = dict(rows(db, """SELECT status, count(*) FROM subjects WHERE study_id = :sid
                              GROUP BY status""", sid=sid))
    assert status == {"randomized": len(numbers)}
    history = scalar(db, """SELECT count(*) FROM subject_status_history
                            WHERE study_id = :sid AND to_status = 'randomized'""", sid=sid)
    assert history == len(numbers)
    # Commit order: the audit sequence of each subject's "subject_randomized" row.
    committed = rows(db, """
        SELECT s.subject_number, r.stratum_key, r.randomization_number, a.code AS arm,
               r.details, r.factors, e.seq, e.transaction_id
        FROM randomizations r
        JOIN subjects s ON s.id = r.subject_id
        JOIN arms a ON a.id = r.arm_id
        JOIN audit_events e ON e.study_id = r.study_id AND e.action = 'subject_randomized'
                           AND e.entity_id = s.subject_number
        WHERE r.study_id = :sid ORDER BY e.seq""", sid=sid)
    assert len(committed) == len(numbers), "one subject_randomized audit row per subject"
    assert sorted(row.subject_number for row in committed) == sorted(numbers)
    for row in committed:
        told = results[row.subject_number]
        assert (told.randomization_number, told.arm, told.stratum) == (
            row.randomization_number, row.arm, row.stratum_key)
        # the confirmation number people write down stamps the transaction's audit rows
        assert told.confirmation == f"{row.transaction_id:06d}"
    assert len({told.confirmation for told in results.values()}) == len(numbers)
    return committed


def assert_list_order_exact(db, code: str, expected_per_stratum: dict[str, int]) -> dict:
    """Per stratum, in commit order, the k-th randomization used list position k.

    Returns the arm codes per stratum in position order."""
    sid = study_id(db, code)
    used = rows(db, """
        SELECT le.stratum_key, le.position, le.randomization_number AS le_number,
               le.arm_id AS le_arm, r.randomization_number, r.arm_id, r.stratum_key AS r_key,
               a.code AS arm, e.seq
        FROM list_entries le
        JOIN randomizations r ON r.subject_id = le.subject_id AND r.event_id = le.event_id
        JOIN subjects s ON s.id = le.subject_id
        JOIN arms a ON a.id = le.arm_id
        JOIN audit_events e ON e.study_id = r.study_id AND e.action = 'subject_randomized'
                           AND e.entity_id = s.subject_number
        WHERE le.study_id = :sid
        ORDER BY le.stratum_key, e.seq""", sid=sid)
    used_count, used_subjects = rows(db, """
        SELECT count(*), count(DISTINCT subject_id) FROM list_entries
        WHERE study_id = :sid AND subject_id IS NOT NULL""", sid=sid)[0]
    total = sum(expected_per_stratum.values())
    assert (used_count, used_subjects, len(used)) == (total, total, total), \
        "each list entry used at most once, by exactly one randomized subject"
    assert scalar(db, """SELECT count(*) FROM list_entries WHERE study_id = :sid
                         AND (subject_id IS NULL) <> (used_at IS NULL)""", sid=sid) == 0
    arms: dict[str, list[str]] = defaultdict(list)
    positions: dict[str, list[int]] = defaultdict(list)
    for row in used:
        assert (row.le_number, row.le_arm, row.stratum_key) == (
            row.randomization_number, row.arm_id, row.r_key)
        positions[row.stratum_key].append(row.position)
        arms[row.stratum_key].append(row.arm)
    assert {key: len(p) for key, p in positions.items()} == expected_per_stratum
    for key, in_commit_order in positions.items():
        # gapless 1..n AND in commit order: the k-th to commit holds position k
        assert in_commit_order == list(range(1, len(in_commit_order) + 1)), key
    counters = dict(rows(db, """SELECT stratum_key, used FROM stratum_counters
                                WHERE study_id = :sid AND stratum_key <> '#event'""", sid=sid))
    assert counters == expected_per_stratum
    return arms


def stratum_keys(count: int) -> dict[str, int]:
    per = Counter(f"SEX={f['SEX']}|AGE={f['AGE']}" for f in map(factors_for, range(count)))
    return dict(per)


# --- the tests ----------------------------------------------------------------------------


def test_list_randomization_under_32_clients(pg_db):
    make_study(pg_db, code="LIST", method="list", list_per_stratum=200)
    numbers = prescreen(pg_db, "LIST", 500)
    results = randomize_all(pg_db, "LIST", numbers)
    assert_each_subject_once(pg_db, "LIST", numbers, results)
    assert_list_order_exact(pg_db, "LIST", stratum_keys(500))
    assert_chain_intact(pg_db, "LIST")


def test_block_randomization_under_32_clients(pg_db):
    sizes, seed = [4, 6], 11
    make_study(pg_db, code="BLOCK", method="block",
               params={"block": {"sizes": sizes, "seed": seed}})
    numbers = prescreen(pg_db, "BLOCK", 500)
    results = randomize_all(pg_db, "BLOCK", numbers)
    assert_each_subject_once(pg_db, "BLOCK", numbers, results)
    expected = stratum_keys(500)
    arms = assert_list_order_exact(pg_db, "BLOCK", expected)
    sid = study_id(pg_db, "BLOCK")
    counters = {row.stratum_key: row for row in rows(pg_db, """
        SELECT stratum_key, used, generated, blocks FROM stratum_counters
        WHERE study_id = :sid""", sid=sid)}
    for key, n in expected.items():
        sequence: list[str] = []
        blocks = 0
        while len(sequence) < n:
            blocks += 1
            sequence += block_arms(seed, "R1", key, blocks, sizes, [("A", 1), ("P", 1)])
        assert arms[key] == sequence[:n], f"stratum {key} departs from the seeded blocks"
        # blocks are generated lazily, exactly as many as needed, and only once
        assert (counters[key].blocks, counters[key].generated) == (blocks, len(sequence))
        entries = rows(pg_db, """SELECT le.position, le.block, a.code FROM list_entries le
                                 JOIN arms a ON a.id = le.arm_id
                                 WHERE le.study_id = :sid AND le.stratum_key = :key
                                 ORDER BY le.position""", sid=sid, key=key)
        assert [e.position for e in entries] == list(range(1, len(sequence) + 1))
        assert [e.code for e in entries] == sequence
        sizes_seen = Counter(e.block for e in entries)
        assert [sizes_seen[f"B{k}"] for k in range(1, blocks + 1)] == [
            len(block_arms(seed, "R1", key, k, sizes, [("A", 1), ("P", 1)]))
            for k in range(1, blocks + 1)]
    # every generated entry has its own number, drawn from the event counter
    generated = sum(c.generated for key, c in counters.items() if key != "#event")
    assert counters["#event"].used == generated
    numbers_made = {r[0] for r in rows(pg_db, """SELECT randomization_number FROM list_entries
                                                WHERE study_id = :sid""", sid=sid)}
    assert numbers_made == {f"1{n:05d}" for n in range(1, generated + 1)}
    assert_chain_intact(pg_db, "BLOCK")


def test_minimization_under_32_clients(pg_db):
    count = CLIENTS * 20  # 640: 20 subjects per client keeps the file under a minute
    make_study(pg_db, code="MIN", method="minimization", params={"minimization": {"p": 0.8}})
    numbers = prescreen(pg_db, "MIN", count)
    results = randomize_all(pg_db, "MIN", numbers)
    committed = assert_each_subject_once(pg_db, "MIN", numbers, results)
    sid = study_id(pg_db, "MIN")
    # numbers come from the event counter: gapless, and in commit order
    assert [row.randomization_number for row in committed] == [
        f"1{n:05d}" for n in range(1, count + 1)]
    # the running totals equal the totals recomputed from the randomizations
    stored = {(r.factor_code, r.level_code, r.code): r.count for r in rows(pg_db, """
        SELECT factor_code, level_code, a.code, count FROM minimization_counts m
        JOIN arms a ON a.id = m.arm_id WHERE m.study_id = :sid""", sid=sid)}
    recomputed = Counter((factor, level, row.arm) for row in committed
                         for factor, level in row.factors.items())
    assert stored == dict(recomputed)
    assert sum(stored.values()) == 2 * count
    # and each assignment saw every earlier one (serialized): replay the decisions
    running: Counter = Counter()
    for row in committed:
        decision = row.details["minimization"]
        seen = {factor: {arm: running[(factor, level, arm)] for arm in ("A", "P")}
                for factor, level in row.factors.items()}
        recorded = {factor: {arm: per_arm.get(arm, 0) for arm in ("A", "P")}
                    for factor, per_arm in decision["totals"].items()}
        assert recorded == seen, f"{row.subject_number} was assigned on stale totals"
        imbalance = imbalance_per_arm(decision["totals"], {"SEX": 1.0, "AGE": 1.0, "site": 1.0},
                                      decision["ratio"], "range")
        assert imbalance == decision["imbalance"]
        chosen, _ = choose(imbalance, decision["ratio"], decision["p"], decision["u"],
                           decision["v"])
        assert chosen == decision["chosen"] == row.arm
        for factor, level in row.factors.items():
            running[(factor, level, row.arm)] += 1
    assert_chain_intact(pg_db, "MIN")


def test_same_idempotency_key_from_8_threads_acts_once(pg_db):
    make_study(pg_db, code="IDEM", method="list", list_per_stratum=10)
    (number,) = prescreen(pg_db, "IDEM", 1)
    outcomes = run_parallel(8, ["key-1"] * 8, lambda key: randomize(
        pg_db, subject_number=number, actor=ADMIN, eligibility=YES,
        factors={"SEX": "F", "AGE": "GE65"}, study="IDEM", idempotency_key=key))
    results = [result for _, result, exc in outcomes if exc is None]
    assert [exc for _, _, exc in outcomes if exc is not None] == []
    assert len(results) == 8 and len(set(results)) == 1
    sid = study_id(pg_db, "IDEM")
    assert scalar(pg_db, "SELECT count(*) FROM randomizations WHERE study_id = :sid", sid=sid) == 1
    assert scalar(pg_db, """SELECT count(*) FROM list_entries WHERE study_id = :sid
                            AND subject_id IS NOT NULL""", sid=sid) == 1
    assert scalar(pg_db, """SELECT count(*) FROM idempotency_records WHERE study_id = :sid
                            AND key = 'key-1'""", sid=sid) == 1
    assert scalar(pg_db, """SELECT count(*) FROM audit_events WHERE study_id = :sid
                            AND action = 'subject_randomized'""", sid=sid) == 1
    assert_chain_intact(pg_db, "IDEM")


def test_different_keys_from_8_threads_randomize_once(pg_db):
    make_study(pg_db, code="DUP", method="list", list_per_stratum=10)
    (number,) = prescreen(pg_db, "DUP", 1)
    outcomes = run_parallel(8, [f"key-{i}" for i in range(8)], lambda key: randomize(
        pg_db, subject_number=number, actor=ADMIN, eligibility=YES,
        factors={"SEX": "M", "AGE": "LT65"}, study="DUP", idempotency_key=key))
    successes = [result for _, result, exc in outcomes if exc is None]
    refusals = [exc for _, _, exc in outcomes if exc is not None]
    assert len(successes) == 1
    assert len(refusals) == 7
    assert all(isinstance(exc, Refused) and exc.code == "already_randomized"
               for exc in refusals), refusals
    sid = study_id(pg_db, "DUP")
    assert scalar(pg_db, "SELECT count(*) FROM randomizations WHERE study_id = :sid", sid=sid) == 1
    assert scalar(pg_db, """SELECT count(*) FROM list_entries WHERE study_id = :sid
                            AND subject_id IS NOT NULL""", sid=sid) == 1
    assert rows(pg_db, """SELECT position FROM list_entries WHERE study_id = :sid
                          AND subject_id IS NOT NULL""", sid=sid)[0][0] == 1
    assert_chain_intact(pg_db, "DUP")


def test_16_threads_screening_at_one_site_get_consecutive_numbers(pg_db):
    make_study(pg_db, code="SCR", method="list", list_per_stratum=1)
    outcomes = run_parallel(16, list(range(16)), lambda _: screen_subject(
        pg_db, site_code="101", actor=ADMIN, study="SCR"))
    numbers = sorted(result.subject_number for result in succeeded(outcomes).values())
    assert numbers == [f"101{n:04d}" for n in range(1, 17)]
    sid = study_id(pg_db, "SCR")
    assert scalar(pg_db, """SELECT last_subject_seq FROM sites WHERE study_id = :sid
                            AND code = '101'""", sid=sid) == 16
    assert scalar(pg_db, """SELECT count(*) FROM audit_events WHERE study_id = :sid
                            AND action = 'subject_screened'""", sid=sid) == 16
    assert_chain_intact(pg_db, "SCR")
