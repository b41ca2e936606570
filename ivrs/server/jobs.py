"""The server's background jobs (the SMS and e-mail senders, the webhook sender
and the daily supply job, ``ivrs.outbound.scheduler``) in a process of their
own, beside gunicorn's workers.

Why not threads of gunicorn's master, as before: the master forks a worker
whenever one must be replaced (a crash, a kill, ``--max-requests``), and a fork
copies every lock held by any thread at that instant, with no thread left in the
child to release it. A sender thread in the middle of an import when the master
forked left the new worker waiting for that module's import lock for ever: one
boot in five hung this way in tests/test_faults_pg.py once outbound SMS were
configured. The master now runs no thread of ours, and its forks are safe.

The jobs process is a new interpreter (``python -m ivrs.server.jobs``: nothing
inherited but the environment, and not multiprocessing, whose bookkeeping the
forked workers would inherit and trip over at exit) once gunicorn is listening; the master looks at it on every turn of
its loop and starts it again, at most every ``RESTART_AFTER_SECONDS``, if it
died; it is stopped with the server. The process itself ends when its parent
is gone, so a master killed outright leaves no sender behind. The jobs are
safe with any number of copies running (the senders' claims, the supply job's
advisory lock), so a restart overlapping a dying copy does no harm.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time as clock
from datetime import time

log = logging.getLogger("ivrs.jobs")

RESTART_AFTER_SECONDS = 5.0
STOP_TIMEOUT_SECONDS = 10.0
PARENT_CHECK_SECONDS = 1.0


def run_jobs(database_url: str, supply_at: time | None, parent_pid: int) -> None:
    """The jobs process's body: start the jobs' threads, then live as long as
    the server that started it."""
    from ivrs.outbound.scheduler import start_supply_schedule

    signal.signal(signal.SIGTERM, _exit_now)
    start_supply_schedule(database_url, supply_at)
    while os.getppid() == parent_pid:
        clock.sleep(PARENT_CHECK_SECONDS)
    log.warning("background jobs: the server (pid %d) is gone; stopping", parent_pid)


def _exit_now(signum, frame) -> None:
    # The jobs' threads are daemons: they end with the process. Whatever a pass
    # was doing is safe to cut: its transaction rolls back, an SMS whose answer
    # was lost is reconciled by the next pass (ivrs.outbound.notify), a webhook
    # left sending goes again (core.event_deliveries).
    raise SystemExit(0)


class JobsProcess:
    """The master's handle on the jobs process: start, watch, stop."""

    def __init__(self, database_url: str, supply_at: time | None) -> None:
        self.database_url, self.supply_at = database_url, supply_at
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> JobsProcess:
        # The settings travel in the environment, as the server's own do: a
        # database URL may hold a password, which a command line would show.
        env = {**os.environ, "DATABASE_URL": self.database_url,
               "IVRS_SUPPLY_AT": self.supply_at.strftime("%H:%M") if self.supply_at else "off"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ivrs.server.jobs", "--parent", str(os.getpid())], env=env)
        self.started_at = clock.monotonic()
        log.info("background jobs: process %d", self.process.pid)
        return self

    def exited(self) -> bool:
        """Has the process ended? (Also after gunicorn's master has reaped it as
        an unknown child: ``poll`` then finds no child and says it ended.)"""
        return self.process is not None and self.process.poll() is not None

    def keep_alive(self) -> None:
        """Start the process again if it died (not more often than every
        ``RESTART_AFTER_SECONDS``, so that a process that dies at once does not
        spin)."""
        if not self.exited() or clock.monotonic() - self.started_at < RESTART_AFTER_SECONDS:
            return
        log.error("background jobs: process %d ended; starting it again", self.process.pid)
        self.start()

    def stop(self) -> None:
        if self.process is None or self.exited():
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)


def main(argv: list[str] | None = None) -> None:
    """``python -m ivrs.server.jobs --parent PID``, as ``JobsProcess`` starts it."""
    from ivrs.config import Settings
    from ivrs.outbound.scheduler import parse_supply_at
    from ivrs.server.logs import configure_logging

    parser = argparse.ArgumentParser(description="ivrs serve's background jobs")
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    configure_logging()
    run_jobs(Settings.from_env().database_url, parse_supply_at(os.environ["IVRS_SUPPLY_AT"]),
             args.parent)


if __name__ == "__main__":
    main()
