"""The owner's tagged addresses: making them, revoking a keyword, and saying what one is.

`crtool address` and any other front end call these; the tokens are tags.py's, the rows
store/sent.py's.
"""

from __future__ import annotations

import time
from typing import Any

from crtool import addresses, policy, tags, tokens
from crtool.service import Mailbox
from crtool.store import sent
from crtool.store.engine import transaction


def _iso(epoch: int | None) -> str | None:
    return None if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def dated(box: Mailbox, valid: int) -> tuple[str, int]:
    """A dated address valid for `valid` seconds from now, and its expiry."""
    expires = box.now() + valid
    address = tags.dated_address(box.keys(), box.settings.address, box.settings.delimiter,
                                 expires)
    token = _token(box, address)
    with transaction(box.engine) as session:
        sent.remember(session, box.owner, tags.DATED, token, token, box.now(), expires)
    return address, expires


def sender(box: Mailbox, text: str, domain: bool) -> tuple[str, str]:
    """A sender address for `text` (or its domain): (the address, what it is made for)."""
    value = tags.sender_value(text, domain)
    address = tags.sender_address(box.keys(), box.settings.address, box.settings.delimiter,
                                   value)
    with transaction(box.engine) as session:
        sent.remember(session, box.owner, tags.SENDER, value, _token(box, address), box.now())
    return address, value


def keyword(box: Mailbox, text: str) -> tuple[str, bool]:
    """The keyword address for `text`, and whether the keyword is revoked."""
    word = tags.keyword_word(text)
    address = tags.keyword_address(box.keys(), box.settings.address, box.settings.delimiter,
                                   word)
    with transaction(box.engine) as session:
        row = sent.remember(session, box.owner, tags.KEYWORD, word, _token(box, address),
                            box.now())
        return address, row.revoked_at is not None


def revoke_keyword(box: Mailbox, text: str) -> tuple[str, bool]:
    """Revoke a keyword: mail to its address is dropped from now on. (The address, and
    whether it was newly revoked.)"""
    word = tags.keyword_word(text)
    address = tags.keyword_address(box.keys(), box.settings.address, box.settings.delimiter,
                                   word)
    with transaction(box.engine) as session:
        return address, sent.revoke(session, box.owner, tags.KEYWORD, word,
                                    _token(box, address), box.now())


def _token(box: Mailbox, address: str) -> str:
    tagged = tags.parse(address, box.settings.address, box.settings.delimiter)
    return tagged.token if tagged is not None else ""


def check(box: Mailbox, address: str) -> dict[str, Any]:
    """What `address` is to this owner: {"address", "kind", "verifies", "status", "for",
    "until", "revoked"}. kind is "dated", "sender", "keyword", "confirm", "release",
    "accept", "owner" (the bare address or another extension) or "other"."""
    settings = box.settings
    found: dict[str, Any] = {"address": address, "kind": "other", "verifies": False,
                             "status": "", "for": None, "until": None, "revoked": False}
    tagged = tags.parse(address, settings.address, settings.delimiter)
    if tagged is None:
        action = addresses.parse_action(address, settings.address, settings.delimiter)
        if action is not None:
            found.update(kind=action[0], status="the token is checked against its held "
                         "message when mail arrives")
        elif _owners(address, settings.address, settings.delimiter):
            found.update(kind="owner", verifies=True, status=policy.TAG_VALID)
        return found
    keys = box.keys()
    found["kind"] = tagged.kind
    now = box.now()
    with transaction(box.engine, write=False) as session:
        if tagged.kind == tags.DATED:
            checked = tags.verify(keys, settings.address, tagged, "", now)
            found.update(status=checked.status, verifies=checked.status == policy.TAG_VALID,
                         until=_iso(checked.expires), **{"for": "anyone"})
        elif tagged.kind == tags.KEYWORD:
            checked = tags.verify(keys, settings.address, tagged, "", now)
            revoked = checked.status == policy.TAG_VALID and sent.revoked(
                session, box.owner, tags.KEYWORD, tagged.keyword)
            status = policy.TAG_REVOKED if revoked else checked.status
            found.update(status=status, verifies=status == policy.TAG_VALID, revoked=revoked,
                         **{"for": "anyone" if status == policy.TAG_VALID else None,
                            "keyword": tagged.keyword})
        else:
            row = sent.by_token(session, box.owner, tagged.token)
            made_for = row.value if row is not None and row.kind == tags.SENDER else None
            ok = made_for is not None and tokens.check_text(
                keys, tags.SENDER, f"{box.owner}\0{made_for}", tagged.token)
            # Its token signs the address it was made for, which only the row names: without
            # the row nothing can be said (mail from that sender would still pass).
            status = "unknown" if made_for is None else (
                policy.TAG_VALID if ok else policy.TAG_FORGED)
            found.update(status=status, verifies=ok, **{"for": made_for if ok else None})
    return found


def _owners(address: str, owner_address: str, delimiter: str) -> bool:
    local, domain = addresses.split_address(addresses.normalize_address(address))
    owner_local, owner_domain = addresses.split_address(owner_address.lower())
    return domain == owner_domain and (local == owner_local
                                       or local.startswith(owner_local + delimiter))
