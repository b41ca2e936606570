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
from sqlalchemy import text
from sqlalchemy.engine import make_url

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
    template = _template_database()
    name = f"ivrs_test_{uuid.uuid4().hex[:12]}"
    admin = _admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    # CLI commands given DATABASE_URL (and subprocesses) land in the same place.
    db = Database(_url_of(name), pool_size=pool_size, max_overflow=10)

    def cleanup():
        db.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()

    return db, cleanup


# --- loaded databases: what a fixture loads, loaded once per session ------------------------

# key -> (the loaded database's template, the directory holding the files the
# loading wrote, their names in it, what the loading returned)
_loaded: dict[tuple, tuple[str, Path, list[str], object]] = {}


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


def _snapshot(db: Database, directory: Path) -> str:
    """A template of ``db`` as it is now: a file (SQLite) or a database (PostgreSQL)."""
    db.dispose()
    if not PG_URL:
        import sqlite3

        path = directory / "loaded.sqlite3"
        # SQLite's backup API: a consistent copy whatever the WAL holds
        with sqlite3.connect(db.engine.url.database) as source, \
                sqlite3.connect(path) as target:
            source.backup(target)
        source.close()
        target.close()
        return str(path)
    name = f"ivrs_loaded_{uuid.uuid4().hex[:8]}"
    admin = _admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{db.engine.url.database}"'))

    def drop():
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    atexit.register(drop)
    return name


def _become_copy_of(db: Database, template: str) -> None:
    """Replace ``db``'s database by a copy of ``template``, under the same name: the
    ``Database`` (and every URL handed out for it) stays valid."""
    db.dispose()
    if not PG_URL:
        path = Path(db.engine.url.database)
        for leftover in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            leftover.unlink(missing_ok=True)
        shutil.copyfile(template, path)
        return
    name = db.engine.url.database
    admin = _admin()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    admin.dispose()


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
