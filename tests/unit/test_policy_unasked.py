"""Replies to the owner's mail and mail to tagged addresses, decided in the pure core: where
they stand among the lists and the rules that hold without a challenge."""

from __future__ import annotations

from dataclasses import replace

import pytest

from crtool import addresses, policy
from crtool.message import parse_head
from crtool.policy import Action, Listing, Tag

OWNER = "alice@example.test"
WHITE = Listing(policy.WHITE, "bob@remote.test")
BLACK = Listing(policy.BLACK, "bob@remote.test")


def incoming(head: str = "Subject: hi\n", sender: str = "bob@remote.test",
             recipient: str = OWNER, **extra: object) -> policy.Incoming:
    return replace(policy.Incoming(sender=sender, sender_valid=bool(sender),
                                   recipient=recipient,
                                   facts=parse_head(f"From: {sender}\n{head}\n".encode()),
                                   owner=addresses.OwnerAddress(OWNER),
                                   authserv_id="mx.example.test"),
                   **extra)


def test_a_reply_from_a_person_is_accepted_with_its_own_reason() -> None:
    verdict = policy.classify(incoming(reply=True), None)
    assert (verdict.action, verdict.reason) == (Action.ACCEPT, "reply")


def test_an_automated_reply_is_delivered_but_names_nobody_to_whitelist() -> None:
    for head, sender in (("Auto-Submitted: auto-replied\n", "bob@remote.test"),
                         ("List-Id: <l.x.test>\n", "bob@remote.test"),
                         ("Subject: bounce\n", "")):
        verdict = policy.classify(incoming(head, sender, reply=True), None)
        assert (verdict.action, verdict.reason) == (Action.ACCEPT, "reply_automated")


def test_the_blacklist_and_forgery_beat_a_reply() -> None:
    assert policy.classify(incoming(reply=True), BLACK).action is Action.BLACKLISTED
    spf = "Authentication-Results: mx.example.test; spf=fail smtp.mailfrom=bob@remote.test\n"
    verdict = policy.classify(incoming(spf, reply=True), None)
    assert (verdict.action, verdict.reason) == (Action.HOLD, "spf_fail")


@pytest.mark.parametrize("kind", ["dated", "sender", "keyword"])
def test_a_tag_that_holds_accepts_even_what_would_be_held_silently(kind: str) -> None:
    automated = "Auto-Submitted: auto-generated\nPrecedence: bulk\n"
    verdict = policy.classify(incoming(automated, "noreply@shop.test",
                                       tag=Tag(kind, policy.TAG_VALID)), None)
    assert (verdict.action, verdict.reason) == (Action.ACCEPT, f"tagged_{kind}")


def test_a_sender_address_does_not_accept_a_message_its_sender_disowns() -> None:
    dmarc = "Authentication-Results: mx.example.test; dmarc=fail header.from=remote.test\n"
    verdict = policy.classify(incoming(dmarc, tag=Tag("sender", policy.TAG_VALID)), None)
    assert verdict.action is Action.HOLD
    verdict = policy.classify(incoming(dmarc, tag=Tag("dated", policy.TAG_VALID)), None)
    assert verdict.action is Action.ACCEPT


def test_a_revoked_keyword_drops_and_a_tag_that_fails_reads_as_the_bare_address() -> None:
    verdict = policy.classify(incoming(tag=Tag("keyword", policy.TAG_REVOKED)), None)
    assert (verdict.action, verdict.reason) == (Action.DROP, "keyword_revoked")
    for status, reason in (("expired", "dated_expired"), ("forged", "tag_forged"),
                           ("wrong_sender", "sender_mismatch")):
        tag = Tag("dated", status)
        assert policy.tag_fallback_reason(tag) == reason
        assert policy.classify(incoming(tag=tag), None).action is Action.CHALLENGE
    assert policy.tag_fallback_reason(Tag("keyword", policy.TAG_VALID)) is None


def test_the_lists_decide_before_any_tag() -> None:
    # A whitelisted sender is delivered whatever the tag (the fast read path relies on it);
    # a blacklisted one is dropped as blacklisted, never bounced as a tag.
    revoked = Tag("keyword", policy.TAG_REVOKED)
    assert policy.classify(incoming(tag=revoked), WHITE).action is Action.ACCEPT
    assert policy.classify(incoming(tag=Tag("dated", "valid")), BLACK).action \
        is Action.BLACKLISTED


@pytest.mark.parametrize(("status", "reason"), [
    (policy.TAG_EXPIRED, "dated_expired"), (policy.TAG_WRONG_SENDER, "sender_mismatch"),
    (policy.TAG_FORGED, "tag_forged"), (policy.TAG_VALID, None), (policy.TAG_REVOKED, None)])
def test_a_tag_that_fails_says_why_it_reads_as_the_bare_address(status: str,
                                                                 reason: str | None) -> None:
    assert policy.tag_fallback_reason(Tag("dated", status)) == reason
    assert policy.tag_fallback_reason(None) is None
