"""busy islands: the busy index merged per tech, kind and UTC day

Free/busy over all of a tech's calendars reads these pieces instead of the rows
(server/freebusy/islands.py). They are built here from the rows already indexed.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('busy_islands',
    sa.Column('tech', sa.String(length=64), nullable=False),
    sa.Column('start_utc', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('end_utc', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('tech', 'start_utc', 'end_utc', 'kind')
    )
    # The server's own builder, so that the pieces are exactly what its writes would have made.
    from server.freebusy import islands

    connection = op.get_bind()
    techs = connection.execute(sa.text("SELECT DISTINCT tech FROM busy_intervals")).scalars().all()
    islands.rebuild(connection, techs)


def downgrade() -> None:
    op.drop_table('busy_islands')
