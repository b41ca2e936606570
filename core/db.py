"""Engine and transactions for SQLite (embedded default) and PostgreSQL (production).

Concurrency is the database's job. On PostgreSQL, services take row locks
(counter rows updated with ``UPDATE ... RETURNING``, ``FOR UPDATE``); on SQLite
every write transaction starts with ``BEGIN IMMEDIATE`` so that two writers never
interleave and nobody fails late with "database is locked".
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_SQLITE_FILE = "ivrs.sqlite3"


def database_url(url: str | None = None) -> str:
    """The URL to use: explicit, then ``DATABASE_URL``, then a SQLite file here."""
    url = url or os.environ.get("DATABASE_URL") or f"sqlite:///{DEFAULT_SQLITE_FILE}"
    # Accept the URL forms people paste (Heroku-style, libpq-style) and pin the
    # driver we ship (psycopg 3) so nobody needs psycopg2 installed.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str | None = None, **kwargs) -> Engine:
    url = database_url(url)
    # A failed statement's exception would otherwise carry its bound values into
    # the log's traceback: an audit row's arm, a PIN hash. Blinding holds in logs too.
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 40)
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        _ping_when_idle(engine)
    return engine


# A pooled connection given back less than this long ago is used without a ping.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """``pool_pre_ping``, but only for a connection that sat idle in the pool.

    SQLAlchemy's pre-ping is a round trip to the server on every checkout: as
    many round trips as the statements themselves for a webhook's one-statement
    reads (may this caller go on, who is texting), under load when every
    connection was in use a moment ago. A connection that was idle (a quiet
    night, the database restarted meanwhile) is still pinged, and a dead one is
    replaced before anyone uses it (``DisconnectionError``: the pool reconnects,
    the SQLAlchemy-documented recipe). What is left is a server gone within
    the last second: that request fails and gets the apology (every write is
    keyed, so its retry acts once), and the pool drops its other connections.
    """
    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection, record):
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, _proxy):
        idle_since = record.info.pop("checked_in", None)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return  # new, or busy a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            raise exc.DisconnectionError(f"idle connection lost: {error}") from error


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling issues a deferred BEGIN lazily; we turn
    # it off and emit BEGIN IMMEDIATE ourselves (the SQLAlchemy-documented recipe).
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """One engine and its session factory; passed to every core service."""

    def __init__(self, url: str | None = None, engine: Engine | None = None, **engine_kwargs):
        from core.study_config import ConfigCache

        self.engine = engine or make_engine(url, **engine_kwargs)
        cache = ConfigCache()
        self.sessions = sessionmaker(self.engine, expire_on_commit=False,
                                     info={"config_cache": cache})
        # Reads that change nothing (what a dialog checks before it acts): on
        # PostgreSQL each statement commits on its own, which saves the BEGIN
        # and ROLLBACK round trips of a transaction around one SELECT. SQLite
        # keeps its transactions (BEGIN IMMEDIATE is its concurrency control).
        readers = (self.engine.execution_options(isolation_level="AUTOCOMMIT")
                   if self.engine.dialect.name == "postgresql" else self.engine)
        self.reads = sessionmaker(readers, expire_on_commit=False,
                                  info={"config_cache": cache})
        self._readers = readers

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on any exception."""
        with self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def read_connection(self) -> Iterator[Connection]:
        """A Core connection for reads as ``reads`` makes them (autocommit on
        PostgreSQL), without an ORM session around it: the lookups every webhook
        request makes first (who is texting, may this caller go on) are one Core
        statement each, and a session costs more than the statement."""
        with self._readers.connect() as connection:
            yield connection

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """Reads that must agree with each other (a dashboard's numbers, a chain
        check and the head it ends at): on PostgreSQL one read-only REPEATABLE
        READ transaction, i.e. one snapshot (``reads`` alone gives each statement
        its own); SQLite's transaction is one snapshot already."""
        with self.reads() as session:
            if self.is_postgres:
                session.connection(execution_options={"isolation_level": "REPEATABLE READ",
                                                      "postgresql_readonly": True})
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
