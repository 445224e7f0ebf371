"""change log: the writing transaction's id, so the outbox reads it in commit order

On PostgreSQL a change with a smaller id can commit after one with a larger id
(two techs' writes share no lock); the outbox's id mark skipped it and its push
was never queued. See server/commit_order.py. Rows already logged get 0: they
sort first, and the outbox's mark (0, last id) still covers exactly those it
dispatched.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('dav_changes') as batch:
        batch.add_column(sa.Column('txid', sa.BigInteger(), server_default='0', nullable=False))
    op.create_index('ix_dav_changes_txid', 'dav_changes', ['txid', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_dav_changes_txid', table_name='dav_changes')
    with op.batch_alter_table('dav_changes') as batch:
        batch.drop_column('txid')
