"""Held messages: holding one (row and bytes together), finding, listing, releasing, purging."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import Session

from crtool.store.models import Owner, Pending, PendingBody

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


def hold(session: Session, row: Pending, raw: bytes, new_id: Callable[[], str]) -> Pending:
    """Store the row and its bytes in the caller's transaction, under a fresh unused id."""
    while True:
        candidate = new_id()
        if session.get(Pending, candidate) is None:
            break
    row.id = candidate
    session.add(row)
    session.add(PendingBody(pending_id=candidate, owner=row.owner, raw=raw))
    session.flush()
    return row


def held_from(session: Session, owner: str, sender_key: str) -> list[Pending]:
    """Every message still held from this sender, oldest first."""
    return list(session.scalars(
        select(Pending)
        .where(Pending.owner == owner, Pending.sender_key == sender_key, Pending.status == HELD)
        .order_by(Pending.received_at, Pending.id)
    ))


def raw_bytes(session: Session, pending_id: str) -> bytes | None:
    return session.scalar(select(PendingBody.raw).where(PendingBody.pending_id == pending_id))


def head(session: Session, pending_id: str, limit: int) -> bytes:
    """At most the first `limit` bytes of a held message (b"" once its bytes are gone)."""
    return session.scalar(select(func.substr(PendingBody.raw, 1, limit))
                          .where(PendingBody.pending_id == pending_id)) or b""


def finish(session: Session, row: Pending, status: str, now: int) -> None:
    """Mark a message released or deleted and drop its bytes: it has left the queue."""
    row.status = status
    row.released_at = now
    session.execute(delete(PendingBody).where(PendingBody.pending_id == row.id))


@dataclass(frozen=True)
class Page:
    rows: list[Pending]
    total: int


def page(session: Session, owner: str, statuses: tuple[str, ...], limit: int,
         offset: int = 0, where: Sequence[ColumnElement[bool]] = ()) -> Page:
    """Newest first, one page, narrowed by the conditions in `where` (a reason, a sender,
    new since the last digest); the (owner, status, received_at), (owner, status, reason,
    received_at) and (owner, sender_key, status) indexes serve them."""
    conditions = (Pending.owner == owner, Pending.status.in_(statuses), *where)
    rows = list(session.scalars(
        select(Pending).where(*conditions)
        .order_by(Pending.received_at.desc(), Pending.id.desc())
        .limit(limit).offset(offset)
    ))
    total = session.scalar(select(func.count()).select_from(Pending).where(*conditions)) or 0
    return Page(rows, total)


def purge_batch(session: Session, owner: str, before: int, limit: int) -> int:
    """Delete up to `limit` messages received before `before` (any status); how many went."""
    ids = list(session.scalars(
        select(Pending.id).where(Pending.owner == owner, Pending.received_at < before)
        .order_by(Pending.received_at).limit(limit)
    ))
    if not ids:
        return 0
    session.execute(delete(PendingBody).where(PendingBody.pending_id.in_(ids)))
    session.execute(delete(Pending).where(Pending.id.in_(ids)))
    return len(ids)
