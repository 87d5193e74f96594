"""Tagged addresses: their text survives any MTA's case, their tokens verify under every key of
the ring and under no other, and each says what it is for."""

from __future__ import annotations

import pytest

from crtool import policy, tags
from crtool.errors import UsageError

OWNER = "alice@example.test"
KEYS = [b"k" * 32]
ROTATED = [b"k" * 32, b"n" * 32]
NOW = 1_800_000_000


def tagged(address: str) -> tags.Tagged:
    found = tags.parse(address, OWNER, "-")
    assert found is not None
    return found


def test_a_dated_address_holds_until_it_expires_in_any_case() -> None:
    address = tags.dated_address(KEYS, OWNER, "-", NOW + 3600)
    assert address.startswith("alice-dated-") and address.endswith("@example.test")
    local = address.split("@")[0]
    assert local == local.lower() and len(local) == len("alice-dated-") + 24
    for seen in (address, address.upper(), address.replace("@example.test", "@EXAMPLE.test")):
        checked = tags.verify(KEYS, OWNER, tagged(seen), "anyone@x.test", NOW)
        assert (checked.status, checked.expires) == (policy.TAG_VALID, NOW + 3600)
    # Clock skew between hosts is allowed, then it is expired; a rotated ring still verifies.
    assert tags.verify(ROTATED, OWNER, tagged(address), "", NOW + 3900).status == "valid"
    assert tags.verify(KEYS, OWNER, tagged(address), "", NOW + 3901).status == "expired"


def test_a_dated_address_whose_expiry_was_changed_reads_as_forged() -> None:
    address = tags.dated_address(KEYS, OWNER, "-", NOW)
    later = tags.dated_address(KEYS, OWNER, "-", NOW + 10**6)
    forged = address[:len("alice-dated-")] + later[len("alice-dated-"):][:8] + \
        address[len("alice-dated-") + 8:]
    assert tags.verify(KEYS, OWNER, tagged(forged), "", NOW).status == "forged"
    assert tags.verify([b"x" * 32], OWNER, tagged(address), "", NOW).status == "forged"
    assert tags.verify(KEYS, "bob@example.test", tagged(address), "", NOW).status == "forged"
    for broken in ("alice-dated-@example.test", "alice-dated-abc@example.test",
                   "alice-dated-" + "1" * 24 + "@example.test"):
        assert tags.verify(KEYS, OWNER, tagged(broken), "", NOW).status == "forged"


def test_a_sender_address_lets_only_its_sender_through() -> None:
    value = tags.sender_value("Bob+news@Remote.test", domain=False)
    assert value == "bob@remote.test"
    address = tags.sender_address(KEYS, OWNER, "-", value)
    for sender in ("bob@remote.test", "BOB@remote.test", "bob+x@remote.test",
                   "prvs=1234567890=bob@remote.test"):
        assert tags.verify(KEYS, OWNER, tagged(address), sender, NOW).status == "valid"
    for sender in ("carol@remote.test", "bob@other.test", ""):
        assert tags.verify(KEYS, OWNER, tagged(address), sender, NOW).status == "wrong_sender"
    domain = tags.sender_address(KEYS, OWNER, "-", tags.sender_value("bob@remote.test", True))
    assert tags.verify(KEYS, OWNER, tagged(domain), "carol@remote.test", NOW).status == "valid"
    assert tags.verify(KEYS, OWNER, tagged(domain), "c@x.remote.test", NOW).status \
        == "wrong_sender"
    with pytest.raises(UsageError):
        tags.sender_value("not an address", domain=False)


def test_a_keyword_address_is_the_same_each_time_and_signs_its_word() -> None:
    address = tags.keyword_address(KEYS, OWNER, "-", tags.keyword_word("Shop"))
    assert address == tags.keyword_address(KEYS, OWNER, "-", "shop")
    found = tagged(address.upper())
    assert (found.kind, found.keyword) == ("keyword", "shop")
    assert tags.verify(ROTATED, OWNER, found, "x@y.test", NOW).status == "valid"
    other = address.replace("-shop-", "-shoe-")
    assert tags.verify(KEYS, OWNER, tagged(other), "x@y.test", NOW).status == "forged"
    for word in ("", "a-b", "a b", "a+b", "x" * 33, "a..b", ".a"):
        with pytest.raises(UsageError):
            tags.keyword_word(word)


def test_only_the_owners_own_tagged_addresses_are_recognised() -> None:
    assert tags.parse("alice@example.test", OWNER, "-") is None
    assert tags.parse("alice-confirm-abc@example.test", OWNER, "-") is None
    assert tags.parse("alice-dated-abc@other.test", OWNER, "-") is None
    assert tags.parse("bob-dated-abc@example.test", OWNER, "-") is None
    assert tags.parse("alice+dated+abc@example.test", OWNER, "+") == tags.Tagged("dated", "abc")


def test_an_address_longer_than_sixty_four_characters_is_refused() -> None:
    long_owner = "a" * 30 + "@example.test"
    with pytest.raises(UsageError, match="local part"):
        tags.keyword_address(KEYS, long_owner, "-", "averylongkeyword")
