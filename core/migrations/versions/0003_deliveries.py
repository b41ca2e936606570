"""deliveries: one outbound message per recipient, the sender's durable queue;
indexes: a sender by phone, a user's kits awaiting confirmation, pending notifications

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('notification_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('to_phone', sa.String(length=32), nullable=False),
    sa.Column('language', sa.String(length=10), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempt_started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('provider_sid', sa.String(length=64), nullable=True),
    sa.Column('error_code', sa.String(length=20), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['notification_id'], ['notifications.id'], name=op.f('fk_deliveries_notification_id_notifications')),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_deliveries_study_id_studies')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_deliveries_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deliveries')),
    sa.UniqueConstraint('notification_id', 'user_id', name=op.f('uq_deliveries_notification_id_user_id')),
    sa.UniqueConstraint('provider_sid', name=op.f('uq_deliveries_provider_sid'))
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_status_next_attempt_at', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_deliveries_study_id'), ['study_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_deliveries_user_id'), ['user_id'], unique=False)

    # The users' phone index was declared without a name and collided with the
    # study_id index's generated name, so no migration ever created it.
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.create_index('ix_users_study_id_phone', ['study_id', 'phone'], unique=False)
    with op.batch_alter_table('kits', schema=None) as batch_op:
        batch_op.create_index('ix_kits_study_id_assigned_by_status',
                              ['study_id', 'assigned_by', 'status'], unique=False)
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.create_index('ix_notifications_status_id', ['status', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index('ix_notifications_status_id')
    with op.batch_alter_table('kits', schema=None) as batch_op:
        batch_op.drop_index('ix_kits_study_id_assigned_by_status')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index('ix_users_study_id_phone')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deliveries_user_id'))
        batch_op.drop_index(batch_op.f('ix_deliveries_study_id'))
        batch_op.drop_index('ix_deliveries_status_next_attempt_at')

    op.drop_table('deliveries')
