"""The owner's outgoing mail and tagged addresses: sent Message-IDs, issued tagged addresses.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

`sent_messages` records the Message-IDs of mail sent through `crtool sendmail`, so that a reply
naming one is delivered; `tagged_addresses` records the dated, sender and keyword addresses the
owner asked for, and which keywords were revoked.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sent_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=320), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("sent_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_sent_messages_lookup", "sent_messages", ["owner", "message_id"],
                    unique=True)
    op.create_index("ix_sent_messages_sent", "sent_messages", ["sent_at"])
    op.create_table(
        "tagged_addresses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=320), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("value", sa.String(length=320), nullable=False),
        sa.Column("token", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_tagged_addresses_value", "tagged_addresses", ["owner", "kind", "value"],
                    unique=True)
    op.create_index("ix_tagged_addresses_token", "tagged_addresses", ["owner", "token"])


def downgrade() -> None:
    op.drop_index("ix_tagged_addresses_token", table_name="tagged_addresses")
    op.drop_index("ix_tagged_addresses_value", table_name="tagged_addresses")
    op.drop_table("tagged_addresses")
    op.drop_index("ix_sent_messages_sent", table_name="sent_messages")
    op.drop_index("ix_sent_messages_lookup", table_name="sent_messages")
    op.drop_table("sent_messages")
