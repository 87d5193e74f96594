"""What crtool knows of an incoming message beyond the lists: whether it answers mail the owner
sent (replies.py) and whether it came to one of the owner's tagged addresses (tags.py).

The service asks this before policy decides, inside the delivery's transaction, and passes the
answers to policy as plain facts (`Incoming.reply`, `Incoming.tag`); policy decides what they
mean. The key ring is read only when a tagged address or a signed Message-ID needs it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from crtool import policy, replies, tags
from crtool.config import Settings
from crtool.envelope import Envelope
from crtool.message import Facts
from crtool.store import log, sent

if TYPE_CHECKING:
    from crtool.service import Mailbox

TAGGED_EVENT = "tagged"


def records(settings: Settings, envelope: Envelope) -> bool:
    """Whether `enrich` may write (a tag that does not hold is recorded): then the caller's
    transaction must be one that writes. Mail to the bare address only reads."""
    return tags.parse(envelope.recipient, settings.address, settings.delimiter) is not None


def enrich(box: Mailbox, session: Session, envelope: Envelope, facts: Facts,
           incoming: policy.Incoming, record: bool = True) -> policy.Incoming:
    """`incoming` with `tag` and `reply` filled in. A tag that does not hold is recorded as
    an event (kind "tagged", its reason), since the message is then decided as mail to the
    bare address and its own reason says nothing of the tag; `record=False` (`crtool check`)
    changes nothing."""
    settings = box.settings
    tagged = tags.parse(envelope.recipient, settings.address, settings.delimiter)
    if tagged is not None:
        now = box.now()
        status = tags.verify(box.keys(), settings.address, tagged, envelope.sender, now,
                             settings.subaddress_separators).status
        if status == policy.TAG_VALID and tagged.kind == tags.KEYWORD and sent.revoked(
                session, box.owner, tags.KEYWORD, tagged.keyword):
            status = policy.TAG_REVOKED
        tag = policy.Tag(tagged.kind, status)
        incoming = replace(incoming, tag=tag)
        fallback = policy.tag_fallback_reason(tag)
        if fallback is not None and record:
            log.record_event(session, box.owner, now, TAGGED_EVENT, fallback, envelope.sender)
    if (facts.has("in-reply-to") or facts.has("references")) and replies.is_reply(
            session, box.owner, box.keys, facts, box.now(), settings.reply_window):
        incoming = replace(incoming, reply=True)
    return incoming
