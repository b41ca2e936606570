"""Scale-out (issue 16): two app hosts behind a real load balancer, one of them
killed outright under load.

Each host is a network namespace the test makes (``ip netns``), joined to
this one by a veth pair on a /24 of its own, and runs ``ivrs serve`` (gunicorn,
2 workers) on 0.0.0.0:8000. Both use one PostgreSQL and one Redis of the
test's own (tests/own_servers.py), which listen on 127.0.0.1 and on the root
side of each veth pair, and let in only the two hosts. HAProxy, from Debian's
package ``haproxy``, runs in the foreground on 127.0.0.1 and spreads the
requests round-robin over the two hosts: one call's steps alternate between
them, so every step reads the session the other host wrote to Redis.

200 site users call at once through the balancer, as Twilio would (retries,
some requests sent twice: tests/faults.py), each screening and randomizing a
subject. Two seconds in, host A's whole process group is killed with
SIGKILL. Afterwards: the database holds exactly what every caller heard,
nothing twice; every caller finished; every answer was a 200 (204 for the
status callbacks); ``ivrs audit verify`` exits 0; and host B carried the
calls after the kill, among them requests that were on A when it died. The
numbers are printed.

PostgreSQL + Redis runs only (IVRS_TEST_DATABASE_URL set), as root (network
namespaces), with ``ip`` and ``haproxy`` installed.
"""

from __future__ import annotations

import csv
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e import (
    DAY_1,
    Call,
    Server,
    all_together,
    free_port,
    kill_server,
    signed_up_users,
    start_server,
    stock_sites,
)
from faults import Tally, TwilioLikeTransport, assert_exactly_once, caller_through_faults
from own_servers import OwnPostgres, OwnRedis, skip_unless_servers_can_run
from voice import demo_study_in_english

from core.db import Database
from core.migrate import upgrade
from core.mrl import import_mrl
from ivrs.demo.scenario import STUDY_CODE, write_demo_mrl
from ivrs.server.serve import THREADS_PER_WORKER

pytestmark = [pytest.mark.postgres, pytest.mark.faults]

CALLERS = 200
KILL_AFTER_SECONDS = 2.0
CALLS_DEADLINE_SECONDS = 90
APP_PORT = 8000
WORKERS_PER_HOST = 2
# The callers' subjects fall evenly in the four strata (50 each): the demo
# list's 30 entries a stratum, extended by 30 more.
MORE_ENTRIES_PER_STRATUM = 30
# Kits for 110 subjects a site whatever the arm (one kit each at visit 1).
KITS_PER_TYPE_AND_SITE = 110
LOCK_FILE = Path(tempfile.gettempdir()) / "ivrs-scale-out-test.lock"
# The running balancer's pid and configuration, for the next run to stop it
# if this one dies without its teardown.
BALANCER_PID_FILE = Path(tempfile.gettempdir()) / "ivrs-scale-out-haproxy.pid"


# --- the network ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppHost:
    """A namespace and its veth pair: ``<name>-gw`` here (.1), ``<name>-eth`` there (.2)."""

    name: str  # the namespace; its last letter names the server in HAProxy
    subnet: int  # 10.201.<subnet>.0/24

    @property
    def gateway(self) -> str:
        return f"10.201.{self.subnet}.1"

    @property
    def address(self) -> str:
        return f"10.201.{self.subnet}.2"

    @property
    def server_name(self) -> str:
        return self.name[-1]


HOSTS = (AppHost("ivrs-a", 1), AppHost("ivrs-b", 2))


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def remove_host(host: AppHost) -> None:
    """The namespace, its processes and its veth pair, whatever is left of them
    (a run that crashed may have left any part)."""
    pids = ip("netns", "pids", host.name, check=False).stdout.split()
    for pid in pids:  # only this test runs anything in these namespaces
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    ip("netns", "delete", host.name, check=False)
    ip("link", "delete", f"{host.name}-gw", check=False)  # takes its peer with it


def make_host(host: AppHost) -> None:
    root_end, host_end = f"{host.name}-gw", f"{host.name}-eth"
    ip("netns", "add", host.name)
    ip("link", "add", root_end, "type", "veth", "peer", "name", host_end, "netns", host.name)
    ip("address", "add", f"{host.gateway}/24", "dev", root_end)
    ip("link", "set", root_end, "up")
    ip("-n", host.name, "address", "add", f"{host.address}/24", "dev", host_end)
    ip("-n", host.name, "link", "set", host_end, "up")
    ip("-n", host.name, "link", "set", "lo", "up")
    # No default route: from the namespace, only the root side of its own pair is reachable.


@contextmanager
def app_hosts():
    """The two namespaces, made afresh and always removed. A lock keeps two runs
    of this test on one machine from taking each other's names and addresses."""
    with LOCK_FILE.open("w") as lock:
        deadline = time.monotonic() + 120
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another run of this test holds {LOCK_FILE}")
                time.sleep(0.5)
        try:
            stop_leftover_balancer()
            for host in HOSTS:
                remove_host(host)
                taken = ip("-4", "route", "show", f"10.201.{host.subnet}.0/24").stdout.strip()
                if taken:
                    pytest.skip(f"10.201.{host.subnet}.0/24 is already routed here: {taken}")
            for host in HOSTS:
                make_host(host)
            yield HOSTS
        finally:
            for host in HOSTS:
                remove_host(host)


# --- the balancer -----------------------------------------------------------------------------


HAPROXY_CONFIG = """\
global
    log stdout format raw local0
    stats socket {socket} mode 600 level user
    maxconn 2000

defaults
    mode http
    log global
    # One line a request: when it was accepted, the server that answered in the
    # end, the status, the retries ("+" in front: redispatched to another
    # server), the total time and the call (for the test's counts).
    log-format "req %Ts.%ms %s %ST %rc %Ta %[capture.req.hdr(0)] %HU"
    # Also the pause before a retry after a refused connection (the lesser
    # of this and 1 s).
    timeout connect 500ms
    # A request waits here for a free thread on a host (see maxconn below).
    timeout queue 15s
    timeout client 30s
    timeout http-request 10s
    timeout server 10s
    # A busy host answers its check late, not never: a dead one refuses the
    # connection at once (and see "observe" below).
    timeout check 3s
    # Retry a request that failed on one host on the other one. Safe for POSTs
    # here: every voice step is idempotent by its step token (the step=N of the
    # URL): a step sent again is answered as the first time, and the
    # transactions a step starts are keyed by call and step, so a step that A
    # carried out before dying is not carried out again by B (the same property
    # that makes Twilio's own retries safe; ivrs/conversations/calls.py). The
    # status callback only marks the call ended, which may happen twice; an
    # SMS acts at most once by its MessageSid (ivrs/conversations/texts.py).
    #   conn-failure: the host refuses the connection (dead, not yet marked down);
    #   empty-response: it closed the connection without answering (killed
    #     mid-request, or the connection was in its listen queue);
    #   response-timeout: it did not answer within "timeout server" (hung).
    retries 3
    retry-on conn-failure empty-response response-timeout
    # Each retry on another server, not the same dead one again (the default
    # redispatches only at the last retry).
    option redispatch 1

frontend twilio
    bind 127.0.0.1:{port}
    # The whole request before a host is chosen (it is small): the retries
    # need it buffered anyway, and the log captures its CallSid.
    option http-buffer-request
    http-request capture req.body_param(CallSid) len 40
    default_backend hosts

backend hosts
    balance roundrobin
    # /healthz answers 503 when the host cannot reach PostgreSQL or Redis.
    # Checked every 500 ms; down after 2 failures, up again after 2 passes.
    option httpchk GET /healthz
    http-check expect status 200
    # At most as many requests on a host as it has threads (workers x threads):
    # the rest wait in HAProxy's queue, not in the host's. Without it, one host
    # left alone gets every request at once, its /healthz waits behind them
    # past "timeout check", it is marked down while healthy, and with no host
    # up every caller gets a 503. A request queued here, not on a host that
    # dies, simply goes to the other host.
    # The requests themselves are watched too: 3 refused connections in a row
    # mark a host down at once, without waiting for its next 2 checks. Until
    # then a request retried away from a dead host while the other one is
    # full (maxconn) is sent to the dead one again, and after 3 retries its
    # caller gets a 503.
    default-server observe layer4 error-limit 3 on-error mark-down
{servers}
"""


@dataclass(frozen=True)
class Logged:
    """One request as HAProxy logged it."""

    accepted: float  # Unix time
    server: str
    status: int
    retries: str  # "0", "2", "+1": the "+" means redispatched
    total_ms: int
    call_sid: str
    uri: str


class Balancer:
    """HAProxy in the foreground (``-db``), in a process group of its own."""

    def __init__(self, directory: Path, hosts: tuple[AppHost, ...]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket = directory / "haproxy.sock"
        self.config = directory / "haproxy.cfg"
        self.log = directory / "haproxy.log"
        servers = "\n".join(
            f"    server {host.server_name} {host.address}:{APP_PORT} "
            f"maxconn {WORKERS_PER_HOST * THREADS_PER_WORKER} check inter 500ms fall 2 rise 2"
            for host in hosts)
        self.config.write_text(HAPROXY_CONFIG.format(socket=self.socket, port=self.port,
                                                     servers=servers))
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("w") as log:
            self.process = subprocess.Popen(["haproxy", "-f", str(self.config), "-db"],
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        BALANCER_PID_FILE.write_text(f"{self.process.pid} {self.config}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"haproxy exited with {self.process.returncode}:\n"
                            f"{self.log.read_text(errors='replace')}")
            try:
                servers = self.servers()
            except OSError:
                servers = {}
            if servers and all(row["check_status"] == "L7OK" and row["status"] == "UP"
                               for row in servers.values()):
                return
            time.sleep(0.1)
        pytest.fail(f"haproxy did not see both hosts up: {self.servers()}")

    def servers(self) -> dict[str, dict[str, str]]:
        """The backend's servers as ``show stat`` gives them (status, counters)."""
        with socket.socket(socket.AF_UNIX) as stats:
            stats.settimeout(2)
            stats.connect(str(self.socket))
            stats.sendall(b"show stat\n")
            answer = b""
            while chunk := stats.recv(65536):
                answer += chunk
        rows = csv.DictReader(answer.decode().lstrip("# ").splitlines())
        return {row["svname"]: row for row in rows
                if row["pxname"] == "hosts" and row["svname"] not in ("BACKEND", "FRONTEND")}

    def wait_for_status(self, server: str, wanted: str, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.servers()[server]["status"].startswith(wanted):
                return time.monotonic() - started
            time.sleep(0.05)
        pytest.fail(f"haproxy did not mark {server} {wanted} within {timeout} s")

    def requests(self) -> list[Logged]:
        logged = []
        for line in self.log.read_text(errors="replace").splitlines():
            if not line.startswith("req "):
                continue  # HAProxy's own messages (a server going down...)
            _, accepted, server, status, retries, total, call_sid, uri = line.split(" ")
            logged.append(Logged(float(accepted), server, int(status), retries, int(total),
                                 call_sid, uri))
        return logged

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        BALANCER_PID_FILE.unlink(missing_ok=True)


def stop_leftover_balancer() -> None:
    """The HAProxy of a run that died without its teardown, if it still runs."""
    try:
        pid, config = BALANCER_PID_FILE.read_text().split(" ", 1)
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        command = []
    if command and command[:3] == [b"haproxy", b"-f", config.encode()]:
        os.kill(int(pid), signal.SIGKILL)
    BALANCER_PID_FILE.unlink(missing_ok=True)


# --- the study -------------------------------------------------------------------------------


def extend_the_list(db, path: Path) -> None:
    """More entries a stratum (``ivrs mrl import`` of a second list extends the
    first), numbered after the demo list's, in 2:1 blocks of 3 as it is."""
    write_demo_mrl(path, MORE_ENTRIES_PER_STRATUM, seed=1616, numbers_after=2000,
                   block_prefix="X")
    import_mrl(db, path, study_code=STUDY_CODE)


@dataclass
class ScaleOut:
    db: Database
    database_url: str  # as seen from here
    users: list
    hosts: dict[str, Server]  # by HAProxy's server name
    balancer: Balancer


@pytest.fixture
def scale_out(tmp_path, tmp_path_factory, monkeypatch):
    if not os.environ.get("IVRS_TEST_DATABASE_URL"):
        pytest.skip("PostgreSQL + Redis runs only: set IVRS_TEST_DATABASE_URL")
    if os.geteuid() != 0:
        pytest.skip("makes network namespaces and veth pairs: needs root")
    for tool in ("ip", "haproxy"):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool} (Debian packages iproute2, haproxy)")
    skip_unless_servers_can_run()
    monkeypatch.setenv("IVRS_TODAY", DAY_1.isoformat())  # the demo lots' dates follow it
    with ExitStack() as stack:
        hosts = stack.enter_context(app_hosts())
        gateways = ("127.0.0.1", *(host.gateway for host in hosts))
        postgres = OwnPostgres(free_port(), listen=gateways,
                               clients=tuple(f"{host.address}/32" for host in hosts))
        stack.callback(postgres.remove)
        redis = OwnRedis(free_port(), tmp_path_factory.mktemp("redis"), listen=gateways)
        stack.callback(redis.kill)
        postgres.start()
        redis.start()

        database_url = postgres.create_database("ivrs_scale_out")
        db = Database(database_url, pool_size=4)
        stack.callback(db.dispose)
        upgrade(db.engine)
        demo_study_in_english(db, tmp_path)
        extend_the_list(db, tmp_path / "more-mrl.csv")
        users = signed_up_users(db, CALLERS, first=8001)
        stock_sites(db, tmp_path / "site-kits.csv", per_type_and_site=KITS_PER_TYPE_AND_SITE)

        balancer = Balancer(tmp_path_factory.mktemp("haproxy"), hosts)
        servers: dict[str, Server] = {}

        def serve(host: AppHost) -> None:
            # The URL Twilio signs is the balancer's, not the one the host sees.
            servers[host.server_name] = start_server(
                postgres.url("ivrs_scale_out", host=host.gateway), DAY_1, tmp_path,
                port=APP_PORT, workers=WORKERS_PER_HOST, netns=host.name,
                address=host.address, REDIS_URL=redis.url_at(host.gateway),
                PUBLIC_BASE_URL=balancer.url)

        @stack.callback
        def kill_hosts() -> None:
            for server in servers.values():
                kill_server(server)

        with ThreadPoolExecutor(len(hosts)) as pool:
            list(pool.map(serve, hosts))
        stack.callback(balancer.stop)
        balancer.start()
        yield ScaleOut(db, database_url, users, servers, balancer)


# --- the test --------------------------------------------------------------------------------


def test_two_hosts_behind_haproxy_one_killed_under_load(scale_out):
    balancer, tally = scale_out.balancer, Tally()
    deadline = time.monotonic() + CALLS_DEADLINE_SECONDS
    calls: list = [None] * CALLERS
    finished: list[float] = []
    kill: dict = {}
    kill_errors: list[BaseException] = []

    def call(user, index: int) -> None:
        transport = TwilioLikeTransport(balancer.url, tally, random.Random(index))
        calls[index] = caller_through_faults(transport, user, index, deadline=deadline)
        finished.append(time.time())

    def kill_host_a() -> None:
        try:
            time.sleep(KILL_AFTER_SECONDS)
            kill["at"] = time.time()
            kill["callers_done"] = len(finished)
            kill_server(scale_out.hosts["a"])  # master, workers and jobs: one group
            kill["marked_down_after"] = balancer.wait_for_status("a", "DOWN", timeout=10)
            kill["left_on_a"] = ip("netns", "pids", HOSTS[0].name).stdout.split()
        except BaseException as error:  # noqa: BLE001 — re-raised in the test's thread
            kill_errors.append(error)

    started = time.time()
    killer = threading.Thread(target=kill_host_a)
    killer.start()
    all_together(scale_out.users, call, timeout=CALLS_DEADLINE_SECONDS + 30)
    took = time.time() - started
    killer.join(timeout=30)
    assert not kill_errors, kill_errors
    assert kill["callers_done"] < CALLERS, "host A was killed after the load"
    assert not kill["left_on_a"], "a process of host A outlived the kill"

    assert_exactly_once(scale_out.db, scale_out.database_url, calls, tally)

    logged = balancer.requests()
    after = [r for r in logged if r.accepted >= kill["at"]]
    retried = [r for r in logged if r.retries != "0"]
    # A request accepted before the kill and answered after it, by B after a retry:
    # it was on A (or on its way there) when A died.
    moved = [r for r in logged if r.accepted < kill["at"] and r.server == "b"
             and r.retries.startswith("+")]
    spanning = {r.call_sid for r in logged if r.accepted < kill["at"]} & {
        r.call_sid for r in after}
    served = Counter(r.server for r in logged)
    assert {r.status for r in logged} <= {200, 204}, Counter(r.status for r in logged)
    assert not [r for r in after if r.server == "a"], "host A answered after it was killed"
    assert len([r for r in after if r.server == "b"]) > CALLERS, "host B carried little"
    assert moved, "no request was on host A when it died: nothing was retried on B"
    assert len(spanning) > CALLERS * 0.25, "few calls were under way at the kill"
    # The hosts check signatures against PUBLIC_BASE_URL, the balancer's URL,
    # not the Host a request arrives with: one signed for host B's own URL
    # and sent to it directly is refused.
    direct = Call.to(scale_out.hosts["b"].url, scale_out.users[0])
    assert direct.phone.dial().status == 403
    print(f"\n{CALLERS} callers through HAProxy over 2 hosts, host A killed after "
          f"{KILL_AFTER_SECONDS} s: all done in {took:.1f} s ({max(finished) - kill['at']:.1f} s "
          f"after the kill); A marked down {kill['marked_down_after']:.2f} s after the kill; "
          f"{len({r.call_sid for r in logged})} calls, {len(logged)} requests "
          f"(A {served['a']}, B {served['b']}; B after the kill {len(after)}); "
          f"{len(spanning)} calls under way at the kill went on on B; "
          f"HAProxy retried {len(retried)} requests "
          f"({sum(r.retries.startswith('+') for r in retried)} redispatched, "
          f"{len(moved)} of them on A or on their way to it when it died; slowest "
          f"{max((r.total_ms for r in retried), default=0)} ms); callers: {tally.summary()}")
