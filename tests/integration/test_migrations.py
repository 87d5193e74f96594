"""Alembic: every revision walks down and up, and the newest matches the models."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from crtool.store import schema
from crtool.store.engine import make_engine
from crtool.store.models import Base


def test_walk_every_revision_down_and_up(tmp_path: Path, database_url: str) -> None:
    (tmp_path / "alice" / ".crtool").mkdir(parents=True)
    engine = make_engine(database_url, create=True)
    revisions = schema.revisions()
    assert revisions[-1] == schema.head()
    for revision in revisions:
        schema.upgrade(engine, revision)
        assert schema.current(engine) == revision
    for index in range(len(revisions) - 1, -1, -1):
        target = revisions[index - 1] if index else "base"
        schema.downgrade(engine, target)
        assert schema.current(engine) == (None if target == "base" else target)
    tables = set(inspect(engine).get_table_names()) - {"alembic_version"}
    assert tables == set()
    schema.upgrade(engine)
    assert schema.current(engine) == schema.head()
    engine.dispose()


def test_newest_revision_matches_the_models(tmp_path: Path, database_url: str) -> None:
    """The models are the schema's one source of truth; a migration that drifts fails."""
    (tmp_path / "alice" / ".crtool").mkdir(parents=True)
    engine = make_engine(database_url, create=True)
    schema.upgrade(engine)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    engine.dispose()


def test_revision_docstrings_match_down_revision() -> None:
    """As in Mailman: each revision file says what it revises, and says it truly."""
    from alembic.script import ScriptDirectory

    from crtool.resources import shipped_dir

    config = schema._config_without_engine()
    for script in ScriptDirectory.from_config(config).walk_revisions():
        text = Path(script.path).read_text()
        assert f"Revision ID: {script.revision}" in text
        down = script.down_revision or ""
        assert f"Revises: {down}".rstrip() in text
    assert shipped_dir("migrations").is_dir()


def test_held_bytes_survive_the_move_to_pieces_and_back(tmp_path: Path,
                                                         database_url: str) -> None:
    """0002 moves each held message's bytes from pending_bodies into pending_chunks and back
    again on downgrade, byte for byte (NUL and 8-bit bytes included)."""
    from sqlalchemy import text

    (tmp_path / "alice" / ".crtool").mkdir(parents=True)
    engine = make_engine(database_url, create=True)
    data = b"Subject: old\n\n\x00\xff\xfe body\r\n" * 1000
    schema.upgrade(engine, "0001")
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO pending (id, owner, sender, sender_key, recipient, from_header, "
            "subject, message_id, received_at, size, digest, mta, status, reason) VALUES "
            "('abcdefgh', 'a@x.test', 's@y.test', 's@y.test', 'a@x.test', '', 'old', '', 1, "
            ":size, 'd', 'qmail', 'held', 'challenged')"), {"size": len(data)})
        connection.execute(text("INSERT INTO pending_bodies (pending_id, owner, raw) "
                                "VALUES ('abcdefgh', 'a@x.test', :raw)"), {"raw": data})
    schema.upgrade(engine, "0002")
    with engine.connect() as connection:
        pieces = connection.execute(text(
            "SELECT data FROM pending_chunks WHERE pending_id = 'abcdefgh' ORDER BY seq"
        )).scalars().all()
    assert b"".join(pieces) == data
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO pending_chunks (pending_id, seq, owner, data) "
                                "VALUES ('abcdefgh', 1, 'a@x.test', :more)"), {"more": b"++"})
    schema.downgrade(engine, "0001")
    with engine.connect() as connection:
        raw = connection.execute(text(
            "SELECT raw FROM pending_bodies WHERE pending_id = 'abcdefgh'")).scalar_one()
    assert bytes(raw) == data + b"++"
    engine.dispose()
