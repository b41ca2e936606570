"""Test database: SQLite by default, PostgreSQL when IVRS_TEST_DATABASE_URL is set.

Each test gets an empty, freshly migrated database: a new SQLite file, or on
PostgreSQL a schema of its own (so parallel clients of one test share it and
nothing leaks between tests).
"""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import text

from core.db import Database, database_url, make_engine
from core.migrate import upgrade

PG_URL = os.environ.get("IVRS_TEST_DATABASE_URL")

pytest_plugins = ["voice"]


def _fresh_database(tmp_path, pool_size: int = 10) -> tuple[Database, callable]:
    if not PG_URL:
        db = Database(f"sqlite:///{tmp_path / 'test.sqlite3'}")
        upgrade(db.engine)
        return db, db.dispose
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_URL, pool_size=1)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    # The schema travels in the URL so that CLI commands given DATABASE_URL
    # (and subprocesses) land in the same place.
    url = f"{database_url(PG_URL)}?options=-csearch_path%3D{schema}"
    db = Database(url, pool_size=pool_size, max_overflow=10)
    upgrade(db.engine)

    def cleanup():
        db.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return db, cleanup


@pytest.fixture
def db(tmp_path):
    database, cleanup = _fresh_database(tmp_path)
    yield database
    cleanup()


@pytest.fixture
def pg_db(tmp_path):
    """PostgreSQL only (concurrency tests); skipped on SQLite."""
    if not PG_URL:
        pytest.skip("needs PostgreSQL: set IVRS_TEST_DATABASE_URL")
    database, cleanup = _fresh_database(tmp_path, pool_size=40)
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
