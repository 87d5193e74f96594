"""The whitelisted check without SQLAlchemy (contract §10).

Most mail of a mature installation comes from whitelisted senders, and importing SQLAlchemy costs
about 170 ms per process. So for a SQLite database `deliver` first asks the list through the
standard library's `sqlite3`, read-only (`mode=ro`), with the text SQLAlchemy compiles from
`store.lists.entry_statement` (kept as a constant in lookup_sql.py; tests/unit/test_fastpath.py
proves it is still what SQLAlchemy compiles, so the schema keeps one source of truth). The
decision itself is `policy.classify` over `acceptance.incoming`, as on the full path, and what
it accepts goes through `acceptance.accept`, as there.

Only a plain "whitelisted" is decided here. A blacklisted or unknown sender, a confirm reply, a
null sender, another database, or any error on the way returns None, and the full path
(SQLAlchemy, `service.deliver`) decides again from scratch: the fast path can only skip work,
never change an outcome. What it accepts is counted in tally.py, for `stats`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from crtool import acceptance, entries, lookup_sql, policy
from crtool.config import Settings
from crtool.envelope import Envelope
from crtool.message import Facts

_SQLITE_PREFIXES = ("sqlite:///", "sqlite+pysqlite:///")


def sqlite_file(url: str) -> Path | None:
    """The file of a plain SQLite URL, or None for anything this path will not interpret
    (another database, in-memory, query options, escapes): the full path handles those."""
    for prefix in _SQLITE_PREFIXES:
        if url.startswith(prefix):
            database = url[len(prefix):]
            break
    else:
        return None
    if not database or database == ":memory:" or any(c in database for c in "?#%"):
        return None
    return Path(database)


def _uri(path: Path) -> str:
    # The three characters that mean something in an SQLite URI's path part.
    text = str(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return f"file:{text}?mode=ro"


def lookup(path: Path, owner: str, keys: list[str], timeout: float = 30.0,
           probes: list[str] | None = None) -> list[tuple[str, str]] | None:
    """Every (list, key) among a message's look-up keys and wildcard probes (entries.query),
    read-only; None when the database cannot be read (missing, locked past `timeout`, not
    crtool's schema), so that the full path decides."""
    if not keys:
        return []
    probes = probes or [""]
    try:
        connection = sqlite3.connect(_uri(path), uri=True, timeout=timeout,
                                     isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        rows = connection.execute(lookup_sql.sqlite_entry(len(keys), len(probes)),
                                  lookup_sql.sqlite_params(owner, keys, probes)).fetchall()
    except sqlite3.Error:
        return None
    finally:
        connection.close()
    return [(str(row[0]), str(row[1])) for row in rows]


def whitelisted(settings: Settings, envelope: Envelope, facts: Facts) -> str | None:
    """The whitelist key that accepts this message, or None when the fast path cannot say so
    (see the module docstring). `facts` are the message's head, parsed once by the caller,
    who passes them on to the full path when this says None."""
    if not envelope.sender:
        return None
    query = entries.query(envelope.sender, facts, settings.subaddress_separators)
    path = sqlite_file(settings.database_url)
    if path is not None:
        rows = lookup(path, settings.owner, query.keys, float(settings.database_timeout),
                      query.probes)
    else:  # PostgreSQL through psycopg alone (pgread.py); None for anything else
        from crtool import pgread

        rows = pgread.lookup(settings.database_url, settings.owner, query.keys,
                             float(settings.database_timeout), query.probes)
    if rows is None:
        return None
    message = acceptance.incoming(settings, envelope, facts)
    verdict = policy.classify(message, entries.decide(
        rows, query, from_trusted=not policy.dmarc_failed(message)))
    if verdict.action is not policy.Action.ACCEPT or verdict.listing is None:
        return None
    return verdict.listing.key
