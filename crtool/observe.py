"""Observe mode: crtool switched on without challenging anyone.

With `mode = "observe"` every message is delivered as if its sender were whitelisted; nothing
is challenged, held or dropped. What enforce would have done is recorded as an event of kind
"observed" whose reason is enforce's (`challenged`, a hold reason such as `list_headers`, or
`blacklisted`). `crtool report` summarises those events and lists the senders a switch to
enforce would challenge, leaving out those whitelisted since. Mail to confirm addresses and
whitelisted mail go their usual way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crtool import acceptance, addresses, policy
from crtool.envelope import Envelope, RawMessage
from crtool.message import Facts
from crtool.store import lists, log
from crtool.store.models import Event

if TYPE_CHECKING:
    from crtool.service import Mailbox, Result

OBSERVE = "observe"
ENFORCE = "enforce"
OBSERVED = "observed"
CHALLENGED = "challenged"


def would_stop(verdict: policy.Verdict) -> bool:
    """Whether enforce would keep this message from the owner (hold, challenge or drop)."""
    return verdict.action in (policy.Action.CHALLENGE, policy.Action.HOLD,
                              policy.Action.BLACKLISTED)


def deliver(box: Mailbox, session: Session, envelope: Envelope, raw: RawMessage,
            verdict: policy.Verdict) -> Result:
    """Deliver a message enforce would have stopped, and record why it would have.

    Side effects: one "observed" event, and the delivery itself (the MTA's next line, or the
    Maildir) exactly as for a whitelisted sender."""
    from crtool.service import Result

    reason = CHALLENGED if verdict.action is policy.Action.CHALLENGE else verdict.reason
    log.record_event(session, box.owner, box.now(), OBSERVED, reason, envelope.sender)
    outcome, detail = acceptance.accept(box.settings, envelope, raw, f"observe mode: {reason}")
    return Result(outcome, detail, reason=reason)


@dataclass(frozen=True)
class Sender:
    sender: str
    messages: int
    last_at: int


@dataclass(frozen=True)
class Report:
    since: int
    by_reason: dict[str, int]
    would_challenge: list[Sender]


def report(session: Session, owner: str, since: int, separators: str = "+",
           owner_address: str = "") -> Report:
    """What enforce would have done since `since`: counts by reason, and each sender it would
    challenge that is still not whitelisted (the lists as they are now)."""
    counts = session.execute(
        select(Event.reason, func.count()).where(
            Event.owner == owner, Event.kind == OBSERVED, Event.at >= since)
        .group_by(Event.reason)).all()
    rows = session.execute(
        select(Event.sender_key, func.count(), func.max(Event.at)).where(
            Event.owner == owner, Event.kind == OBSERVED, Event.reason == CHALLENGED,
            Event.at >= since)
        .group_by(Event.sender_key).order_by(func.count().desc(), Event.sender_key)).all()
    senders = [Sender(str(key), int(n), int(last)) for key, n, last in rows
               if not _whitelisted_now(session, owner, str(key), separators, owner_address)]
    return Report(since, {str(reason): int(n) for reason, n in counts}, senders)


def _whitelisted_now(session: Session, owner: str, sender: str, separators: str,
                     owner_address: str) -> bool:
    message = policy.Incoming(sender=sender, sender_valid=True, recipient="",
                              facts=Facts(headers={"from": [sender]}, has_header_block=True),
                              owner=addresses.OwnerAddress(owner_address or owner))
    listing = lists.listing_for(session, owner, message, separators)
    return listing is not None and listing.list_name == policy.WHITE


def lines(found: Report) -> Iterator[str]:
    """The report as the owner reads it."""
    total = sum(found.by_reason.values())
    yield f"observed: {total} messages enforce would have stopped"
    for reason, count in sorted(found.by_reason.items(), key=lambda item: (-item[1], item[0])):
        yield f"  {count:7d}  {reason}"
    yield (f"a switch to enforce would challenge {len(found.would_challenge)} senders "
           "(not whitelisted now):")
    for sender in found.would_challenge:
        yield f"  {sender.messages:7d}  {addresses.normalize_address(sender.sender)}"
