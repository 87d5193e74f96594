"""Whitelist and blacklist entries: look-ups by indexed equality, edits, and bulk import.

A look-up costs the same for ten entries as for a million: it is one `key IN (...)` over the
handful of keys that could match an address (addresses.lookup_keys), served by the unique
(owner, key, list_name) index. No LIKE, no OR across kinds, no scan.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import CompoundSelect, Select, delete, func, or_, select, union_all
from sqlalchemy.orm import Session

from crtool import addresses, lookup_sql, policy
from crtool import entries as entry_forms
from crtool.entries import probe_of
from crtool.store.log import record_event
from crtool.store.models import AddressEntry
from crtool.store.search import contains

IMPORT_BATCH = 5000
# Provenance of an entry the owner made with a command (add, import).
OWNER_SOURCE = "owner"


def match_statement(owner: str, keys: list[str]) -> Select[str, str]:
    """The look-up, shared by the service and (compiled to text) by the fast read path."""
    return select(AddressEntry.list_name, AddressEntry.key).where(
        AddressEntry.owner == owner, AddressEntry.key.in_(keys)
    )


def entry_statement(owner: str, keys: list[str], probes: list[str]) -> CompoundSelect[str, str]:
    """The look-up of a message against every kind of entry (crtool/entries.py): equality on
    the key UNION ALL equality on the wildcard probe, each served by its own index."""
    return union_all(
        match_statement(owner, keys),
        select(AddressEntry.list_name, AddressEntry.key).where(
            AddressEntry.owner == owner, AddressEntry.probe.in_(probes)),
    )


def matches(session: Session, owner: str, keys: list[str]) -> list[tuple[str, str]]:
    """Every (list, key) among an address's look-up keys (addresses.lookup_keys)."""
    if not keys:
        return []
    rows = session.execute(match_statement(owner, keys)).all()
    return [(name, key) for name, key in rows]


def entry_matches(session: Session, owner: str, keys: list[str],
                  probes: list[str]) -> list[tuple[str, str]]:
    """Every (list, key) with one of `keys`, and every wildcard entry with one of `probes`
    (candidates, for entries.decide to match).

    Every delivery runs this. On SQLite and psycopg it goes to the driver as the text in
    lookup_sql.py, which tests prove is what SQLAlchemy compiles from entry_statement:
    building, caching and compiling the statement anew cost a resident server more than the
    query itself."""
    if not keys:
        return []
    probes = probes or [""]
    connection = session.connection()
    driver = connection.dialect.driver
    if driver == "pysqlite":
        rows = connection.exec_driver_sql(lookup_sql.sqlite_entry(len(keys), len(probes)),
                                          lookup_sql.sqlite_params(owner, keys, probes)).all()
    elif driver == "psycopg":
        rows = connection.exec_driver_sql(lookup_sql.psycopg_entry(len(keys), len(probes)),
                                          lookup_sql.psycopg_params(owner, keys, probes)).all()
    else:
        rows = connection.execute(entry_statement(owner, keys, probes)).all()
    return [(name, key) for name, key in rows]


def listing_for(session: Session, owner: str, message: policy.Incoming,
                separators: str = "+") -> policy.Listing | None:
    """The entry that decides one message: its envelope sender, its From: address and its
    List-Id against every kind of entry, in one indexed statement (crtool/entries.py)."""
    query = entry_forms.query(message.sender, message.facts, separators)
    rows = entry_matches(session, owner, query.keys, query.probes)
    return entry_forms.decide(rows, query, from_trusted=not policy.dmarc_failed(message))


@dataclass(frozen=True)
class Entry:
    list_name: str
    pattern: str
    kind: str
    note: str
    created_at: int
    source: str = OWNER_SOURCE


def add(session: Session, owner: str, list_name: str, pattern: addresses.Pattern,
        note: str, now: int, source: str = OWNER_SOURCE) -> bool:
    """Add one entry; False when it was already there (its note is then updated).

    `source` is the entry's provenance (who listed it); a new entry is also an event
    ("listed", the list's name, by `source`) so that `crtool history` shows who decided.
    """
    existing = session.scalar(
        select(AddressEntry).where(
            AddressEntry.owner == owner, AddressEntry.key == pattern.key,
            AddressEntry.list_name == list_name,
        )
    )
    if existing is not None:
        if note:
            existing.note = note
        return False
    session.add(AddressEntry(owner=owner, list_name=list_name, key=pattern.key,
                             kind=pattern.kind, note=note, created_at=now, source=source,
                             probe=probe_of(pattern.key)))
    record_event(session, owner, now, "listed", list_name, pattern.text, actor=source)
    return True


def remove(session: Session, owner: str, list_name: str, pattern: addresses.Pattern,
           now: int = 0) -> bool:
    """Remove one entry (an "unlisted" event by the owner); False when it was not there."""
    result = session.execute(
        delete(AddressEntry).where(
            AddressEntry.owner == owner, AddressEntry.list_name == list_name,
            AddressEntry.key == pattern.key,
        )
    )
    removed = bool(getattr(result, "rowcount", 0))
    if removed:
        record_event(session, owner, now, "unlisted", list_name, pattern.text,
                     actor=OWNER_SOURCE)
    return removed


def entry(session: Session, owner: str, list_name: str, key: str) -> AddressEntry | None:
    """One entry by its stored key (to say what decided, with its note and source)."""
    return session.scalar(select(AddressEntry).where(
        AddressEntry.owner == owner, AddressEntry.key == key,
        AddressEntry.list_name == list_name))


def entries(session: Session, owner: str, list_name: str, search: str = "",
            limit: int | None = None, offset: int = 0) -> Iterator[Entry]:
    """The entries of one list in key order, streamed so a million do not fill memory;
    `search`, `limit` and `offset` give the web page one page of them."""
    statement = (
        select(AddressEntry.list_name, AddressEntry.key, AddressEntry.kind, AddressEntry.note,
               AddressEntry.created_at, AddressEntry.source)
        .where(AddressEntry.owner == owner, AddressEntry.list_name == list_name)
        .order_by(AddressEntry.key)
        .execution_options(yield_per=2000)
    )
    if search:
        statement = statement.where(
            or_(contains(AddressEntry.key, search), contains(AddressEntry.note, search)))
    if limit is not None:
        statement = statement.limit(limit).offset(offset)
    for row in session.execute(statement):
        pattern = addresses.Pattern(row.kind, row.key)
        yield Entry(row.list_name, pattern.text, row.kind, row.note, row.created_at,
                    row.source)


def count(session: Session, owner: str, list_name: str, search: str = "") -> int:
    statement = select(func.count()).select_from(AddressEntry).where(
        AddressEntry.owner == owner, AddressEntry.list_name == list_name)
    if search:
        statement = statement.where(
            or_(contains(AddressEntry.key, search), contains(AddressEntry.note, search)))
    return session.scalar(statement) or 0


def bulk_import(session: Session, owner: str, list_name: str,
                patterns: Iterable[addresses.Pattern], now: int, note: str = "",
                source: str = OWNER_SOURCE) -> int:
    """Insert patterns in batches inside the caller's one transaction; duplicates are skipped.

    Memory stays bounded by the batch size whatever the input's length. Returns how many
    were new (counted, since drivers report no reliable rowcount for batched inserts).
    """
    before = count(session, owner, list_name)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    batch: dict[str, addresses.Pattern] = {}

    def flush() -> None:
        if not batch:
            return
        rows = [dict(owner=owner, list_name=list_name, key=p.key, kind=p.kind, note=note,
                     created_at=now, source=source, probe=probe_of(p.key))
                for p in batch.values()]
        statement = insert(AddressEntry).on_conflict_do_nothing(
            index_elements=["owner", "key", "list_name"])
        session.execute(statement, rows)
        batch.clear()

    for pattern in patterns:
        batch[pattern.key] = pattern
        if len(batch) >= IMPORT_BATCH:
            flush()
    flush()
    return count(session, owner, list_name) - before
