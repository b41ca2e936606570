"""Test database: SQLite by default, PostgreSQL when IVRS_TEST_DATABASE_URL is set.

Each test gets an empty, freshly migrated database: a new SQLite file, or on
PostgreSQL a database of its own (so parallel clients of one test share it and
nothing leaks between tests). The migrations run once per test session (per
worker process under xdist), into a template that each test's database is a copy
of: on PostgreSQL a template database (``CREATE DATABASE ... TEMPLATE``), on
SQLite a migrated file copied byte for byte. Either takes milliseconds where
migrating takes most of a second, which the ~1,500 tests would pay each. The
migrations from an empty database are still run (into the template) by every
session, and tests/test_migrations.py checks what they produce.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from core import append_only
from core.db import Database, database_url, make_engine
from core.migrate import upgrade

PG_URL = os.environ.get("IVRS_TEST_DATABASE_URL")

pytest_plugins = ["voice", "api_support", "web_support", "browser_support"]

_template: str | None = None
_sqlite_template: Path | None = None


def _admin():
    return make_engine(PG_URL, pool_size=1, isolation_level="AUTOCOMMIT")


def _url_of(database: str) -> str:
    # A test database need not survive a crash of the server: commits do not
    # wait for the disk (the tests wait on commits more than on anything else).
    return (make_url(database_url(PG_URL)).set(database=database)
            .update_query_dict({"options": "-c synchronous_commit=off"})
            .render_as_string(hide_password=False))


def _template_database() -> str:
    """A database migrated to head, made once per test session."""
    global _template
    if _template is None:
        name = f"ivrs_template_{uuid.uuid4().hex[:8]}"
        admin = _admin()
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        migrated = Database(_url_of(name), pool_size=1)
        upgrade(migrated.engine)
        migrated.dispose()  # a template must have no connection when it is copied

        def drop():
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

        atexit.register(drop)
        _template = name
    return _template


def _sqlite_template_file() -> Path:
    """A SQLite file migrated to head, made once per test session."""
    global _sqlite_template
    if _sqlite_template is None:
        directory = Path(tempfile.mkdtemp(prefix="ivrs-template-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        path = directory / "template.sqlite3"
        migrated = Database(f"sqlite:///{path}")
        upgrade(migrated.engine)
        # Closing the last connection checkpoints the WAL into the file and
        # removes it: the one file is then the whole database (WAL mode, kept in
        # its header, comes along with the copy).
        migrated.dispose()
        leftovers = [p.name for p in directory.iterdir() if p != path]
        assert not leftovers, f"the template is more than one file: {leftovers}"
        _sqlite_template = path
    return _sqlite_template


def migrated_sqlite(path: Path) -> Database:
    """A SQLite database at ``path`` migrated to head: a copy of the session's template."""
    shutil.copyfile(_sqlite_template_file(), path)
    return Database(f"sqlite:///{path}")


def fresh_database(tmp_path, pool_size: int = 10) -> tuple[Database, callable]:
    if not PG_URL:
        db = migrated_sqlite(Path(tmp_path) / "test.sqlite3")
        return db, db.dispose
    name = _databases().take()
    # CLI commands given DATABASE_URL (and subprocesses) land in the same place.
    db = Database(_url_of(name), pool_size=pool_size, max_overflow=10)

    def cleanup():
        db.dispose()
        _databases().give_back(name)

    return db, cleanup


class _Databases:
    """The tests' PostgreSQL databases, each reused by test after test.

    ``DROP DATABASE`` makes the server take an immediate checkpoint (it writes out
    every dirty buffer of the cluster and waits for the disk): seconds on a busy
    machine, most of a test's time when each test dropped its own. A database a
    test is done with is emptied instead (its connections ended, every row of
    every table deleted with triggers and foreign keys off, its sequences back
    at 1): the next test gets it exactly as a copy of the template would be,
    schema and ``alembic_version`` untouched. A few are created (as many as are
    in use at once), and dropped when the session ends."""

    def __init__(self):
        self.free: list[str] = []
        self.made: list[str] = []
        self.admin = _admin()
        template = _template_database()
        engine = create_engine(_url_of(template), poolclass=NullPool)
        with engine.connect() as conn:
            self.tables = conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'alembic_version'")).scalars().all()
            self.sequences = conn.execute(text(
                "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"
            )).scalars().all()
            self.schema = conn.execute(SCHEMA_FINGERPRINT).scalar_one()
        engine.dispose()  # a template must have no connection when it is copied
        atexit.register(self.drop_all)

    def take(self) -> str:
        if self.free:
            return self.free.pop()
        name = f"ivrs_test_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{_template_database()}"'))
        self.made.append(name)
        return name

    def give_back(self, name: str) -> None:
        with self.admin.connect() as conn:
            # servers a test started (and did not stop) must not write into the next one
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :name"), {"name": name})
        engine = create_engine(_url_of(name), poolclass=NullPool)
        try:
            with engine.connect() as conn:
                empty_database(conn, self.tables, self.sequences)
                # tests of `ivrs audit verify` drop or disable the append-only
                # trigger to tamper with the trail: put it back as migrated
                for statement in [*append_only.drop_statements("postgresql"),
                                  *append_only.create_statements("postgresql")]:
                    conn.exec_driver_sql(statement)
                conn.commit()
                # anything else a test changed in the schema: not reused
                same = conn.execute(SCHEMA_FINGERPRINT).scalar_one() == self.schema
        except Exception:  # noqa: BLE001 — not reused, then: dropped at the end
            return
        finally:
            engine.dispose()
        if same:
            self.free.append(name)

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.made:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


# The schema as a digest: tables' columns, indexes, constraints, triggers (and
# whether each is enabled), functions, the migration reached.
SCHEMA_FINGERPRINT = text("""
SELECT md5(string_agg(item, '|' ORDER BY item)) FROM (
    SELECT 'c ' || table_name || '.' || column_name || ' ' || data_type || ' '
           || is_nullable || ' ' || coalesce(column_default, '') AS item
      FROM information_schema.columns WHERE table_schema = 'public'
    UNION ALL SELECT 'i ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
    UNION ALL SELECT 'k ' || conrelid::regclass || ' ' || conname || ' '
           || pg_get_constraintdef(oid)
      FROM pg_constraint WHERE connamespace = 'public'::regnamespace
    UNION ALL SELECT 't ' || tgname || ' ' || tgenabled::text || ' ' || pg_get_triggerdef(oid)
      FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL SELECT 'f ' || proname || ' ' || md5(prosrc)
      FROM pg_proc WHERE pronamespace = 'public'::regnamespace
    UNION ALL SELECT 'v ' || version_num FROM alembic_version
) AS schema
""")


def empty_database(conn, tables: list[str], sequences: list[str]) -> None:
    # session_replication_role=replica: no trigger fires (the audit table's
    # append-only ones, the foreign keys' checks), so the order does not matter
    conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
    conn.exec_driver_sql("; ".join(f'DELETE FROM "{table}"' for table in tables))
    if sequences:
        conn.exec_driver_sql("SELECT " + ", ".join(
            f"setval('\"{sequence}\"', 1, false)" for sequence in sequences))


_pool: _Databases | None = None


def _databases() -> _Databases:
    global _pool
    if _pool is None:
        _pool = _Databases()
    return _pool


# --- loaded databases: what a fixture loads, loaded once per session ------------------------

# key -> (the loaded database's template, the directory holding the files the
# loading wrote, their names in it, what the loading returned)
_loaded: dict[tuple, tuple[object, Path, list[str], object]] = {}


def loaded(db: Database, workdir, key: tuple, load: Callable[[Database, Path], object]):
    """``load(db, workdir)``, done for real the first time a ``key`` is met in the
    session, and from then on by turning ``db`` into a copy of what it made.

    The fixtures that load the example or the demo study into every test's
    database (about 700 tests) spend more there than in the tests: a copy
    gives each test the very rows a load would have written (the loading is
    deterministic: the same files, the same IVRS_TODAY), and the files it
    wrote into ``workdir`` (the study file, the lists) are copied there too.
    ``key`` must name everything the loading depends on. A database that is
    not empty any more (something was written before the fixture ran) is
    loaded for real, so a copy never replaces rows a test wrote.
    """
    workdir = Path(workdir)
    if not _is_empty(db):
        return load(db, workdir)
    if key in _loaded:
        template, saved, names, result = _loaded[key]
        _become_copy_of(db, template)
        for name in names:
            (workdir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(saved / name, workdir / name)
        return result
    before = _files_under(workdir)
    result = load(db, workdir)
    saved = Path(tempfile.mkdtemp(prefix="ivrs-loaded-"))
    atexit.register(shutil.rmtree, saved, ignore_errors=True)
    names = sorted(_files_under(workdir) - before)
    for name in names:
        (saved / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(workdir / name, saved / name)
    _loaded[key] = (_snapshot(db, saved), saved, names, result)
    return result


def _files_under(directory: Path) -> set[str]:
    return {str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file()}


def _is_empty(db: Database) -> bool:
    from helpers import table_counts

    return not any(table_counts(db).values())


def _snapshot(db: Database, directory: Path):
    """What ``db`` holds now, to make copies of: a file (SQLite), rows (PostgreSQL)."""
    if not PG_URL:
        db.dispose()
        import sqlite3

        path = directory / "loaded.sqlite3"
        # SQLite's backup API: a consistent copy whatever the WAL holds
        with sqlite3.connect(db.engine.url.database) as source, \
                sqlite3.connect(path) as target:
            source.backup(target)
        source.close()
        target.close()
        return str(path)
    # PostgreSQL: every table's rows (COPY's text, exact for every type) and
    # where each sequence is; restored into an empty database by _become_copy_of.
    pool = _databases()
    raw = db.engine.raw_connection()
    try:
        conn = raw.driver_connection
        rows = {}
        with conn.cursor() as cursor:
            for table in pool.tables:
                with cursor.copy(f'COPY "{table}" TO STDOUT') as copy:
                    rows[table] = b"".join(bytes(block) for block in copy)
            cursor.execute("SELECT sequencename, last_value FROM pg_sequences "
                           "WHERE schemaname = 'public'")
            sequences = dict(cursor.fetchall())
        conn.rollback()
    finally:
        raw.close()
    db.dispose()
    return rows, sequences


def _become_copy_of(db: Database, template) -> None:
    """Make the empty ``db`` a copy of ``template`` (see _snapshot), under the same
    name: the ``Database`` (and every URL handed out for it) stays valid."""
    if not PG_URL:
        db.dispose()
        path = Path(db.engine.url.database)
        for leftover in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            leftover.unlink(missing_ok=True)
        shutil.copyfile(template, path)
        return
    rows, sequences = template
    raw = db.engine.raw_connection()
    try:
        conn = raw.driver_connection
        with conn.cursor() as cursor:
            cursor.execute("SET LOCAL session_replication_role = replica")
            for table, data in rows.items():
                if data:
                    with cursor.copy(f'COPY "{table}" FROM STDIN') as copy:
                        copy.write(data)
            for sequence, last in sequences.items():
                if last is not None:
                    cursor.execute("SELECT setval(%s, %s, true)", (f'"{sequence}"', last))
        conn.commit()
    finally:
        raw.close()


@pytest.fixture
def db(tmp_path):
    database, cleanup = fresh_database(tmp_path)
    yield database
    cleanup()


@pytest.fixture
def embedded_db(tmp_path):
    """Always SQLite: for statistical tests of a method's choices (thousands of
    sequential assignments), whose outcome does not depend on the database; the
    PostgreSQL run covers the same code under concurrency elsewhere."""
    database = migrated_sqlite(tmp_path / "embedded.sqlite3")
    yield database
    database.dispose()


@pytest.fixture
def pg_db(tmp_path):
    """PostgreSQL only (concurrency tests); skipped on SQLite."""
    if not PG_URL:
        pytest.skip("needs PostgreSQL: set IVRS_TEST_DATABASE_URL")
    database, cleanup = fresh_database(tmp_path, pool_size=40)
    yield database
    cleanup()


@pytest.fixture
def database_env(db, monkeypatch):
    """DATABASE_URL pointing at the test database, for CLI tests."""
    url = db.engine.url.render_as_string(hide_password=False)
    monkeypatch.setenv("DATABASE_URL", url)
    return url


def is_postgres() -> bool:
    return bool(PG_URL) and database_url(PG_URL).startswith("postgresql")
