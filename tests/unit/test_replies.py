"""Signed Message-IDs: made for one owner, verified without the database, for reply_window."""

from __future__ import annotations

from crtool import replies
from crtool.message import Facts, is_msg_id

KEYS = [b"k" * 32]
OWNER = "alice@example.test"
NOW = 1_800_000_000
WINDOW = 180 * 86400


def test_a_minted_message_id_is_a_valid_msg_id_that_verifies_within_the_window() -> None:
    minted = replies.mint(KEYS, OWNER, "example.test", NOW)
    assert is_msg_id(minted) and minted.endswith(".crtool@example.test>")
    assert minted != replies.mint(KEYS, OWNER, "example.test", NOW)
    assert replies.verify(KEYS, OWNER, minted, NOW + WINDOW, WINDOW)
    assert replies.verify(KEYS + [b"n" * 32], OWNER, minted.upper(), NOW, WINDOW)
    assert not replies.verify(KEYS, OWNER, minted, NOW + WINDOW + 301, WINDOW)
    assert not replies.verify(KEYS, "bob@example.test", minted, NOW, WINDOW)
    assert not replies.verify([b"x" * 32], OWNER, minted, NOW, WINDOW)
    # Its time is signed: a later stamp on the same token does not verify.
    later = replies.mint(KEYS, OWNER, "example.test", NOW + 10**6)
    assert not replies.verify(KEYS, OWNER, later[:9] + minted[9:], NOW + 10**6, WINDOW)


def test_the_ids_a_reply_names_come_from_in_reply_to_and_references() -> None:
    facts = Facts(headers={
        "in-reply-to": ["<a@x.test> (comment)"],
        "references": [" ".join(f"<r{n}@x.test>" for n in range(100)) + " <bad id@x>"],
    }, has_header_block=True)
    found = replies.referenced(facts)
    assert found[0] == "<a@x.test>" and found[1] == "<r0@x.test>"
    assert found[-1] == "<r99@x.test>" and len(found) == 1 + replies.MAX_REFERENCES
    assert "<bad id@x>" not in found
