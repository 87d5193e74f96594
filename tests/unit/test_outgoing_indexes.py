"""The look-ups of the delivery path that replies and tagged addresses add are index probes,
never a scan, however much the owner has sent (SQLite's query plan says so)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Select
from sqlalchemy.dialects import sqlite

from crtool.store import schema, sent
from crtool.store.engine import make_engine

OWNER = "alice@example.test"
STATEMENTS: dict[str, Select[Any]] = {
    "reply": sent.sent_statement(OWNER, ["<a@x.test>", "<b@x.test>"], 1_800_000_000),
    "revoked keyword": sent.revoked_statement(OWNER, "keyword", "shop"),
}


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_served_by_an_index(tmp_path: Path, name: str) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'crtool.db'}", create=True)
    schema.upgrade(engine)
    sql = str(STATEMENTS[name].compile(dialect=sqlite.dialect(),  # type: ignore[attr-defined]
                                       compile_kwargs={"literal_binds": True}))
    with engine.connect() as connection:
        plan = [row[-1] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
    engine.dispose()
    assert plan and all(not step.startswith("SCAN") for step in plan), plan
    assert any("USING" in step and "INDEX" in step for step in plan), plan
