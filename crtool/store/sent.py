"""The owner's sent Message-IDs and tagged addresses in the store.

A reply's look-up is one `message_id IN (...)` over the few ids its In-Reply-To and References
name, served by the unique (owner, message_id) index; a revoked keyword is one equality probe
on (owner, kind, value). No scan, however much the owner has sent.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Select, delete, select
from sqlalchemy.orm import Session

from crtool.store.models import SentMessage, TaggedAddress


def record(session: Session, owner: str, message_ids: Iterable[str], now: int) -> int:
    """Record Message-IDs the owner sent now; one sent again gets the new time. Returns how
    many were new."""
    added = 0
    for message_id in dict.fromkeys(message_ids):
        row = session.scalar(select(SentMessage).where(
            SentMessage.owner == owner, SentMessage.message_id == message_id))
        if row is not None:
            row.sent_at = max(row.sent_at, now)
            continue
        session.add(SentMessage(owner=owner, message_id=message_id, sent_at=now))
        added += 1
    session.flush()
    return added


def forget_before(session: Session, owner: str, before: int) -> int:
    """Delete the owner's Message-IDs sent before `before`: past `reply_window` they let
    nothing through, so the table holds one window's worth of the owner's mail."""
    result = session.execute(delete(SentMessage).where(
        SentMessage.owner == owner, SentMessage.sent_at < before))
    return int(getattr(result, "rowcount", 0) or 0)


def sent_statement(owner: str, message_ids: list[str], since: int) -> Select[int]:
    """A reply's look-up (tests/unit/test_outgoing_indexes.py shows it uses the index)."""
    return select(SentMessage.id).where(
        SentMessage.owner == owner, SentMessage.message_id.in_(message_ids),
        SentMessage.sent_at >= since).limit(1)


def sent_since(session: Session, owner: str, message_ids: list[str], since: int) -> bool:
    """Whether the owner sent any of these Message-IDs at `since` or later."""
    if not message_ids:
        return False
    return session.scalar(sent_statement(owner, message_ids, since)) is not None


def tagged(session: Session, owner: str, kind: str, value: str) -> TaggedAddress | None:
    return session.scalar(select(TaggedAddress).where(
        TaggedAddress.owner == owner, TaggedAddress.kind == kind, TaggedAddress.value == value))


def by_token(session: Session, owner: str, token: str) -> TaggedAddress | None:
    return session.scalar(select(TaggedAddress).where(
        TaggedAddress.owner == owner, TaggedAddress.token == token).limit(1))


def remember(session: Session, owner: str, kind: str, value: str, token: str, now: int,
             expires: int | None = None) -> TaggedAddress:
    """Record a tagged address the owner asked for; asking again for the same one keeps its
    row (and a revoked keyword stays revoked: revocation is undone by no command)."""
    row = tagged(session, owner, kind, value)
    if row is None:
        row = TaggedAddress(owner=owner, kind=kind, value=value, token=token, created_at=now,
                            expires_at=expires)
        session.add(row)
    else:
        row.token = token
        row.expires_at = expires
    session.flush()
    return row


def revoke(session: Session, owner: str, kind: str, value: str, token: str,
           now: int) -> bool:
    """Mark a tagged address revoked; False when it already was."""
    row = tagged(session, owner, kind, value)
    if row is None:
        row = remember(session, owner, kind, value, token, now)
    if row.revoked_at is not None:
        return False
    row.revoked_at = now
    session.flush()
    return True


def revoked_statement(owner: str, kind: str, value: str) -> Select[int | None]:
    return select(TaggedAddress.revoked_at).where(
        TaggedAddress.owner == owner, TaggedAddress.kind == kind, TaggedAddress.value == value)


def revoked(session: Session, owner: str, kind: str, value: str) -> bool:
    """Whether the owner revoked this tagged address (a keyword); no row is not revoked."""
    return session.scalar(revoked_statement(owner, kind, value)) is not None
