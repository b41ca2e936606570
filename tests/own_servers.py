"""A PostgreSQL cluster and a Redis server of a test's own, on ports of their
own, so that the test may kill and restart them (tests/test_faults_pg.py,
tests/test_scale_out_pg.py). The machine's shared servers are never touched.

PostgreSQL refuses to run as root: as root, the cluster's directory belongs
to the ``postgres`` user and every command runs as that user (``runuser``).

Both listen on 127.0.0.1 only, unless a test names more addresses of its own
(``listen``): tests/test_scale_out_pg.py adds the root side of the veth pairs
to its network namespaces, and lets in only those hosts (``clients``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from glob import glob
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's binaries (Debian keeps them off PATH)."""
    found = sorted(glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda path: int(Path(path).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


def skip_unless_servers_can_run() -> None:
    if postgres_bin() is None or not shutil.which("redis-server"):
        pytest.skip("needs PostgreSQL's and Redis's server binaries (postgres, redis-server)")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        pytest.skip("as root, PostgreSQL must run as another user: needs runuser")


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _wait(until, what: str, timeout: float, log: Path) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if until():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s:\n"
                         f"{log.read_text(errors='replace')[-4000:]}")


class OwnPostgres:
    """A throw-away cluster: ``initdb`` once, then started, crashed and restarted
    at will. Trust authentication on 127.0.0.1, and from the addresses or
    networks in ``clients`` (CIDR), which reach it on the addresses in ``listen``."""

    def __init__(self, port: int, *, listen: tuple[str, ...] = ("127.0.0.1",),
                 clients: tuple[str, ...] = ()) -> None:
        self.port, self.listen = port, listen
        self.bin = postgres_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="ivrs-own-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(_as_owner([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust",
                                  "-U", "postgres", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True)
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.writelines(f"host all all {client} trust\n" for client in clients)
        self.process: subprocess.Popen | None = None

    def url(self, database: str = "postgres", host: str = "127.0.0.1") -> str:
        return f"postgresql+psycopg://postgres@{host}:{self.port}/{database}"

    def start(self) -> float:
        """Start the server; seconds until it accepts connections."""
        with self.log.open("a") as log:
            # fsync off: the tests crash the server, never the machine, and the
            # operating system keeps what the server wrote; commits still wait
            # for the WAL to be written (synchronous_commit stays on).
            self.process = subprocess.Popen(
                _as_owner([str(self.bin / "postgres"), "-D", str(self.data),
                           "-p", str(self.port), "-k", str(self.dir),
                           "-c", f"listen_addresses={','.join(self.listen)}", "-c", "fsync=off",
                           "-c", "max_connections=300"]),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return _wait(self.accepts, "PostgreSQL start", 60, self.log)

    def accepts(self) -> bool:
        result = subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1",
                                 "-p", str(self.port)], check=False)
        return result.returncode == 0

    def crash(self) -> None:
        """Immediate shutdown (SIGQUIT): no checkpoint, every backend gone at
        once, crash recovery at the next start, as after a power cut of the
        server process."""
        self._signal(signal.SIGQUIT)

    def stop(self) -> None:
        self._signal(signal.SIGINT)  # fast shutdown

    def _signal(self, signum: int) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # runuser forwards nothing: signal the postmaster itself (first line of its pid file)
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signum)
        self.process.wait(timeout=60)
        self.process = None

    def create_database(self, name: str, template: str | None = None) -> str:
        admin = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            suffix = f' TEMPLATE "{template}"' if template else ""
            connection.execute(text(f'CREATE DATABASE "{name}"{suffix}'))
        admin.dispose()
        return self.url(name)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class OwnRedis:
    """A Redis that keeps nothing on disk, as production's sessions need none."""

    def __init__(self, port: int, log_dir: Path, *,
                 listen: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.port, self.listen = port, listen
        self.log = log_dir / f"redis-{port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.url_at("127.0.0.1")

    def url_at(self, host: str) -> str:
        return f"redis://{host}:{self.port}/0"

    def start(self) -> float:
        # Protected mode refuses every client not on loopback when there is no
        # password: off when the test names addresses of its own to listen on.
        protected = "yes" if self.listen == ("127.0.0.1",) else "no"
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", *self.listen,
                 "--protected-mode", protected, "--save", "", "--appendonly", "no"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return _wait(self.answers, "Redis start", 30, self.log)

    def answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except (redis.RedisError, OSError):
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=15)
        self.process = None
