"""The server's background jobs (the SMS sender and the daily supply job,
``ivrs.outbound.scheduler``) in a process of their own, beside gunicorn's workers.

Why not threads of gunicorn's master, as before: the master forks a worker
whenever one must be replaced (a crash, a kill, ``--max-requests``), and a fork
copies every lock held by any thread at that instant, with no thread left in the
child to release it. A sender thread in the middle of an import when the master
forked left the new worker waiting for that module's import lock for ever: one
boot in five hung this way in tests/test_faults_pg.py once outbound SMS were
configured. The master now runs no thread of ours, and its forks are safe.

The jobs process is started fresh (``spawn``: a new interpreter, nothing
inherited) once gunicorn is listening; the master looks at it on every turn of
its loop and starts it again, at most every ``RESTART_AFTER_SECONDS``, if it
died; it is stopped with the server. The process itself ends when its parent
is gone, so a master killed outright leaves no sender behind. Both jobs are
safe with any number of copies running (the sender's claims, the supply job's
advisory lock), so a restart overlapping a dying copy does no harm.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time as clock
from datetime import time
from multiprocessing.connection import wait

log = logging.getLogger("ivrs.jobs")

RESTART_AFTER_SECONDS = 5.0
STOP_TIMEOUT_SECONDS = 10.0
PARENT_CHECK_SECONDS = 1.0


def run_jobs(database_url: str, supply_at: time | None, parent_pid: int) -> None:
    """The jobs process's body: start the jobs' threads, then live as long as
    the server that started it."""
    from ivrs.outbound.scheduler import start_supply_schedule
    from ivrs.server.serve import configure_logging

    configure_logging()
    signal.signal(signal.SIGTERM, _exit_now)
    start_supply_schedule(database_url, supply_at)
    while os.getppid() == parent_pid:
        clock.sleep(PARENT_CHECK_SECONDS)
    log.warning("background jobs: the server (pid %d) is gone; stopping", parent_pid)


def _exit_now(signum, frame) -> None:
    # The jobs' threads are daemons: they end with the process. Whatever a pass
    # was doing is safe to cut: its transaction rolls back, and an SMS whose
    # answer was lost is reconciled by the next pass (ivrs.outbound.notify).
    raise SystemExit(0)


class JobsProcess:
    """The master's handle on the jobs process: start, watch, stop."""

    def __init__(self, database_url: str, supply_at: time | None) -> None:
        self.database_url, self.supply_at = database_url, supply_at
        self.process: multiprocessing.process.BaseProcess | None = None
        self.started_at = 0.0

    def start(self) -> JobsProcess:
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(target=run_jobs, name="ivrs-jobs", daemon=False,
                                       args=(self.database_url, self.supply_at, os.getpid()))
        self.process.start()
        self.started_at = clock.monotonic()
        log.info("background jobs: process %d", self.process.pid)
        return self

    def exited(self) -> bool:
        """Has the process ended? Its sentinel tells, even after gunicorn's
        master has reaped it as an unknown child (``waitpid(-1)``), which leaves
        multiprocessing unable to read its exit status."""
        return self.process is not None and bool(wait([self.process.sentinel], timeout=0))

    def keep_alive(self) -> None:
        """Start the process again if it died (not more often than every
        ``RESTART_AFTER_SECONDS``, so that a process that dies at once does not
        spin)."""
        if not self.exited() or clock.monotonic() - self.started_at < RESTART_AFTER_SECONDS:
            return
        log.error("background jobs: process %d ended; starting it again", self.process.pid)
        self.start()  # (not close(): after gunicorn's reaping it would think it still runs)

    def stop(self) -> None:
        if self.process is None or self.exited():
            return
        self.process.terminate()
        if not wait([self.process.sentinel], timeout=STOP_TIMEOUT_SECONDS):
            self.process.kill()
            wait([self.process.sentinel], timeout=STOP_TIMEOUT_SECONDS)
