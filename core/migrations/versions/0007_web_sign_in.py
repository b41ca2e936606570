"""web console sign-in: users.password_hash, users.totp_secret, users.totp_last_step
(the last TOTP time step accepted, against replay); user_invites (one-time
set-up links, kept as the SHA-256 digest of their token)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('password_hash', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('totp_secret', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('totp_last_step', sa.BigInteger(), nullable=True))

    op.create_table('user_invites',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('token_digest', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_user_invites_study_id_studies')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_user_invites_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_user_invites')),
    sa.UniqueConstraint('token_digest', name=op.f('uq_user_invites_token_digest'))
    )
    with op.batch_alter_table('user_invites', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_user_invites_study_id'), ['study_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_user_invites_user_id'), ['user_id'], unique=False)


def downgrade() -> None:
    op.drop_table('user_invites')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('totp_last_step')
        batch_op.drop_column('totp_secret')
        batch_op.drop_column('password_hash')
