"""Held bytes in numbered pieces (pending_chunks) instead of one value per message.

A message is now streamed into the store in pieces, so no process holds it whole and a message
larger than SQLite's largest value (1 GB) can still be held. The upgrade moves each held
message's bytes over as its piece 0 (readers take the pieces in order, of whatever size); the
downgrade joins the pieces again, one message at a time, which fails for a message that is too
large for one value: such a message cannot be held by the old schema at all.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('pending_chunks',
    sa.Column('pending_id', sa.String(length=8), nullable=False),
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('owner', sa.String(length=320), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['pending_id'], ['pending.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pending_id', 'seq')
    )
    op.execute("INSERT INTO pending_chunks (pending_id, seq, owner, data) "
               "SELECT pending_id, 0, owner, raw FROM pending_bodies")
    op.drop_table('pending_bodies')


def downgrade() -> None:
    op.create_table('pending_bodies',
    sa.Column('pending_id', sa.String(length=8), nullable=False),
    sa.Column('owner', sa.String(length=320), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['pending_id'], ['pending.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pending_id')
    )
    bind = op.get_bind()
    chunks = sa.table('pending_chunks', sa.column('pending_id', sa.String),
                      sa.column('seq', sa.Integer), sa.column('owner', sa.String),
                      sa.column('data', sa.LargeBinary))
    bodies = sa.table('pending_bodies', sa.column('pending_id', sa.String),
                      sa.column('owner', sa.String), sa.column('raw', sa.LargeBinary))
    held = bind.execute(sa.select(chunks.c.pending_id, chunks.c.owner).distinct()).all()
    for pending_id, owner in held:
        pieces = bind.execute(sa.select(chunks.c.data).where(chunks.c.pending_id == pending_id)
                              .order_by(chunks.c.seq)).scalars()
        bind.execute(sa.insert(bodies).values(pending_id=pending_id, owner=owner,
                                              raw=b"".join(pieces)))
    op.drop_table('pending_chunks')
