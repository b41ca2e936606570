"""Test database: SQLite by default, PostgreSQL when IVRS_TEST_DATABASE_URL is set.

Each test gets an empty, freshly migrated database: a new SQLite file, or on
PostgreSQL a database of its own (so parallel clients of one test share it and
nothing leaks between tests). On PostgreSQL the migrations run once per test
session, into a template database that each test's database is created from
(``CREATE DATABASE ... TEMPLATE``: a fraction of the time of migrating each).
"""

from __future__ import annotations

import atexit
import os
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from core.db import Database, database_url, make_engine
from core.migrate import upgrade

PG_URL = os.environ.get("IVRS_TEST_DATABASE_URL")

pytest_plugins = ["voice", "api_support", "web_support", "browser_support"]

_template: str | None = None


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


def fresh_database(tmp_path, pool_size: int = 10) -> tuple[Database, callable]:
    if not PG_URL:
        db = Database(f"sqlite:///{tmp_path / 'test.sqlite3'}")
        upgrade(db.engine)
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
    database = Database(f"sqlite:///{tmp_path / 'embedded.sqlite3'}")
    upgrade(database.engine)
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
