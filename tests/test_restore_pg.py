"""The restore drill of docs/deploy.md, run: a study with randomizations and
dispensings is dumped with ``pg_dump -Fc``, restored with ``pg_restore`` into a
new database, and the real ``ivrs audit verify`` accepts the copy, whose every
table holds as many rows as the original; then one audit row of the copy is
altered behind the append-only trigger (as a DBA could) and the same command
fails. The restored database is dropped whatever happens.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import uuid
from datetime import date, timedelta

import pytest
from helpers import table_counts
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from voice import TODAY, demo_study_in_english

from core.actors import Actor
from core.db import Database, make_engine
from core.randomize import randomize
from core.subjects import screen_subject
from core.supply.confirmation import confirm_kit
from core.supply.dispensing import dispense

pytestmark = pytest.mark.postgres

STUDY = "DEMO-301"
YES = {"INC1": True, "INC2": True, "EXC1": True}
PARIS = Actor(role="site_coordinator", user_code="5001", site_codes=frozenset({"101"}))
BARCELONA = Actor(role="investigator", user_code="5002", site_codes=frozenset({"102"}))
ALTER_ONE_ROW = text("UPDATE audit_events SET actor = 'someone else' WHERE seq = 2 "
                     "AND study_id = (SELECT id FROM studies WHERE code = :study)")


def pg_tool(name: str) -> str:
    """pg_dump or pg_restore: on PATH (Debian's wrapper), else the newest server's own."""
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        pytest.skip(f"{name} is not installed (postgresql-client)")
    return found


def libpq(url) -> tuple[list[str], dict[str, str]]:
    """Connection options for the PostgreSQL tools, and the password in the
    environment rather than on a command line."""
    args = ["--dbname", url.database, "--username", url.username or "postgres"]
    if url.host:
        args += ["--host", url.host]
    if url.port:
        args += ["--port", str(url.port)]
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = url.password
    return args, env


def ivrs(url, *args: str) -> subprocess.CompletedProcess:
    """The ``ivrs`` command in a process of its own, with DATABASE_URL as an operator sets it."""
    env = dict(os.environ, DATABASE_URL=url.render_as_string(hide_password=False))
    return subprocess.run([sys.executable, "-m", "ivrs.main", *args], env=env, check=False,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def trial(pg_db, tmp_path, monkeypatch):
    """The demo study with three subjects randomized (kits given at V1), one
    screen-only subject, a V2 dispensing four weeks later and a kit confirmed."""
    monkeypatch.setenv("IVRS_TODAY", TODAY)
    demo_study_in_english(pg_db, tmp_path)
    randomized = []
    for actor, site, factors in ((PARIS, "101", {"SEX": "M", "AGE": "LT65"}),
                                 (PARIS, "101", {"SEX": "F", "AGE": "GE65"}),
                                 (BARCELONA, "102", {"SEX": "M", "AGE": "GE65"})):
        number = screen_subject(pg_db, site_code=site, actor=actor, study=STUDY).subject_number
        result = randomize(pg_db, subject_number=number, actor=actor, study=STUDY,
                           eligibility=YES, factors=factors)
        assert result.kits
        randomized.append(number)
    screen_subject(pg_db, site_code="102", actor=BARCELONA, study=STUDY)
    monkeypatch.setenv("IVRS_TODAY", (date.fromisoformat(TODAY) + timedelta(28)).isoformat())
    v2 = dispense(pg_db, subject_number=randomized[0], actor=PARIS, study=STUDY)
    assert v2.visit == "V2" and v2.kits
    confirm_kit(pg_db, kit_number=v2.kits[0], actor=PARIS, study=STUDY)
    return pg_db


@pytest.fixture
def restored_url(pg_db):
    """The URL of a new, empty database beside the test's; dropped at the end."""
    source = pg_db.engine.url
    name = f"ivrs_restored_{uuid.uuid4().hex[:12]}"
    admin = make_engine(source.render_as_string(hide_password=False), pool_size=1,
                        isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            # template0: pg_restore's documented target (nothing a template added)
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE template0'))
        yield source.set(database=name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_restored_dump_verifies_and_a_tampered_copy_does_not(trial, restored_url, tmp_path):
    pg_dump, pg_restore = pg_tool("pg_dump"), pg_tool("pg_restore")
    source = trial.engine.url
    dump = tmp_path / "ivrs.dump"

    args, env = libpq(source)
    subprocess.run([pg_dump, "--format=custom", "--file", str(dump), *args], env=env,
                   check=True, capture_output=True, timeout=300)
    args, env = libpq(restored_url)
    subprocess.run([pg_restore, "--exit-on-error", *args, str(dump)], env=env, check=True,
                   capture_output=True, timeout=300)

    copy = Database(restored_url.render_as_string(hide_password=False), pool_size=1)
    try:
        # Counted before the verification, which records itself (an audit_verified row).
        original_counts, copy_counts = table_counts(trial), table_counts(copy)
        assert copy_counts == original_counts
        verified = ivrs(restored_url, "audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        # Not the empty success of a database without studies: the chain was there.
        assert verified.stdout.startswith(f"ok {STUDY}: "), verified.stdout
        assert "chain intact" in verified.stdout
        assert all(original_counts[table] > 0 for table in
                   ("randomizations", "subject_visits", "kits", "audit_events",
                    "audit_heads")), original_counts
        with trial.engine.connect() as a, copy.engine.connect() as b:
            revision = "SELECT version_num FROM alembic_version"
            assert a.execute(text(revision)).scalar() == b.execute(text(revision)).scalar()

        # The append-only guard came back with the data: an UPDATE is refused...
        with pytest.raises(DBAPIError, match="append-only"), copy.engine.begin() as conn:
            conn.execute(ALTER_ONE_ROW, {"study": STUDY})
        # ...until its owner (or a superuser) switches it off, as a tamperer would.
        with copy.engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
            altered = conn.execute(ALTER_ONE_ROW, {"study": STUDY}).rowcount
        assert altered == 1
    finally:
        copy.dispose()

    tampered = ivrs(restored_url, "audit", "verify")
    assert tampered.returncode != 0
    assert f"BROKEN {STUDY}" in tampered.stdout and "altered" in tampered.stdout, (
        tampered.stdout + tampered.stderr)
