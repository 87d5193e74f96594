"""Richer list entries and expected senders.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

`address_entries.probe` is a wildcard entry's literal domain, indexed, so that a look-up finds
the few wildcards that could match a message by equality instead of scanning the list.
`expectations` holds the windows of `crtool expect DOMAIN --for 2h`.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("address_entries") as batch:
        batch.add_column(sa.Column("probe", sa.String(length=320), nullable=True))
        batch.create_index("ix_address_entries_probe", ["owner", "probe"])
    op.create_table(
        "expectations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=320), nullable=False),
        sa.Column("domain", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_expectations_lookup", "expectations",
                    ["owner", "domain", "expires_at"])


def downgrade() -> None:
    op.drop_index("ix_expectations_lookup", table_name="expectations")
    op.drop_table("expectations")
    with op.batch_alter_table("address_entries") as batch:
        batch.drop_index("ix_address_entries_probe")
        batch.drop_column("probe")
