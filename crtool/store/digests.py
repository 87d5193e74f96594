"""The owner's digests: which held messages each reported, claimed before it is sent.

A digest claims the held messages that are new (`Pending.digest_id` NULL, or pointing at a
digest that was never sent) in one short write transaction, is composed from what it claimed
and sent after the commit, then marked sent. A digest whose sending failed gives its messages
back; one that crashed before it was marked sent is re-claimed by the next. So a message is
reported by exactly one digest that was sent, and one held while a digest is being composed
waits for the next.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from crtool.store.models import Digest, Owner, Pending
from crtool.store.pending import HELD, head

QUEUED = "queued"
SENT = "sent"


def _unsent(owner: str) -> ColumnElement[bool]:
    return Pending.digest_id.in_(
        select(Digest.id).where(Digest.owner == owner, Digest.status == QUEUED))


def new_condition(owner: str) -> ColumnElement[bool]:
    """Held and not yet reported by a digest that was sent: `pending list --new`."""
    return and_(Pending.owner == owner, Pending.status == HELD,
                or_(Pending.digest_id.is_(None), _unsent(owner)))


def claim(session: Session, owner: str, digest_id: str, recipient: str, now: int) -> int:
    """Record a digest and claim every new held message for it; how many it claimed.
    Digests that were never sent are dropped: their messages move to this one."""
    session.add(Digest(id=digest_id, owner=owner, created_at=now, recipient=recipient, held=0,
                       status=QUEUED))
    session.flush()
    stale = select(Digest.id).where(Digest.owner == owner, Digest.status == QUEUED,
                                    Digest.id != digest_id)
    result = session.execute(
        update(Pending)
        .where(Pending.owner == owner, Pending.status == HELD,
               or_(Pending.digest_id.is_(None), Pending.digest_id.in_(stale)))
        .values(digest_id=digest_id)
        .execution_options(synchronize_session=False))
    session.execute(delete(Digest).where(Digest.owner == owner, Digest.status == QUEUED,
                                         Digest.id != digest_id))
    claimed = int(getattr(result, "rowcount", 0) or 0)
    session.execute(update(Digest).where(Digest.id == digest_id).values(held=claimed))
    return claimed


def give_back(session: Session, owner: str, digest_id: str) -> None:
    """A digest not sent after all: its messages are new again, and it is forgotten."""
    session.execute(update(Pending).where(Pending.owner == owner,
                                          Pending.digest_id == digest_id)
                    .values(digest_id=None).execution_options(synchronize_session=False))
    session.execute(delete(Digest).where(Digest.id == digest_id))


def mark_sent(session: Session, digest_id: str) -> None:
    session.execute(update(Digest).where(Digest.id == digest_id).values(status=SENT))


def get(session: Session, owner: str, digest_id: str) -> Digest | None:
    return session.scalar(select(Digest).where(Digest.owner == owner,
                                               Digest.id == digest_id.lower()))


def last_sent(session: Session, owner: str) -> int | None:
    """When the newest digest that was sent was made, or None."""
    return session.scalar(select(func.max(Digest.created_at)).where(
        Digest.owner == owner, Digest.status == SENT))


def owner_since(session: Session, owner: str) -> int | None:
    """When the owner was set up (`init`), or None."""
    return session.scalar(select(Owner.created_at).where(Owner.address == owner))


def reason_counts(session: Session, condition: ColumnElement[bool]) -> dict[str, int]:
    """{reason: held messages} among those `condition` selects."""
    rows = session.execute(select(Pending.reason, func.count()).where(condition)
                           .group_by(Pending.reason)).all()
    return {reason: n for reason, n in rows}


def newest(session: Session, condition: ColumnElement[bool], reason: str,
           limit: int | None) -> list[Pending]:
    """The newest held messages of one reason among those `condition` selects."""
    statement = (select(Pending).where(condition, Pending.reason == reason)
                 .order_by(Pending.received_at.desc(), Pending.id.desc()))
    if limit is not None:
        statement = statement.limit(limit)
    return list(session.scalars(statement))


def every(session: Session, condition: ColumnElement[bool]) -> Iterator[Pending]:
    """All of them, by reason then newest first, streamed (for `digest --json`)."""
    yield from session.scalars(
        select(Pending).where(condition)
        .order_by(Pending.reason, Pending.received_at.desc(), Pending.id.desc())
        .execution_options(yield_per=2000))


def held_counts(session: Session, owner: str, sender_keys: Sequence[str]) -> dict[str, int]:
    """{sender_key: messages held} for these senders (what an accept address releases)."""
    if not sender_keys:
        return {}
    rows = session.execute(
        select(Pending.sender_key, func.count())
        .where(Pending.owner == owner, Pending.status == HELD,
               Pending.sender_key.in_(list(sender_keys)))
        .group_by(Pending.sender_key)).all()
    return {key: n for key, n in rows}


def heads(session: Session, ids: Sequence[str], size: int) -> Iterator[tuple[str, bytes]]:
    """(id, the first `size` bytes) of held messages, for spotting a bounce of a digest."""
    for pending_id in ids:
        yield pending_id, head(session, pending_id, size)
