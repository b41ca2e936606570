"""audit events by (study, action, seq), for the newest audit checkpoint of a
study (the dashboard's audit state, on every page of a sponsor's role): at
50,000 rows a sequential scan of every row and a sort, 30 ms, became the last
entry of an index range, 0.01 ms (EXPLAIN ANALYZE on bench_dashboard.py's
10,000-subject seeding)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index('ix_audit_events_study_id_action_seq',
                              ['study_id', 'action', 'seq'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_events_study_id_action_seq')
