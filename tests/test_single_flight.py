"""core.single_flight: remembered answers, bounded, by generation, and one
computation for threads that miss the same key at once."""

from __future__ import annotations

import threading

import pytest

from core import single_flight
from core.single_flight import SingleFlightCache


def counting(values):
    calls = []

    def compute(key):
        def run():
            calls.append(key)
            return values[key]
        return run
    return calls, compute


def test_an_answer_is_computed_once_and_then_remembered():
    calls, compute = counting({"a": 1})
    cache = SingleFlightCache(4)
    assert cache.get("a", compute("a")) == 1
    assert cache.get("a", compute("a")) == 1
    assert calls == ["a"]


def test_the_least_recently_used_answer_goes_first():
    calls, compute = counting({"a": 1, "b": 2, "c": 3})
    cache = SingleFlightCache(2)
    cache.get("a", compute("a"))
    cache.get("b", compute("b"))
    cache.get("a", compute("a"))  # a used again: b is now the oldest
    cache.get("c", compute("c"))
    assert len(cache) == 2
    cache.get("a", compute("a"))
    cache.get("b", compute("b"))
    assert calls == ["a", "b", "c", "b"]


def test_a_newer_generation_drops_the_older_and_an_older_one_is_not_stored():
    calls, compute = counting({"a1": 1, "b1": 2, "a2": 3})
    cache = SingleFlightCache(8)
    cache.get("a1", compute("a1"), 1)
    cache.get("b1", compute("b1"), 1)
    cache.get("a2", compute("a2"), 2)
    assert len(cache) == 1 and cache.generation == 2
    cache.get("b1", compute("b1"), 1)  # a reader still on generation 1: answered, not kept
    assert len(cache) == 1
    cache.get("a2", compute("a2"), 2)
    assert calls == ["a1", "b1", "a2", "b1"]


class _Watched(threading.Event):
    """An Event that counts the threads waiting on it."""

    def __init__(self, waiting: threading.Condition, counter: list[int]):
        super().__init__()
        self._waiting, self._counter = waiting, counter

    def wait(self, timeout=None):
        with self._waiting:
            self._counter[0] += 1
            self._waiting.notify_all()
        return super().wait(timeout)


@pytest.fixture
def watched(monkeypatch):
    """(condition, counter): how many threads wait for another's computation."""
    waiting, counter = threading.Condition(), [0]

    class Flight(single_flight._Flight):
        def __init__(self):
            super().__init__()
            self.done = _Watched(waiting, counter)

    monkeypatch.setattr(single_flight, "_Flight", Flight)
    return waiting, counter


def _run_together(cache, compute, threads: int, watched) -> list:
    """``threads`` threads get the same key; the first computation is held until
    all the others wait for it."""
    waiting, counter = watched
    started, answers = threading.Event(), []
    release = threading.Event()

    def held():
        started.set()
        release.wait()
        return compute()

    def reader(first: bool):
        try:
            answers.append(cache.get("k", held if first else compute))
        except RuntimeError as error:
            answers.append(error)

    workers = [threading.Thread(target=reader, args=(True,))]
    workers[0].start()
    started.wait()
    workers += [threading.Thread(target=reader, args=(False,)) for _ in range(threads - 1)]
    for worker in workers[1:]:
        worker.start()
    with waiting:
        assert waiting.wait_for(lambda: counter[0] == threads - 1, timeout=60)
    release.set()
    for worker in workers:
        worker.join()
    return answers


def test_threads_missing_the_same_key_wait_for_one_computation(watched):
    calls = []

    def compute():
        calls.append(1)
        return "answer"

    cache = SingleFlightCache(4)
    assert _run_together(cache, compute, 5, watched) == ["answer"] * 5
    assert calls == [1]  # the leader's only: the other four waited for it
    assert cache.get("k", compute) == "answer" and calls == [1]


def test_when_the_computation_fails_each_waiter_meets_its_own_and_nothing_is_kept(watched):
    calls = []

    def compute():
        calls.append(1)
        raise RuntimeError("the database went away")

    cache = SingleFlightCache(4)
    answers = _run_together(cache, compute, 3, watched)
    assert len(answers) == 3 and all(isinstance(a, RuntimeError) for a in answers)
    assert len(calls) == 3 and len(cache) == 0


def test_peek_answers_what_is_remembered_and_computes_nothing():
    calls, compute = counting({"a": 1})
    cache = SingleFlightCache(2)
    assert cache.peek("a") is None
    cache.get("a", compute("a"))
    assert cache.peek("a") == 1 and calls == ["a"]
