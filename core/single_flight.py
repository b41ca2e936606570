"""A small bounded cache whose misses are computed once: for answers that are
an exact function of their key (a read model keyed by the version of what it
reads), shared by the threads of one process.

- **Bounded**: at most ``size`` answers, the least recently used dropped first,
  so memory stays flat however many keys go by.
- **Generations**: an answer may be tagged with a generation (a version stamp
  that only grows, such as a study's audit head). Storing one of a newer
  generation drops every older one at once: nobody asks for those again, so
  the cache holds the current generation's answers, not ``size`` stale ones.
  An answer of an older generation than the newest stored (a reader whose
  snapshot began before a change) is computed and returned, not stored.
- **Single flight**: when several threads miss the same key at once, one
  computes and the others wait for its answer instead of all doing the same
  work at the same moment (the stampede after each change is one computation,
  not one per open page). If that computation fails, each waiter computes for
  itself, so it meets its own error, and nothing is remembered.

Nothing is serialised: answers are kept as the objects they are, so they must
be immutable (frozen dataclasses, tuples, strings).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Flight:
    """One computation under way, which other threads may wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value = None
        self.failed = False


class SingleFlightCache(Generic[T]):
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a cache holds at least one answer")
        self.size = size
        self._answers: OrderedDict[Hashable, tuple[int, T]] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()
        self.generation = 0  # the newest stored

    def get(self, key: Hashable, compute: Callable[[], T], generation: int = 0) -> T:
        """The answer for ``key``: remembered, or computed once by ``compute``.
        ``key`` must determine ``generation`` (include it)."""
        with self._lock:
            if key in self._answers:
                self._answers.move_to_end(key)
                return self._answers[key][1]
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            return compute() if flight.failed else flight.value
        try:
            value = compute()
        except BaseException:
            flight.failed = True
            raise
        else:
            flight.value = value
            with self._lock:
                self._store(key, value, generation)
            return value
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def peek(self, key: Hashable) -> T | None:
        """The answer remembered for ``key``, or None; computes nothing."""
        with self._lock:
            if key not in self._answers:
                return None
            self._answers.move_to_end(key)
            return self._answers[key][1]

    def _store(self, key: Hashable, value: T, generation: int) -> None:
        if generation < self.generation:
            return  # already superseded
        if generation > self.generation:
            self._answers = OrderedDict((k, kept) for k, kept in self._answers.items()
                                        if kept[0] >= generation)
            self.generation = generation
        self._answers[key] = (generation, value)
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._answers)

    def clear(self) -> None:
        with self._lock:
            self._answers.clear()
            self.generation = 0
