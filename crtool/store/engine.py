"""Engines with settings that survive dozens of concurrent deliveries, and `transaction()`.

SQLite (contract §3): WAL (set once, persistent, by `init`/`db upgrade`), synchronous=FULL because
exit 99 lets qmail delete its copy, a 30 s busy timeout, and BEGIN IMMEDIATE for every transaction
that writes, since a read-then-write transaction under WAL fails with "database is locked" when
another writer got in first. Only `init` and `db upgrade` may create a database file.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import weakref
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


_CANNOT_OPEN = ("unable to open database file", "attempt to write a readonly database")


def missing_database(path: Path | str) -> str:
    """What to say of a database that is gone. Not "run init": that would make an empty one, and
    every sender the owner has whitelisted would be challenged again."""
    return (f"database {path} is missing: restore it from a backup (a new, empty one would "
            "challenge every sender again)")


def why_unopenable(path: Path) -> str:
    """The likely reason SQLite cannot open or write `path`, in words; "" when none is seen."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "the file is missing"
    except OSError as error:
        return str(error.strerror)
    if stat.S_ISDIR(info.st_mode):
        return "it is a directory, not a file"
    uid = os.geteuid()
    if not os.access(path, os.R_OK | os.W_OK):
        return (f"permission denied: mode {stat.S_IMODE(info.st_mode):o}, owner uid "
                f"{info.st_uid}, and crtool runs as uid {uid}")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return (f"permission denied on its directory {path.parent}, where SQLite must "
                "create the -wal and -shm files")
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists() and not os.access(side, os.R_OK | os.W_OK):
            return f"permission denied on {side.name} (owner uid {side.stat().st_uid})"
    try:
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            return "its file system is mounted read-only"
    except OSError:
        pass
    return ""


def make_engine(url: str, create: bool = False, read_only: bool = False,
                timeout: float = BUSY_TIMEOUT_S) -> Engine:
    """An engine for `url`. Without `create`, a missing SQLite file is a TemporaryFailure:
    an empty new database would whitelist no one and challenge everybody. `timeout` is how
    long SQLite waits for another writer's lock (config `database_timeout`)."""
    path = sqlite_path(url)
    if path is None:
        return create_engine(url, pool_pre_ping=False)
    if not create and not path.exists():
        raise TemporaryFailure(missing_database(path))
    if create:
        from crtool.private import create_empty

        # 0600 from the start, and never through a planted link; SQLite gives the -wal and
        # -shm files it makes beside the database the same mode.
        create_empty(path)
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

    @event.listens_for(engine, "handle_error")
    def _name_the_file(context: Any) -> BaseException | None:
        # SQLite says "unable to open database file" whatever the cause, and names no file.
        said = str(context.original_exception)
        if not isinstance(context.original_exception, sqlite3.Error) or said not in _CANNOT_OPEN:
            return None
        cause = why_unopenable(path)
        return TemporaryFailure(f"database {path}: {said}" + (f" ({cause})" if cause else ""))

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
def transaction(engine: Engine, write: bool = True,
                one_snapshot: bool = True) -> Iterator[Session]:
    """One unit of work: commits when the block ends, rolls back when it raises.

    `write=False` starts a deferred transaction on SQLite, so listings do not queue behind
    deliveries for the write lock. `one_snapshot=False` says a reading block needs no
    snapshot shared by its statements: on PostgreSQL, whose READ COMMITTED gives each
    statement a snapshot of its own inside a transaction too, it then runs in autocommit,
    without the BEGIN and COMMIT that were two of a whitelisted delivery's round trips to the
    server. It must not stream (a server-side cursor needs a transaction) or write.
    """
    if not write and not one_snapshot and engine.dialect.name == "postgresql":
        bound = engine.execution_options(isolation_level="AUTOCOMMIT")
    else:
        bound = engine.execution_options(**{WRITE_OPTION: write})
    with _writer_turn(engine, write), Session(bound, expire_on_commit=False) as session:
        with session.begin():
            yield session


# One lock per SQLite engine, taken around every write transaction. SQLite lets one writer in
# at a time and makes the others poll with growing sleeps (up to 100 ms each) inside its busy
# handler; threads of one process (`crtool serve`, `crtool lmtp`) that queue here instead are
# let in the moment the writer before them commits. Other processes still meet SQLite's lock.
_WRITERS: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


@contextmanager
def _writer_turn(engine: Engine, write: bool) -> Iterator[None]:
    if not write or engine.dialect.name != "sqlite":
        yield
        return
    with _WRITERS_LOCK:
        turn = _WRITERS.setdefault(engine, threading.RLock())
    with turn:
        yield
