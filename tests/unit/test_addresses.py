"""Address normalising, list patterns and confirm addresses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crtool import addresses
from crtool.errors import UsageError


@pytest.mark.parametrize(("text", "kind", "key", "shown"), [
    ("bob@example.com", "exact", "bob@example.com", "bob@example.com"),
    ("Bob@Example.COM", "exact", "bob@example.com", "bob@example.com"),
    ("@example.com", "domain", "@example.com", "@example.com"),
    ("*@Example.com", "domain", "@example.com", "@example.com"),
    ("*@*.example.com", "subdomains", "*.example.com", "*@*.example.com"),
])
def test_patterns(text: str, kind: str, key: str, shown: str) -> None:
    pattern = addresses.parse_pattern(text)
    assert (pattern.kind, pattern.key, pattern.text) == (kind, key, shown)


@pytest.mark.parametrize("text", ["", "bob", "bob@", "@", "*@*", "b ob@example.com",
                                  "*@*.", "bob@exa*mple.com", "*@x*.example.com",
                                  "bob@example..com", "x" * 300 + "@example.com"])
def test_bad_patterns_are_refused(text: str) -> None:
    with pytest.raises(UsageError):
        addresses.parse_pattern(text)


def test_lookup_keys_cover_every_kind_of_entry() -> None:
    """One IN over these keys finds an exact, a domain or a subdomain entry."""
    assert addresses.lookup_keys("Bob@Mail.Example.COM") == [
        "bob@mail.example.com", "@mail.example.com", "*.example.com", "*.com"]
    assert addresses.lookup_keys("") == []
    assert addresses.lookup_keys("nodomain") == []


@given(st.emails())
def test_every_pattern_form_matches_its_own_address(address: str) -> None:
    local, domain = addresses.split_address(address)
    keys = addresses.lookup_keys(address)
    assert addresses.parse_pattern(f"{local}@{domain}").key in keys
    assert addresses.parse_pattern(f"@{domain}").key in keys
    parent = domain.split(".", 1)[1] if domain.count(".") else None
    if parent:
        assert addresses.parse_pattern(f"*@*.{parent}").key in keys


@pytest.mark.parametrize(("sender", "person"), [
    ("bob@remote.test", "bob@remote.test"),
    ("Bob+News@Remote.TEST", "bob@remote.test"),
    ("bob+a+b@remote.test", "bob@remote.test"),
    ("+bob@remote.test", "+bob@remote.test"),  # nothing before the separator: no sub-address
    ("prvs=1234abcdef=bob@remote.test", "bob@remote.test"),
    ("PRVS=1234ABCDEF=Bob@Remote.test", "bob@remote.test"),
    ("msprvs1=18342f3lPqgqK=bounces-123@remote.test", "bounces-123@remote.test"),
    ("btv1==0123abcd==bob@remote.test", "bob@remote.test"),
    ("prvs=1234abcdef=bob+list@remote.test", "bob@remote.test"),
    ("SRS0=HHHH=TT=orig.test=bob@fwd.test", "bob@orig.test"),
    ("srs0+HHHH=TT=orig.test=bob@fwd.test", "bob@orig.test"),
    ("SRS1=HHHH=fwd1.test==HHHH=TT=orig.test=bob@fwd2.test", "bob@orig.test"),
    ("SRS0=HHHH=TT=orig.test=prvs=1234abcdef=bob@fwd.test", "bob@orig.test"),
    ("SRS0=HHHH=TT=orig.test=a=b@fwd.test", "a=b@orig.test"),
    ("B.o.b@gmail.com", "bob@gmail.com"),
    ("b.o.b+x@googlemail.com", "bob@googlemail.com"),
    # Dots are kept everywhere else: john.smith and johns.mith may be two people.
    ("john.smith@remote.test", "john.smith@remote.test"),
    # Not quite a tag: left as it arrived.
    ("prvs=bob@remote.test", "prvs=bob@remote.test"),
    ("SRS0=HH=TT=bob@fwd.test", "srs0=hh=tt=bob@fwd.test"),
    ("SRS0=HH=TT=not a domain=bob@fwd.test", "srs0=hh=tt=not a domain=bob@fwd.test"),
    ("SRS0=HH=TT=*.evil.test=bob@fwd.test", "srs0=hh=tt=*.evil.test=bob@fwd.test"),
    ("SRS1=HH=fwd1.test=HH=TT=orig.test=bob@fwd.test",
     "srs1=hh=fwd1.test=hh=tt=orig.test=bob@fwd.test"),
    ("*@evil.test", "*@evil.test"),
])
def test_unmangle_finds_the_person_behind_a_tagged_sender(sender: str, person: str) -> None:
    assert addresses.unmangle(sender) == person


def test_subaddress_separators_are_the_owners_choice() -> None:
    assert addresses.unmangle("bob-news@remote.test", "+-") == "bob@remote.test"
    assert addresses.unmangle("bob-news@remote.test") == "bob-news@remote.test"
    assert addresses.unmangle("bob+news@remote.test", "") == "bob+news@remote.test"


def test_lookup_keys_put_the_tagged_form_first_then_the_person() -> None:
    assert addresses.lookup_keys("Bob+x@Mail.Example.COM") == [
        "bob+x@mail.example.com", "bob@mail.example.com", "@mail.example.com",
        "*.example.com", "*.com"]
    # SRS: the forwarder's own domain keys, then the original sender's.
    assert addresses.lookup_keys("SRS0=HHHH=TT=orig.test=bob@fwd.test") == [
        "srs0=hhhh=tt=orig.test=bob@fwd.test", "bob@orig.test", "@fwd.test", "*.test",
        "@orig.test"]


@pytest.mark.parametrize(("sender", "key"), [
    ("*@evil.test", "*@evil.test"),
    ("Bob@Remote.test", "bob@remote.test"),
    ("bob+news@remote.test", "bob@remote.test"),
    ("prvs=1234abcdef=bob@remote.test", "bob@remote.test"),
    # Across domains, the address as it arrived: the forwarder vouches for nothing.
    ("SRS0=HHHH=TT=orig.test=bob@fwd.test", "srs0=hhhh=tt=orig.test=bob@fwd.test"),
    ("", None), ("@evil.test", None), ("*.evil.test", None), ("bob", None),
    ("@x@evil.test", None), ("*@*.evil.test", None),
])
def test_a_confirmed_sender_is_one_exact_entry_never_owner_syntax(sender: str,
                                                                  key: str | None) -> None:
    pattern = addresses.confirmed_pattern(sender)
    if key is None:
        assert pattern is None
        return
    assert pattern is not None and (pattern.kind, pattern.key) == (addresses.EXACT, key)
    # It matches the sender itself and is none of the domain keys of the sender's domain.
    keys = addresses.lookup_keys(sender)
    assert key in keys
    assert key not in addresses.lookup_keys("other@" + addresses.split_address(sender)[1])
    # What the owner sees reads back as the same exact entry (export, then import).
    assert addresses.parse_pattern(pattern.text) == pattern


@pytest.mark.parametrize(("recipient", "token"), [
    ("alice-confirm-abc@example.test", "abc"),
    ("ALICE-CONFIRM-ABC@EXAMPLE.TEST", "abc"),
    ("alice-confirm-@example.test", ""),
    ("alice@example.test", None),
    ("alice-confirm-abc@other.test", None),
    ("bob-confirm-abc@example.test", None),
    ("alice-confirmabc@example.test", None),
])
def test_parse_confirm(recipient: str, token: str | None) -> None:
    assert addresses.parse_confirm(recipient, "alice@example.test", "-") == token


def test_confirm_address_round_trip() -> None:
    address = addresses.confirm_address("alice@example.test", "-", "tok")
    assert address == "alice-confirm-tok@example.test"
    assert addresses.parse_confirm(address, "Alice@Example.test", "-") == "tok"


def test_the_owner_address_knows_its_own_extensions_and_nothing_near_them() -> None:
    owner = addresses.OwnerAddress("Alice@Example.test")
    for own in ("alice@example.test", "ALICE@EXAMPLE.TEST", "alice-news@example.test",
                "alice-confirm-x@example.test", "alice-@example.test"):
        assert owner.is_own(own), own
    for other in ("alicex@example.test", "alic@example.test", "alice-news@other.test",
                  "alice@example.test.evil", "alice+news@example.test", "bob-alice@example.test",
                  "malice-x@example.test", ""):
        assert not owner.is_own(other), other
    assert addresses.OwnerAddress("alice@example.test", "+").is_own("alice+news@example.test")
    assert not addresses.OwnerAddress("alice@example.test", "+").is_own(
        "alice-news@example.test")


def test_the_owner_address_finds_its_action_and_confirm_local_parts() -> None:
    owner = addresses.OwnerAddress("alice@example.test")
    assert owner.action("Alice-Confirm-ABC@example.test") == ("confirm", "abc")
    assert owner.action("alice-release-t@example.test") == ("release", "t")
    assert owner.action("alice-confirm-t@other.test") is None
    assert owner.action("alice@example.test") is None
    # At any domain, for the loop rule: the confirm prefix and nothing shorter or other.
    assert owner.confirm_local("ALICE-confirm-t@other.test")
    assert owner.confirm_local("alice-confirm-@example.test")
    for other in ("alice-confirmt@other.test", "alice-release-t@other.test",
                  "alice-confir-t@other.test", "bob-confirm-t@other.test", "alice@other.test"):
        assert not owner.confirm_local(other), other
    assert addresses.OwnerAddress("alice@example.test", ".").confirm_local(
        "alice.confirm.t@x.test")


def test_the_owner_address_given_to_init_is_a_plain_address() -> None:
    for good in ("alice@example.test", "a.b+c@mail.example-1.test", "x" * 64 + "@h.test",
                 "o'neil@example.test"):
        assert addresses.parse_owner_address(good) == good
    for bad in ("*@example.com", "@example.com", "alice", "alice@", "a..b@example.test",
                ".a@example.test", "x" * 65 + "@h.test", "alice@-bad.test", "alice@bad-.test",
                "alice@exa mple.test", "alice@" + "a" * 64 + ".test",
                "a@" + ("b" * 60 + ".") * 5 + "test"):
        with pytest.raises(UsageError, match="not a plain address"):
            addresses.parse_owner_address(bad)


def test_the_owner_address_may_be_254_characters_and_no_more() -> None:
    base = "a@" + ".".join(["b" * 63] * 3) + "."
    longest = base + "c" * (254 - len(base))
    assert addresses.parse_owner_address(longest) == longest
    with pytest.raises(UsageError):
        addresses.parse_owner_address(longest + "c")


def test_a_refused_pattern_is_named_in_the_error() -> None:
    for text, hint in (("", False), ("a b@x.test", False), ("@*.x.test", False),
                       ("*@*.x*.test", False), ("@x@y.test", False), ("<bob@x.test", True),
                       ("bob@*.x.test", True), ("bob@", True)):
        with pytest.raises(UsageError) as caught:
            addresses.parse_pattern(text)
        assert str(caught.value).startswith(f"not a pattern: {text!r}"), text
        assert ("use bob@example.com, @example.com or *@*.example.com" in str(caught.value)) \
            is hint, text


def test_a_pattern_may_be_254_characters_and_no_more() -> None:
    base = "a@" + ".".join(["b" * 63] * 3) + "."
    longest = base + "c" * (254 - len(base))
    assert addresses.parse_pattern(longest).key == longest
    assert addresses.parse_pattern("@" + longest[2:]).key == "@" + longest[2:]
    with pytest.raises(UsageError):
        addresses.parse_pattern(longest + "c")


@pytest.mark.parametrize(("key", "kind"), [
    ("list:news.example.com", addresses.LIST), ("from:@example.com", addresses.FROM),
    ("glob:bob-*@example.com", addresses.WILDCARD), ("*.example.com", addresses.SUBDOMAINS),
    ("@example.com", addresses.DOMAIN), ("bob@example.com", addresses.EXACT),
    ("*@example.com", addresses.EXACT), ("bob.list:x@example.com", addresses.EXACT)])
def test_a_stored_key_names_its_own_kind(key: str, kind: str) -> None:
    assert addresses.kind_of(key) == kind


@pytest.mark.parametrize(("text", "parts"), [
    ("<Bob@Example.com>", ("Bob", "Example.com")), ("  <bob@x.test>  ", ("bob", "x.test")),
    ("<bob@x.test", ("<bob", "x.test")), ("a@b@x.test", ("a@b", "x.test")),
    ("<>", ("", "")), ("bob", ("bob", "")), ("<bob>", ("bob", ""))])
def test_split_address_drops_one_pair_of_angle_brackets_and_splits_at_the_last_at(
        text: str, parts: tuple[str, str]) -> None:
    assert addresses.split_address(text) == parts


@pytest.mark.parametrize(("sender", "person"), [
    ("b+news@remote.test", "b@remote.test"),  # a one-letter local part keeps its person
    ("+news@remote.test", "+news@remote.test"),  # a separator first is no sub-address
    ("prvs=1234abcdef=SRS0=hh=tt=orig.test=bob@fwd.test", "bob@orig.test"),  # BATV around SRS
    ("nodomain", "nodomain"), ("@remote.test", "@remote.test")])
def test_unmangle_at_the_edges(sender: str, person: str) -> None:
    assert addresses.unmangle(sender) == person


def test_an_exact_entry_may_be_as_long_as_an_address_may_and_no_longer() -> None:
    longest = "b" * (addresses.MAX_ADDRESS - len("@remote.test")) + "@remote.test"
    assert addresses.exact_pattern(longest) == addresses.Pattern(addresses.EXACT, longest)
    assert addresses.exact_pattern("b" + longest) is None
