"""The challenge log (which rate limits count) and the event log (which `stats` counts)."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Row, func, insert, select, update
from sqlalchemy.orm import Session

from crtool.addresses import normalize_address
from crtool.store.models import Challenge, Event

QUEUED = "queued"
SENT = "sent"
FAILED = "failed"  # given up after the tries a delivery allows; never sent again
RETRIED = "challenge_retry"  # the event of each try after the first
_EVENT_INSERT = insert(Event)


def record_event(session: Session, owner: str, now: int, kind: str, reason: str = "",
                 sender: str = "", pending_id: str = "", actor: str = "") -> None:
    """One event; `actor` says who decided ("" for crtool's delivery itself).

    A Core INSERT, run at once: nothing reads an event back as an object, and the ORM's unit
    of work around one row cost each delivery more than the row itself."""
    session.connection().execute(_EVENT_INSERT, {
        "owner": owner, "at": now, "kind": kind, "reason": reason[:40],
        "sender": sender[:320], "pending_id": pending_id,
        "sender_key": normalize_address(sender)[:320], "actor": actor[:20]})


def record_challenge(session: Session, owner: str, recipient_key: str, pending_id: str,
                     now: int) -> Challenge:
    row = Challenge(owner=owner, recipient_key=recipient_key, pending_id=pending_id,
                    created_at=now, status=QUEUED)
    session.add(row)
    session.flush()
    return row


def mark_sent(session: Session, challenge_id: int) -> None:
    session.execute(update(Challenge).where(Challenge.id == challenge_id).values(status=SENT))


def unsent_for(session: Session, pending_id: str) -> Challenge | None:
    """A challenge recorded for this message but never confirmed as sent (a crash or a
    sendmail failure came between); the retried delivery sends it."""
    return session.scalar(
        select(Challenge).where(Challenge.pending_id == pending_id, Challenge.status == QUEUED)
        .order_by(Challenge.created_at.desc()).limit(1)
    )


def send_tries(session: Session, record: Challenge) -> int:
    """How often this challenge was handed to sendmail: once when it was recorded, once more
    for each retry event of its message since then."""
    retries = session.scalar(
        select(func.count()).select_from(Event).where(
            Event.owner == record.owner, Event.pending_id == record.pending_id,
            Event.kind == RETRIED, Event.at >= record.created_at))
    return 1 + (retries or 0)


def give_up(session: Session, record: Challenge) -> None:
    session.execute(update(Challenge).where(Challenge.id == record.id).values(status=FAILED))


def challenges_since(session: Session, owner: str, since: int,
                     recipient_key: str | None = None) -> int:
    statement = select(func.count()).select_from(Challenge).where(
        Challenge.owner == owner, Challenge.created_at > since)
    if recipient_key is not None:
        statement = statement.where(Challenge.recipient_key == recipient_key)
    return session.scalar(statement) or 0


def event_counts(session: Session, owner: str) -> dict[tuple[str, str], int]:
    """{(kind, reason): count} for this owner."""
    rows = session.execute(
        select(Event.kind, Event.reason, func.count()).where(Event.owner == owner)
        .group_by(Event.kind, Event.reason)
    ).all()
    return {(kind, reason): n for kind, reason, n in rows}


DAY = 86400


def daily_counts(session: Session, owner: str, since: int,
                 kinds: tuple[str, ...]) -> dict[tuple[int, str], int]:
    """{(day, kind): count} of this owner's events at or after `since`; a day is the epoch
    seconds of its midnight UTC. Served by the (owner, at, kind) index."""
    day = (Event.at // DAY) * DAY
    rows = session.execute(
        select(day, Event.kind, func.count())
        .where(Event.owner == owner, Event.at >= since, Event.kind.in_(kinds))
        .group_by(day, Event.kind)
    ).all()
    return {(int(d), kind): n for d, kind, n in rows}


def history(session: Session, owner: str, sender_keys: list[str], limit: int | None = None,
            ) -> Iterator[Row[int, str, str, str, str, str]]:
    """Every event under these sender keys (an address and the list patterns that match
    it), oldest first, through the (owner, sender_key, at) index; streamed, so that a sender
    with many events does not fill memory."""
    statement = (select(Event.at, Event.kind, Event.reason, Event.sender, Event.pending_id,
                        Event.actor)
                 .where(Event.owner == owner, Event.sender_key.in_(sender_keys))
                 .order_by(Event.at, Event.id).execution_options(yield_per=1000))
    if limit is not None:
        statement = statement.limit(limit)
    yield from session.execute(statement)
