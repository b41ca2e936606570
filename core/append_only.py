"""Database triggers that make the audit trail append-only.

The hash chain *detects* tampering; these triggers make the ordinary path to it
(an UPDATE or DELETE by the application's own connection) fail outright. A
database superuser can still drop them, which is what ``ivrs audit verify`` is for.
"""

POSTGRES = [
    """
    CREATE OR REPLACE FUNCTION ivrs_audit_append_only() RETURNS trigger AS $$
    BEGIN
        RAISE EXCEPTION 'audit_events is append-only';
    END;
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION ivrs_audit_append_only()
    """,
]

SQLITE = [
    """
    CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END
    """,
    """
    CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END
    """,
]

DROP = {
    "postgresql": ["DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events",
                   "DROP FUNCTION IF EXISTS ivrs_audit_append_only()"],
    "sqlite": ["DROP TRIGGER IF EXISTS audit_events_no_update",
               "DROP TRIGGER IF EXISTS audit_events_no_delete"],
}


def create_statements(dialect: str) -> list[str]:
    return POSTGRES if dialect == "postgresql" else SQLITE


def drop_statements(dialect: str) -> list[str]:
    return DROP.get(dialect, DROP["sqlite"])
