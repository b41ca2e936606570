"""e-mail: users.email; deliveries on a channel (sms | email, existing rows sms)
with an e-mail address and a subject; one delivery per notification, user and channel

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('email', sa.String(length=254), nullable=True))

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        # Every delivery so far was an SMS.
        batch_op.add_column(sa.Column('channel', sa.String(length=10), server_default='sms',
                                      nullable=False))
        batch_op.add_column(sa.Column('to_email', sa.String(length=254), nullable=True))
        batch_op.add_column(sa.Column('subject', sa.Text(), nullable=True))
        batch_op.alter_column('to_phone', existing_type=sa.String(length=32), nullable=True)
        batch_op.drop_constraint('uq_deliveries_notification_id_user_id', type_='unique')
        batch_op.create_unique_constraint(
            batch_op.f('uq_deliveries_notification_id_user_id_channel'),
            ['notification_id', 'user_id', 'channel'])


def downgrade() -> None:
    # E-mail deliveries have no phone to keep: they go, the SMS stay.
    op.execute("DELETE FROM deliveries WHERE channel <> 'sms'")
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_constraint('uq_deliveries_notification_id_user_id_channel',
                                 type_='unique')
        batch_op.create_unique_constraint(
            batch_op.f('uq_deliveries_notification_id_user_id'), ['notification_id', 'user_id'])
        batch_op.alter_column('to_phone', existing_type=sa.String(length=32), nullable=False)
        batch_op.drop_column('subject')
        batch_op.drop_column('to_email')
        batch_op.drop_column('channel')

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('email')
