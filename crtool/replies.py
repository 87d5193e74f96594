"""Replies to the owner's own mail: signed Message-IDs, and recognising a reply that names one.

qconfirm's check-mid delivered any message whose In-Reply-To named a Message-ID the owner had
sent; since Message-IDs are often guessable (a time and a host name), a spammer could forge one.
Here a Message-ID that `crtool sendmail` mints is signed (purpose `reply` of the key ring):

    <STAMP.IDIDIDIDMACMACMACMACMACMACMAC.crtool@example.test>

STAMP is the sending time (5 bytes of epoch seconds, base32), then a random id and an 80-bit MAC
over the owner, the id and that time, so it verifies without the database and expires after
`reply_window` by itself. A Message-ID the owner's mail program set is not signed; it is
recorded in the store (store/sent.py) and looked up by equality.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from crtool import tokens
from crtool.errors import BadToken
from crtool.message import Facts, is_msg_id

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

PURPOSE = "reply"
SUFFIX = ".crtool"
STAMP_CHARS = 8
# The ids of a reply worth looking at: all of In-Reply-To and the newest of References (the
# thread's root and its last few; a long thread's middle adds nothing).
MAX_REFERENCES = 20
_SIGNED = re.compile(r"^<([a-z2-7]{8})\.([a-z2-7]{24})" + re.escape(SUFFIX) + r"@[^<>\s]+>$",
                     re.IGNORECASE)
_MSG_ID_TEXT = re.compile(r"<[^<>\s]{1,250}>")


def mint(keys: Sequence[bytes], owner: str, domain: str, now: int,
         new_id: Callable[[], str] = tokens.new_token_id) -> str:
    """A fresh signed Message-ID for mail the owner sends now."""
    stamp = tokens.b32(max(0, now).to_bytes(5, "big"))
    token = tokens.issue(keys, PURPOSE, owner.lower(), new_id(), "", now)
    return f"<{stamp}.{token}{SUFFIX}@{domain.lower()}>"


def looks_signed(message_id: str) -> bool:
    """A cheap look before any key is loaded."""
    return _SIGNED.match(message_id) is not None


def verify(keys: Sequence[bytes], owner: str, message_id: str, now: int, window: int) -> bool:
    """Whether `message_id` is one this crtool minted for `owner` at most `window` ago."""
    match = _SIGNED.match(message_id)
    if match is None:
        return False
    stamp = int.from_bytes(tokens.unb32(match.group(1).lower()), "big")
    try:
        tokens.verify(keys, PURPOSE, owner.lower(), match.group(2), "", stamp, now, window)
    except BadToken:
        return False
    return True


def referenced(facts: Facts) -> list[str]:
    """The valid msg-ids In-Reply-To and References name, In-Reply-To's first."""
    found = []
    for name in ("in-reply-to", "references"):
        ids = [text for value in facts.all(name) for text in _MSG_ID_TEXT.findall(value)]
        if name == "references":
            ids = ids[:1] + ids[1:][-(MAX_REFERENCES - 1):]
        found += [text for text in ids if is_msg_id(text)]
    return list(dict.fromkeys(found))


def is_reply(session: Session, owner: str, keys: Callable[[], Sequence[bytes]],
             facts: Facts, now: int, window: int) -> bool:
    """Whether the message answers mail the owner sent within `window`: a signed Message-ID
    that verifies (the key ring is read only when one is named), or a recorded one."""
    # Imported here: `crtool sendmail` mints Message-IDs with this module before the mail
    # goes out, and must not wait for SQLAlchemy then.
    from crtool.store import sent

    ids = referenced(facts)
    if not ids:
        return False
    signed = [text for text in ids if looks_signed(text)]
    if signed:
        ring = keys()
        if any(verify(ring, owner, text, now, window) for text in signed):
            return True
    return sent.sent_since(session, owner, ids, now - window)
