"""The richer entries (list:, wildcards, from:) as the owner types them, and how one message is
matched: the most specific matching entry wins, a wildcard only matches its own domain, and a
whitelist `from:` entry is passed over when DMARC failed."""

from __future__ import annotations

import pytest

from crtool import addresses, entries, policy
from crtool.errors import UsageError
from crtool.message import parse_head


@pytest.mark.parametrize(("text", "kind", "key", "shown"), [
    ("list:<Debian-Devel.lists.debian.org>", "list", "list:debian-devel.lists.debian.org",
     "list:debian-devel.lists.debian.org"),
    ("list:announce.lists.test", "list", "list:announce.lists.test", "list:announce.lists.test"),
    ("Bob-*@Example.COM", "wildcard", "glob:bob-*@example.com", "bob-*@example.com"),
    ("b?b@example.com", "wildcard", "glob:b?b@example.com", "b?b@example.com"),
    ("from:carol@x.test", "from", "from:carol@x.test", "from:carol@x.test"),
    ("from:@x.test", "from", "from:@x.test", "from:@x.test"),
    ("from:*@*.x.test", "from", "from:*.x.test", "from:*@*.x.test"),
    ("from:*-bot@x.test", "from", "from:glob:*-bot@x.test", "from:*-bot@x.test"),
    ('"odd*"@z.test', "exact", "odd*@z.test", '"odd*"@z.test'),
    ("*@example.com", "domain", "@example.com", "@example.com"),
    ("*@*.example.com", "subdomains", "*.example.com", "*@*.example.com"),
    ("bob@example.com", "exact", "bob@example.com", "bob@example.com"),
])
def test_every_form_parses_and_reads_back(text: str, kind: str, key: str, shown: str) -> None:
    pattern = entries.parse_entry(text)
    assert (pattern.kind, pattern.key, pattern.text) == (kind, key, shown)
    assert addresses.kind_of(pattern.key) == kind
    assert entries.parse_entry(pattern.text) == pattern


@pytest.mark.parametrize("text", [
    "list:", "list:has space", "list:a@b.test", "from:", "from:list:x.test", "bob-*@*.x.test",
    "b[o]b*@x.test", "*@", "from:from:a@b.test", "glob:x@y.test",
])
def test_what_is_no_entry_is_refused(text: str) -> None:
    with pytest.raises(UsageError):
        entries.parse_entry(text)


@pytest.mark.parametrize(("key", "probe"), [
    ("glob:bob-*@example.com", "@example.com"),
    ("from:glob:*-bot@x.test", "from:@x.test"),
    ("bob@example.com", None), ("@example.com", None), ("list:a.b", None),
    ("from:carol@x.test", None),
])
def test_only_wildcards_have_a_probe(key: str, probe: str | None) -> None:
    assert entries.probe_of(key) == probe


def _query(sender: str, head: str = "From: x@else.test\n") -> entries.Query:
    return entries.query(sender, parse_head(head.encode() + b"Subject: s\n\nbody\n"))


def test_a_message_asks_for_its_keys_and_probes() -> None:
    q = _query("prvs=1234abcdef=bob+x@A.example.com",
               "From: Carol <carol@x.test>\nList-Id: <l.lists.test>\n")
    assert q.keys[:2] == ["prvs=1234abcdef=bob+x@a.example.com", "bob@a.example.com"]
    assert "list:l.lists.test" in q.keys
    assert "from:carol@x.test" in q.keys and "from:@x.test" in q.keys
    assert q.probes == ["@a.example.com", "from:@x.test"]


def test_a_sender_that_spells_a_reserved_key_matches_nothing_by_it() -> None:
    q = _query('list:x.test@evil.test', "From: a@b.test\n")
    assert not any(k.startswith("list:x.test") for k in q.keys)


def test_a_wildcard_matches_only_its_own_domain_and_pattern() -> None:
    assert entries.glob_matches("glob:bob-*@example.com", "bob-news@example.com")
    assert entries.glob_matches("glob:b?b@example.com", "bob@example.com")
    assert not entries.glob_matches("glob:b?b@example.com", "boob@example.com")
    assert not entries.glob_matches("glob:bob-*@example.com", "bob-news@example.org")
    assert not entries.glob_matches("glob:bob.*@example.com", "bobx@example.com")


def test_the_most_specific_entry_wins_and_the_blacklist_on_a_tie() -> None:
    q = _query("bob-news@example.com", "From: carol@x.test\nList-Id: <l.test>\n")
    white, black = policy.WHITE, policy.BLACK
    rows = [(white, "@example.com"), (black, "glob:bob-*@example.com")]
    assert entries.decide(rows, q) == policy.Listing(black, "glob:bob-*@example.com")
    rows += [(white, "bob-news@example.com")]
    assert entries.decide(rows, q) == policy.Listing(white, "bob-news@example.com")
    # A longer literal is more specific than a shorter one.
    rows = [(white, "glob:*@example.com"), (black, "glob:bob-n*@example.com")]
    assert entries.decide(rows, q).list_name == black  # type: ignore[union-attr]
    # The list entry beats the sender's domain, a From: entry beats the list.
    rows = [(black, "@example.com"), (white, "list:l.test")]
    assert entries.decide(rows, q) == policy.Listing(white, "list:l.test")
    rows += [(black, "from:carol@x.test")]
    assert entries.decide(rows, q) == policy.Listing(black, "from:carol@x.test")
    # A candidate the probe found that does not match is no match.
    assert entries.decide([(white, "glob:alice-*@example.com")], q) is None


def test_a_from_entry_does_not_whitelist_when_dmarc_failed() -> None:
    q = _query("bounce@lists.test", "From: carol@x.test\n")
    rows = [(policy.WHITE, "from:carol@x.test")]
    assert entries.decide(rows, q, from_trusted=True) is not None
    assert entries.decide(rows, q, from_trusted=False) is None
    # A blacklist from: entry still counts: refusing mail is never a forger's gain.
    rows = [(policy.BLACK, "from:carol@x.test")]
    assert entries.decide(rows, q, from_trusted=False) is not None


@pytest.mark.parametrize(("value", "expected"), [
    ("Debian Devel <debian-devel.lists.debian.org>", "debian-devel.lists.debian.org"),
    ("<X.Y>", "x.y"), ("x.y", "x.y"), ("", ""), ("a b", ""), ("<a@b>", ""),
    ("Odd (comment) <list.example.com>", "list.example.com"),
])
def test_list_ids(value: str, expected: str) -> None:
    assert entries.list_id_of(value) == expected
