"""Engines with settings that survive dozens of concurrent deliveries, and `transaction()`.

SQLite (DESIGN §7): WAL (set once, persistent, by `init`/`db upgrade`), synchronous=FULL because
exit 99 lets qmail delete its copy, a 30 s busy timeout, and BEGIN IMMEDIATE for every transaction
that writes, since a read-then-write transaction under WAL fails with "database is locked" when
another writer got in first. Only `init` and `db upgrade` may create a database file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session

from crtool.errors import TemporaryFailure

BUSY_TIMEOUT_S = 30.0
WRITE_OPTION = "crtool_write"


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite URL, or None for another database (or an in-memory one)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def make_engine(url: str, create: bool = False, read_only: bool = False,
                timeout: float = BUSY_TIMEOUT_S) -> Engine:
    """An engine for `url`. Without `create`, a missing SQLite file is a TemporaryFailure:
    an empty new database would whitelist no one and challenge everybody. `timeout` is how
    long SQLite waits for another writer's lock (config `database_timeout`)."""
    path = sqlite_path(url)
    if path is None:
        return create_engine(url, pool_pre_ping=False)
    if not create and not path.exists():
        raise TemporaryFailure(f"database {path} is missing (run 'crtool init')")
    mode = "ro" if read_only else ("rwc" if create else "rw")
    target = f"file:{quote(str(path))}?mode={mode}"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(
            target, uri=True, timeout=timeout, isolation_level=None,
            check_same_thread=False,
        )

    engine = create_engine(url, creator=connect)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, True)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def enable_wal(engine: Engine) -> None:
    """Switch a SQLite database to WAL; the setting lives in the file, so once is enough."""
    if engine.dialect.name != "sqlite":
        return
    # The pragma must run outside any transaction, so it goes to the driver connection,
    # which runs in autocommit mode here.
    connection = engine.raw_connection()
    try:
        connection.driver_connection.execute("PRAGMA journal_mode = WAL")  # type: ignore[union-attr]
    finally:
        connection.close()


@contextmanager
def transaction(engine: Engine, write: bool = True) -> Iterator[Session]:
    """One unit of work: commits when the block ends, rolls back when it raises.

    `write=False` starts a deferred transaction on SQLite, so listings do not queue behind
    deliveries for the write lock.
    """
    bound = engine.execution_options(**{WRITE_OPTION: write})
    with Session(bound, expire_on_commit=False) as session:
        with session.begin():
            yield session
