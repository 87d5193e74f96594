"""The whitelisted check on PostgreSQL through psycopg alone: the fast read path's second driver.

fastpath.py asks SQLite through the standard library so that a whitelisted delivery never
imports SQLAlchemy (170 ms of a 300 ms process here). On PostgreSQL the same look-up goes
through psycopg, the driver SQLAlchemy itself would use, with the text SQLAlchemy compiles from
`store.lists.entry_statement` for the psycopg dialect, kept as a constant in lookup_sql.py
(tests/unit/test_pgread.py proves it is still what SQLAlchemy compiles, and that its answers
are the full path's), so the schema keeps one source of truth. It only reads, in autocommit:
one SELECT, no transaction to hold.

The URL is the configured SQLAlchemy one, `postgresql+psycopg://…`: SQLAlchemy hands its host,
port, user, password, database and query parameters to psycopg.connect as they are, and a
libpq URI spells them the same way, so only the scheme changes. Any other URL, or any error on
the way (the server unreachable, a query option libpq does not know), means None: the full
path decides, from scratch, as it always did.
"""

from __future__ import annotations

from crtool import lookup_sql

_PREFIX = "postgresql+psycopg://"


def conninfo(url: str) -> str | None:
    """The libpq URI of a SQLAlchemy psycopg URL, or None for any other URL."""
    if not url.startswith(_PREFIX):
        return None
    return "postgresql://" + url[len(_PREFIX):]


def lookup(url: str, owner: str, keys: list[str], timeout: float = 30.0,
           probes: list[str] | None = None) -> list[tuple[str, str]] | None:
    """Every (list, key) among a message's look-up keys, and every wildcard entry among its
    probes (entries.query); None when this is not a psycopg URL or the database cannot be
    read, so that the full path decides."""
    info = conninfo(url)
    if info is None:
        return None
    if not keys:
        return []
    # As the full path does (lists.entry_matches): an empty IN list is no valid SQL.
    probes = probes or [""]
    try:
        import psycopg

        with psycopg.connect(info, autocommit=True, prepare_threshold=None,
                             connect_timeout=max(1, int(timeout))) as connection:
            rows = connection.execute(  # type: ignore[call-overload]
                lookup_sql.psycopg_entry(len(keys), len(probes)),
                lookup_sql.psycopg_params(owner, keys, probes)).fetchall()
    except Exception:  # noqa: BLE001 - psycopg's errors, a bad URI: the full path decides
        return None
    return [(str(row[0]), str(row[1])) for row in rows]
