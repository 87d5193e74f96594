"""The owner's digest and history: digests, what each reported, who made each decision.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

`digests` records each digest mailed to the owner; `pending.digest_id` names the digest that
first reported a held message (NULL: new since the last digest). `events.sender_key` makes
`history SENDER` an indexed look-up and `events.actor` says who decided; existing events get
their sender's key. `address_entries.source` is an entry's provenance; entries a confirmation
added (note "confirmed") are marked so.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "digests",
        sa.Column("id", sa.String(length=8), nullable=False),
        sa.Column("owner", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("held", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_digests_owner", "digests", ["owner", "status", "created_at"])
    with op.batch_alter_table("pending") as batch:
        batch.add_column(sa.Column("digest_id", sa.String(length=8), nullable=True))
        batch.create_index("ix_pending_reason", ["owner", "status", "reason", "received_at"])
        batch.create_index("ix_pending_new",
                           ["owner", "digest_id", "status", "reason", "received_at"])
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("sender_key", sa.String(length=320), nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("actor", sa.String(length=20), nullable=False,
                                   server_default=""))
        batch.create_index("ix_events_sender", ["owner", "sender_key", "at"])
    op.execute("UPDATE events SET sender_key = lower(sender)")
    with op.batch_alter_table("address_entries") as batch:
        batch.add_column(sa.Column("source", sa.String(length=20), nullable=False,
                                   server_default="owner"))
    op.execute("UPDATE address_entries SET source = 'confirmed' WHERE note = 'confirmed'")


def downgrade() -> None:
    with op.batch_alter_table("address_entries") as batch:
        batch.drop_column("source")
    with op.batch_alter_table("events") as batch:
        batch.drop_index("ix_events_sender")
        batch.drop_column("actor")
        batch.drop_column("sender_key")
    with op.batch_alter_table("pending") as batch:
        batch.drop_index("ix_pending_new")
        batch.drop_index("ix_pending_reason")
        batch.drop_column("digest_id")
    op.drop_index("ix_digests_owner", table_name="digests")
    op.drop_table("digests")
