"""Held messages: holding one (row and bytes together), finding, listing, releasing, purging."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, delete, func, insert, or_, select
from sqlalchemy.orm import Session

from crtool.store.models import Owner, Pending, PendingChunk
from crtool.store.search import contains

HELD = "held"
RELEASED = "released"
DELETED = "deleted"


def lock_owner(session: Session, owner: str, now: int) -> None:
    """Serialise this owner's deliveries for the rest of the transaction.

    On SQLite BEGIN IMMEDIATE already does; on PostgreSQL the row lock makes the rate-limit
    counts exact when deliveries run side by side. The row is made on first use.
    """
    row = session.scalar(select(Owner).where(Owner.address == owner).with_for_update())
    if row is None:
        session.add(Owner(address=owner, created_at=now))
        session.flush()
        session.scalar(select(Owner).where(Owner.address == owner).with_for_update())


def by_digest(session: Session, owner: str, digest: str) -> Pending | None:
    return session.scalar(select(Pending).where(Pending.owner == owner, Pending.digest == digest))


def get(session: Session, owner: str, pending_id: str) -> Pending | None:
    return session.scalar(
        select(Pending).where(Pending.owner == owner, Pending.id == pending_id.lower()))


# The largest piece of a held message stored as one value: small against any memory bound,
# far below SQLite's limit on one value (1 GB), and few rows even for a large message.
CHUNK_SIZE = 256 * 1024


def hold(session: Session, row: Pending, chunks: Iterable[bytes], new_id: Callable[[], str],
         fingerprint: Callable[[], str], chunk_size: int = CHUNK_SIZE) -> Pending:
    """Store the row and its bytes in the caller's transaction, under a fresh unused id, and
    return it; or, when an earlier hold has the same digest, discard this one and return that.

    The bytes are written as they arrive, piece by piece, so the message is never whole in
    memory; `fingerprint()` is asked for the digest only once `chunks` is exhausted, since a
    digest over a stream is known only at its end. Until then the row carries a placeholder
    digest of its own (unique, never committed).
    """
    while True:
        candidate = new_id()
        if session.get(Pending, candidate) is None:
            break
    row.id = candidate
    row.digest = f"unsealed:{candidate}"
    row.size = 0
    session.add(row)
    session.flush()
    size = 0
    seq = 0
    for chunk in chunks:
        for start in range(0, len(chunk), chunk_size):
            piece = chunk[start:start + chunk_size]
            session.execute(insert(PendingChunk).values(
                pending_id=candidate, seq=seq, owner=row.owner, data=piece))
            seq += 1
            size += len(piece)
    if seq == 0:
        # An empty message is held too: piece 0 says its bytes are here, all none of them.
        session.execute(insert(PendingChunk).values(
            pending_id=candidate, seq=0, owner=row.owner, data=b""))
    digest = fingerprint()
    earlier = by_digest(session, row.owner, digest)
    if earlier is not None:
        session.execute(delete(PendingChunk).where(PendingChunk.pending_id == candidate))
        session.delete(row)
        session.flush()
        return earlier
    row.digest = digest
    row.size = size
    session.flush()
    return row


def chunks(session: Session, pending_id: str) -> Generator[bytes, None, None]:
    """A held message's bytes, piece by piece; nothing at all once they are gone (released,
    deleted). One statement, read a row at a time (a server-side cursor on PostgreSQL, a
    stepped cursor on SQLite): a large message is never whole in memory, and what is read is
    one consistent snapshot even while another transaction releases the message."""
    result = session.execute(
        select(PendingChunk.data).where(PendingChunk.pending_id == pending_id)
        .order_by(PendingChunk.seq).execution_options(yield_per=1))
    try:
        yield from result.scalars()
    finally:
        result.close()


def has_bytes(session: Session, pending_id: str) -> bool:
    """Whether the message's bytes are still held (they go when it is released or deleted)."""
    return session.scalar(select(PendingChunk.seq).where(
        PendingChunk.pending_id == pending_id, PendingChunk.seq == 0)) is not None


def head(session: Session, pending_id: str, limit: int) -> bytes:
    """At most the first `limit` bytes of a held message: what a fresh challenge reads."""
    parts: list[bytes] = []
    size = 0
    with closing(chunks(session, pending_id)) as pieces:
        for piece in pieces:
            parts.append(piece[:limit - size])
            size += len(parts[-1])
            if size >= limit:
                break
    return b"".join(parts)


def held_batch(session: Session, owner: str, sender_key: str, limit: int,
               after: tuple[int, str] | None = None, exclude: str | None = None) -> list[Pending]:
    """Up to `limit` messages still held from this sender, oldest first, after the
    (received_at, id) of the previous batch; `exclude` names one to leave out."""
    statement = select(Pending).where(
        Pending.owner == owner, Pending.sender_key == sender_key, Pending.status == HELD)
    if after is not None:
        received_at, pending_id = after
        statement = statement.where(or_(
            Pending.received_at > received_at,
            and_(Pending.received_at == received_at, Pending.id > pending_id)))
    if exclude is not None:
        statement = statement.where(Pending.id != exclude)
    return list(session.scalars(
        statement.order_by(Pending.received_at, Pending.id).limit(limit)))


def finish(session: Session, row: Pending, status: str, now: int) -> None:
    """Mark a message released or deleted and drop its bytes: it has left the queue."""
    row.status = status
    row.released_at = now
    session.execute(delete(PendingChunk).where(PendingChunk.pending_id == row.id))


@dataclass(frozen=True)
class Page:
    rows: list[Pending]
    total: int


def page(session: Session, owner: str, statuses: tuple[str, ...], limit: int,
         offset: int = 0, reason: str | None = None, search: str = "",
         total: int | None = None, where: Sequence[ColumnElement[bool]] = ()) -> Page:
    """Newest first, one page; the (owner, status, received_at) index serves it, and the
    (owner, status, reason, received_at) index a page of one reason. `search` looks for text
    in the sender, the From header and the subject; `where` narrows it further (a sender, new
    since the last digest). A caller that knows the total already (from reason_counts) passes
    it and saves counting a large queue twice."""
    conditions = [Pending.owner == owner, Pending.status.in_(statuses), *where]
    if reason is not None:
        conditions.append(Pending.reason == reason)
    if search:
        conditions.append(or_(contains(Pending.sender, search),
                              contains(Pending.from_header, search),
                              contains(Pending.subject, search)))
    rows = list(session.scalars(
        select(Pending).where(*conditions)
        .order_by(Pending.received_at.desc(), Pending.id.desc())
        .limit(limit).offset(offset)
    ))
    if total is None:
        total = session.scalar(
            select(func.count()).select_from(Pending).where(*conditions)) or 0
    return Page(rows, total)


def reason_counts(session: Session, owner: str, search: str = "") -> dict[str, int]:
    """How many messages are held for each reason (`challenged`, or why not)."""
    statement = (select(Pending.reason, func.count())
                 .where(Pending.owner == owner, Pending.status == HELD)
                 .group_by(Pending.reason))
    if search:
        statement = statement.where(or_(
            contains(Pending.sender, search), contains(Pending.from_header, search),
            contains(Pending.subject, search)))
    return {reason: n for reason, n in session.execute(statement).all()}


def expired_ids(session: Session, owner: str, before: int, limit: int) -> list[str]:
    """Up to `limit` messages (any status) received and last challenged at or before
    `before`, oldest first.

    A fresh challenge (for a token that expired while its message was still held) keeps the
    message as long as a first one would. At or before: timestamps are whole seconds, so
    "older than 0s" takes what arrived in the current second too."""
    return list(session.scalars(
        select(Pending.id)
        .where(Pending.owner == owner, Pending.received_at <= before,
               or_(Pending.challenged_at.is_(None), Pending.challenged_at <= before))
        .order_by(Pending.received_at).limit(limit)
    ))


def purge_batch(session: Session, owner: str, before: int, limit: int) -> int:
    """Delete up to `limit` of the messages `expired_ids` finds, row and bytes; how many
    went."""
    ids = expired_ids(session, owner, before, limit)
    if not ids:
        return 0
    session.execute(delete(PendingChunk).where(PendingChunk.pending_id.in_(ids)))
    session.execute(delete(Pending).where(Pending.id.in_(ids)))
    return len(ids)
