"""Schema versions through Alembic, from the migrations shipped with the package.

Alembic is imported only here: `deliver` never pays for it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from crtool.resources import shipped_dir


def _config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(shipped_dir("migrations")))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    command.downgrade(_config(engine), revision)


def current(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head() -> str:
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(_config_without_engine()).get_heads()
    return heads[0]


def revisions() -> list[str]:
    """Every revision, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config_without_engine())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def _config_without_engine() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(shipped_dir("migrations")))
    return config
