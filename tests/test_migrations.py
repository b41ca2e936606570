import pytest
from sqlalchemy import inspect, text

from core.migrate import current_revision, upgrade


def test_migrations_reach_head_and_are_rerunnable(db):
    assert current_revision(db.engine) == "0009"
    upgrade(db.engine)  # idempotent: "create or upgrade"
    tables = set(inspect(db.engine).get_table_names())
    assert {"studies", "subjects", "randomizations", "audit_events", "list_entries"} <= tables


def test_audit_table_refuses_update_and_delete(db):
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO studies (code, name, languages, eligibility, unblinding_mode, config, created_at, updated_at) VALUES ('S', 'S', '[]', '[]', 'investigator', '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO audit_events (study_id, seq, at, actor, action, entity_type, prev_hash, hash) SELECT id, 1, CURRENT_TIMESTAMP, 'x', 'y', 'z', 'p', 'h' FROM studies"))
    for statement in ("UPDATE audit_events SET actor = 'evil'", "DELETE FROM audit_events"):
        with pytest.raises(Exception, match="append-only"):
            with db.engine.begin() as conn:
                conn.execute(text(statement))


def test_the_models_and_the_migrations_agree(db):
    """A model change without its migration (or an index whose name collides, so that
    no migration ever creates it) shows up here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from core.models import Base

    with db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
