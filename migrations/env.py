"""Alembic environment: runs on the engine crtool hands over (never a URL from an ini file).

Batch mode, so that SQLite can take ALTERs; each migration runs in one transaction.
"""

from alembic import context

from crtool.store.models import Base

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()
