"""Hub mode: an owner's delivery target (Maildir or downstream LMTP) and settings overrides.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("owners") as batch:
        batch.add_column(sa.Column("maildir", sa.Text(), nullable=True))
        batch.add_column(sa.Column("lmtp_next", sa.Text(), nullable=True))
        batch.add_column(sa.Column("overrides", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("owners") as batch:
        batch.drop_column("overrides")
        batch.drop_column("lmtp_next")
        batch.drop_column("maildir")
