"""Owners as rows (hub mode): adding, listing, removing, and finding the one a recipient names.

An owner row exists for every mailbox that ever had mail (pending.lock_owner makes it); it is
*served* by `crtool lmtp` only while it has a delivery target, a Maildir or a downstream LMTP
server. Removing an owner takes the target away and keeps its lists and held mail, so adding it
back restores everything and a confirmation in flight is never matched to a stranger.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from crtool.store.models import Owner


def served(session: Session, candidates: Sequence[str]) -> list[Owner]:
    """The served owners among `candidates` (lowercased base addresses)."""
    if not candidates:
        return []
    return list(session.scalars(
        select(Owner).where(Owner.address.in_(list(candidates)),
                            or_(Owner.maildir.is_not(None), Owner.lmtp_next.is_not(None)))))


def get(session: Session, address: str) -> Owner | None:
    return session.get(Owner, address)


def put(session: Session, address: str, maildir: str | None, lmtp_next: str | None,
        overrides: str, now: int) -> bool:
    """Serve `address` with this target and these overrides; True when it was not served."""
    row = session.get(Owner, address, with_for_update=True)
    if row is None:
        session.add(Owner(address=address, created_at=now, maildir=maildir,
                          lmtp_next=lmtp_next, overrides=overrides))
        session.flush()
        return True
    was_served = row.maildir is not None or row.lmtp_next is not None
    row.maildir, row.lmtp_next, row.overrides = maildir, lmtp_next, overrides
    return not was_served


def unserve(session: Session, address: str) -> bool:
    """Stop serving `address` (its data stays); False when it was not served."""
    row = session.get(Owner, address, with_for_update=True)
    if row is None or (row.maildir is None and row.lmtp_next is None):
        return False
    row.maildir = row.lmtp_next = None
    return True


def all_served(session: Session) -> list[Owner]:
    return list(session.scalars(
        select(Owner).where(or_(Owner.maildir.is_not(None), Owner.lmtp_next.is_not(None)))
        .order_by(Owner.address)))
