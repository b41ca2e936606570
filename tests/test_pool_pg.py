"""The connection pool's ping (core.db): a connection that sat idle in the pool
is checked before use, so a server-side disconnect while it was idle (a
restart, an idle timeout) costs nobody a failed request. PostgreSQL only."""

from __future__ import annotations

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

import core.db

PID = "SELECT pg_backend_pid()"


def test_a_connection_killed_while_idle_is_replaced_before_it_is_used(pg_db, monkeypatch):
    monkeypatch.setattr(core.db, "PING_AFTER_IDLE_SECONDS", 0.0)  # every checkout is "idle"
    with pg_db.read_connection() as connection:
        killed = connection.exec_driver_sql(PID).scalar()
    outsider = create_engine(pg_db.engine.url, poolclass=NullPool)
    try:
        with outsider.connect() as other:
            assert other.exec_driver_sql(f"SELECT pg_terminate_backend({killed})").scalar()
    finally:
        outsider.dispose()
    # The pool hands out the same connection first (LIFO); without the ping this
    # statement would fail with "server closed the connection".
    with pg_db.read_connection() as connection:
        assert connection.exec_driver_sql(PID).scalar() != killed
    with pg_db.transaction() as session:
        assert session.connection().exec_driver_sql(PID).scalar() != killed


def test_a_connection_given_back_a_moment_ago_is_not_pinged(pg_db, monkeypatch):
    pings = []
    real = pg_db.engine.dialect.do_ping
    monkeypatch.setattr(pg_db.engine.dialect, "do_ping",
                        lambda connection: pings.append(1) or real(connection))
    monkeypatch.setattr(core.db, "PING_AFTER_IDLE_SECONDS", 3600.0)
    for _ in range(3):
        with pg_db.read_connection() as connection:
            connection.exec_driver_sql("SELECT 1")
    assert pings == []
    monkeypatch.setattr(core.db, "PING_AFTER_IDLE_SECONDS", 0.0)
    with pg_db.read_connection() as connection:
        connection.exec_driver_sql("SELECT 1")
    assert pings == [1]
