"""The web pages: one-time owner login links, and indexes for the queue and the chart.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('logins',
    sa.Column('id', sa.String(length=8), nullable=False),
    sa.Column('owner', sa.String(length=320), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('used_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_logins_created', 'logins', ['created_at'], unique=False)
    op.create_index('ix_events_owner_at', 'events', ['owner', 'at', 'kind'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_events_owner_at', table_name='events')
    op.drop_index('ix_logins_created', table_name='logins')
    op.drop_table('logins')
