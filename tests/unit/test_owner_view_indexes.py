"""The owner's listings at scale are index look-ups, never a scan of the table: `pending list
--reason/--sender`, the digest's groups, `history`, and the delivery path's reply and
revoked-keyword look-ups (SQLite's query plan says so; PostgreSQL
runs the same statements over the same indexes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Select, func, select
from sqlalchemy.dialects import sqlite

from crtool.store import schema, sent
from crtool.store.engine import make_engine
from crtool.store.models import Event, Pending

OWNER = "alice@example.test"


def _listing(*where: object) -> Select[tuple[Pending]]:
    return (select(Pending).where(Pending.owner == OWNER, Pending.status.in_(("held",)),
                                  *where)  # type: ignore[arg-type]
            .order_by(Pending.received_at.desc(), Pending.id.desc()).limit(50))


STATEMENTS = {
    "pending list --reason": _listing(Pending.reason == "list_headers"),
    "pending list --sender": _listing(Pending.sender_key == "bob@remote.test"),
    "digest: counts by reason": select(Pending.reason, func.count()).where(
        Pending.owner == OWNER, Pending.digest_id == "abcdefgh", Pending.status == "held")
        .group_by(Pending.reason),
    "digest: newest of a reason": select(Pending).where(
        Pending.owner == OWNER, Pending.digest_id == "abcdefgh", Pending.status == "held",
        Pending.reason == "list_headers").order_by(Pending.received_at.desc()).limit(20),
    "history": select(Event).where(Event.owner == OWNER,
                                   Event.sender_key.in_(["bob@remote.test", "@remote.test"]))
        .order_by(Event.at, Event.id),
    # What replies and tagged addresses add to the delivery path, however much the owner sent.
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
