"""busy index: a covering index for free/busy range scans

The scan reads (start_utc, end_utc, kind) of one tech's rows by start time; with
these columns in the index it never visits the table (half the 30-day query time
on SQLite in bench/freebusy.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_busy_tech_span', 'busy_intervals', ['tech', 'start_utc', 'end_utc', 'kind'], unique=False)
    op.drop_index('ix_busy_tech_start', table_name='busy_intervals')


def downgrade() -> None:
    op.create_index('ix_busy_tech_start', 'busy_intervals', ['tech', 'start_utc'], unique=False)
    op.drop_index('ix_busy_tech_span', table_name='busy_intervals')
