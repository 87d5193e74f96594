"""The owner's outgoing mail, once the MTA has taken it: whitelist the recipients, record the
Message-ID.

Whoever the owner writes to is someone he expects an answer from, so each recipient becomes an
exact whitelist entry (source and note `sent`): never over a blacklist entry, never one of the
owner's own addresses. The Message-ID is recorded so that a reply naming it is delivered
(replies.py). Both happen in one transaction, and only after the real sendmail said it took the
message: mail the MTA refused whitelists nobody.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import getaddresses

from sqlalchemy import Engine

from crtool import addresses, policy
from crtool.config import Settings
from crtool.message import is_msg_id
from crtool.store import lists, sent
from crtool.store.engine import transaction

SENT_SOURCE = "sent"


@dataclass(frozen=True)
class Recorded:
    """What recording one sent message did."""

    whitelisted: tuple[str, ...]  # entries added (new ones only)
    skipped: tuple[str, ...]  # recipients not listed: the owner's own, blacklisted, odd
    message_id: str  # the Message-ID recorded, "" for none


def recipient_addresses(texts: Sequence[str]) -> list[str]:
    """The addresses in recipient arguments or To/Cc/Bcc header values, in order, once each.
    A value may hold several, with display names and comments (RFC 5322 address lists)."""
    found = [address for _, address in getaddresses(list(texts)) if "@" in address]
    return list(dict.fromkeys(found))


def _own(settings: Settings, address: str) -> bool:
    """The owner's address, one of its extensions, or where the digest goes."""
    key = addresses.normalize_address(address)
    owner_local, owner_domain = addresses.split_address(settings.owner)
    local, domain = addresses.split_address(key)
    own = {settings.owner, addresses.normalize_address(settings.digest_to or settings.owner)}
    return key in own or (domain == owner_domain
                          and local.startswith(owner_local + settings.delimiter))


def record(settings: Settings, engine: Engine, recipients: Sequence[str], message_id: str,
           now: int) -> Recorded:
    """Whitelist `recipients` (bare addresses) and record `message_id` ("" for none).

    Takes the settings and an engine rather than a service.Mailbox: the owner's mail program
    waits for this, and the delivery code (templates, Maildir, LMTP) has no part in it."""
    whitelisted: list[str] = []
    skipped: list[str] = []
    separators = settings.subaddress_separators
    owner = settings.owner
    with transaction(engine) as session:
        for address in recipients:
            pattern = addresses.confirmed_pattern(address, separators)
            if pattern is None or _own(settings, address):
                skipped.append(address)
                continue
            keys = addresses.lookup_keys(pattern.key, separators)
            listing = policy.decide_listing(lists.matches(session, owner, keys), keys)
            if listing is not None and listing.list_name == policy.BLACK:
                skipped.append(address)
                continue
            if listing is not None and listing.key == pattern.key:
                continue  # listed already: the owner's note on it stays
            if lists.add(session, owner, policy.WHITE, pattern, SENT_SOURCE, now, SENT_SOURCE):
                whitelisted.append(pattern.text)
        recorded = message_id if is_msg_id(message_id) else ""
        if recorded:
            sent.record(session, owner, [recorded], now)
        sent.forget_before(session, owner, now - settings.reply_window)
    return Recorded(tuple(whitelisted), tuple(skipped), recorded)
