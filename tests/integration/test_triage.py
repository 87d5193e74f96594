"""The owner's triage commands: filtered listings, releasing and deleting by sender, a held
message's summary, what delivery would do now (check) and what was decided (history). On
SQLite and, with CRTOOL_TEST_DATABASE_URL set, on PostgreSQL."""

from __future__ import annotations

import json
import re

from tests.support import Mailbox, confirm_address_of, message

LIST = {"List-Id": "<news.list.test>"}


def _hold(mailbox: Mailbox, sender: str, subject: str = "hi",
          headers: dict[str, str] | None = None) -> str:
    result = mailbox.deliver(message(sender, subject, headers=headers), sender)
    assert result.returncode == 99, result.stderr
    found = re.search(rb"held as ([a-z2-7]{8})", result.stderr)
    assert found, result.stderr
    return found.group(1).decode()


def _ids(mailbox: Mailbox, *args: str) -> list[str]:
    return [item["id"] for item in json.loads(mailbox.ok("pending", "list", "--json", *args))]


def test_list_filters_by_reason_sender_and_new(mailbox: Mailbox) -> None:
    news = _hold(mailbox, "news@list.test", headers=LIST)
    bob = _hold(mailbox, "bob@remote.test")
    mailbox.outbox.drain(1)
    assert _ids(mailbox, "--reason", "list_headers") == [news]
    assert _ids(mailbox, "--sender", "BOB@remote.test") == [bob]
    assert _ids(mailbox, "--reason", "list_headers", "--sender", "bob@remote.test") == []
    assert sorted(_ids(mailbox, "--new")) == sorted([news, bob])
    mailbox.ok("digest")
    mailbox.outbox.drain(1)
    assert _ids(mailbox, "--new") == []
    later = _hold(mailbox, "news@list.test", "again", headers=LIST)
    assert _ids(mailbox, "--new") == [later]
    assert "list_headers" in mailbox.ok("pending", "list", "--reason", "list_headers")


def test_release_by_sender_and_release_whitelist_takes_all_from_that_sender(
        mailbox: Mailbox) -> None:
    one = _hold(mailbox, "news@list.test", "one", headers=LIST)
    two = _hold(mailbox, "news@list.test", "two", headers=LIST)
    promo = _hold(mailbox, "promo@shop.test", "sale", headers=LIST)
    other = _hold(mailbox, "other@shop.test", "hello", headers=LIST)
    out = mailbox.ok("pending", "release", "--sender", "promo@shop.test")
    assert out == f"released: {promo}\n"
    assert mailbox.ok("whitelist", "export") == ""
    out = mailbox.ok("pending", "release", one, "--whitelist")
    assert sorted(out.split()) == sorted(["released:", one, "released:", two])
    entries = json.loads(mailbox.ok("whitelist", "list", "--json"))
    assert [(e["pattern"], e["note"]) for e in entries] == [("news@list.test",
                                                             "released by owner")]
    assert _ids(mailbox) == [other]
    missing = mailbox.run("pending", "release", "--sender", "nobody@x.test")
    assert missing.returncode == 3
    usage = mailbox.run("pending", "release")
    assert usage.returncode == 2
    assert len(mailbox.maildir_messages()) == 3


def test_delete_blacklist_deletes_all_from_those_senders_and_blacklists_them(
        mailbox: Mailbox) -> None:
    one = _hold(mailbox, "spam@junk.test", "one", headers=LIST)
    two = _hold(mailbox, "spam@junk.test", "two", headers=LIST)
    keep = _hold(mailbox, "news@list.test", "keep", headers=LIST)
    out = mailbox.ok("pending", "delete", two, "--blacklist")
    assert sorted(out.split()) == sorted(["deleted:", one, "deleted:", two])
    assert mailbox.ok("blacklist", "export") == "spam@junk.test\n"
    assert _ids(mailbox) == [keep]
    dropped = mailbox.deliver(message("spam@junk.test", "three"), "spam@junk.test")
    assert dropped.returncode == 99 and b"blacklisted" in dropped.stderr


def test_show_summary_escapes_what_the_stranger_wrote(mailbox: Mailbox) -> None:
    raw = (b"From: Mallory <m@evil.test>\nTo: alice@example.test\n"
           b"Subject: =?utf-8?q?hi=1B]52;c;ZWNobyBwd25lZA=3D=3D=07there?=\n"
           b"Date: Sun, 29 Nov 2026 10:00:00 +0000\nList-Id: <x.evil.test>\n\n"
           b"line one\n\x1b[2Jline two\n" + b"more\n" * 20)
    held = mailbox.deliver(raw, "m@evil.test")
    pending_id = re.search(rb"held as ([a-z2-7]{8})", held.stderr).group(1).decode()  # type: ignore[union-attr]
    out = mailbox.ok("pending", "show", pending_id, "--summary")
    assert "\x1b" not in out and "\x07" not in out
    assert "Subject:  hi\\x1b]52;c;ZWNobyBwd25lZA==\\x07there" in out
    assert "From:     Mallory <m@evil.test>" in out and "(list_headers)" in out
    assert "\\x1b[2Jline two" in out and out.count("more") == 6


def test_check_says_the_verdict_and_what_decides_it(mailbox: Mailbox) -> None:
    mailbox.ok("whitelist", "add", "@example.org")
    mailbox.ok("blacklist", "add", "spam@example.org")
    white = json.loads(mailbox.ok("check", "bob@example.org", "--json"))
    assert (white["verdict"], white["entry"], white["source"]) == ("deliver", "@example.org",
                                                                   "owner")
    black = json.loads(mailbox.ok("check", "spam@example.org", "--json"))
    assert (black["verdict"], black["list"]) == ("drop", "black")
    stranger = json.loads(mailbox.ok("check", "carol@remote.test", "--json"))
    assert stranger["verdict"] == "hold and challenge"
    noreply = json.loads(mailbox.ok("check", "noreply@shop.test", "--json"))
    assert (noreply["verdict"], noreply["reason"]) == ("hold without challenge",
                                                       "noreply_sender")
    _hold(mailbox, "carol@remote.test")
    mailbox.outbox.drain(1)
    limited = json.loads(mailbox.ok("check", "carol@remote.test", "--json"))
    assert (limited["verdict"], limited["reason"]) == ("hold without challenge",
                                                       "sender_rate_limit")
    assert mailbox.ok("check", "bob@example.org").startswith("bob@example.org: deliver\n")


def test_history_says_every_decision_and_who_made_it(mailbox: Mailbox) -> None:
    """Held and challenged by crtool, confirmed by the sender (who whitelisted him), unlisted
    and listed again by the owner."""
    _hold(mailbox, "carol@remote.test")
    ((_, challenge),) = mailbox.outbox.drain(1)
    confirmed = mailbox.deliver(message("carol@remote.test", "Re: confirm"),
                                "carol@remote.test", recipient=confirm_address_of(challenge))
    assert confirmed.returncode == 99
    mailbox.ok("whitelist", "remove", "carol@remote.test")
    mailbox.ok("blacklist", "add", "@remote.test")
    history = json.loads(mailbox.ok("history", "Carol@Remote.test", "--json"))
    seen = [(e["kind"], e["reason"], e["by"]) for e in history["events"]]
    assert seen == [
        ("held", "challenged", ""), ("challenged", "", ""),
        ("listed", "white", "the sender's confirmation"), ("confirmed", "mail", "the sender"),
        ("released", "", "the sender"), ("unlisted", "white", "the owner"),
        ("listed", "black", "the owner")], seen
    assert history["now"]["verdict"] == "drop"
    text = mailbox.ok("history", "carol@remote.test")
    assert "listed (white) by the sender's confirmation" in text
    assert text.rstrip().splitlines()[-1].startswith("now: drop")
    assert mailbox.ok("history", "nobody@x.test").startswith("nothing recorded about")
