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


def test_specificity_orders_exact_over_domain_over_subdomains() -> None:
    exact, domain, sub = "a@x.example.com", "@x.example.com", "*.x.example.com"
    assert addresses.specificity(exact) > addresses.specificity(domain)
    assert addresses.specificity(domain) > addresses.specificity(sub)
    assert addresses.specificity("*.x.example.com") > addresses.specificity("*.example.com")


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
