"""Initial schema: owners, address lists, held messages and their bytes, challenges, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('address_entries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('owner', sa.String(length=320), nullable=False),
    sa.Column('list_name', sa.String(length=8), nullable=False),
    sa.Column('key', sa.String(length=320), nullable=False),
    sa.Column('kind', sa.String(length=12), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_address_entries_list', 'address_entries', ['owner', 'list_name', 'key'], unique=False)
    op.create_index('ix_address_entries_lookup', 'address_entries', ['owner', 'key', 'list_name'], unique=True)
    op.create_table('challenges',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('owner', sa.String(length=320), nullable=False),
    sa.Column('recipient_key', sa.String(length=320), nullable=False),
    sa.Column('pending_id', sa.String(length=8), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_challenges_created', 'challenges', ['owner', 'created_at'], unique=False)
    op.create_index('ix_challenges_pending', 'challenges', ['pending_id'], unique=False)
    op.create_index('ix_challenges_recipient', 'challenges', ['owner', 'recipient_key', 'created_at'], unique=False)
    op.create_table('events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('owner', sa.String(length=320), nullable=False),
    sa.Column('at', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('reason', sa.String(length=40), nullable=False),
    sa.Column('sender', sa.String(length=320), nullable=False),
    sa.Column('pending_id', sa.String(length=8), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_events_at', 'events', ['at'], unique=False)
    op.create_index('ix_events_owner_kind', 'events', ['owner', 'kind', 'reason'], unique=False)
    op.create_table('owners',
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('address')
    )
    op.create_table('pending',
    sa.Column('id', sa.String(length=8), nullable=False),
    sa.Column('owner', sa.String(length=320), nullable=False),
    sa.Column('sender', sa.String(length=320), nullable=False),
    sa.Column('sender_key', sa.String(length=320), nullable=False),
    sa.Column('recipient', sa.String(length=320), nullable=False),
    sa.Column('from_header', sa.String(length=320), nullable=False),
    sa.Column('subject', sa.String(length=320), nullable=False),
    sa.Column('message_id', sa.String(length=320), nullable=False),
    sa.Column('received_at', sa.BigInteger(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('mta', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('reason', sa.String(length=40), nullable=False),
    sa.Column('challenged_at', sa.BigInteger(), nullable=True),
    sa.Column('released_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_pending_digest', 'pending', ['owner', 'digest'], unique=True)
    op.create_index('ix_pending_received', 'pending', ['received_at'], unique=False)
    op.create_index('ix_pending_sender', 'pending', ['owner', 'sender_key', 'status'], unique=False)
    op.create_index('ix_pending_status_received', 'pending', ['owner', 'status', 'received_at'], unique=False)
    op.create_table('pending_bodies',
    sa.Column('pending_id', sa.String(length=8), nullable=False),
    sa.Column('owner', sa.String(length=320), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['pending_id'], ['pending.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pending_id')
    )


def downgrade() -> None:
    op.drop_table('pending_bodies')
    op.drop_index('ix_pending_status_received', table_name='pending')
    op.drop_index('ix_pending_sender', table_name='pending')
    op.drop_index('ix_pending_received', table_name='pending')
    op.drop_index('ix_pending_digest', table_name='pending')
    op.drop_table('pending')
    op.drop_table('owners')
    op.drop_index('ix_events_owner_kind', table_name='events')
    op.drop_index('ix_events_at', table_name='events')
    op.drop_table('events')
    op.drop_index('ix_challenges_recipient', table_name='challenges')
    op.drop_index('ix_challenges_pending', table_name='challenges')
    op.drop_index('ix_challenges_created', table_name='challenges')
    op.drop_table('challenges')
    op.drop_index('ix_address_entries_lookup', table_name='address_entries')
    op.drop_index('ix_address_entries_list', table_name='address_entries')
    op.drop_table('address_entries')
