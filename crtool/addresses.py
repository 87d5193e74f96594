"""Addresses and list patterns: normalising them, and building and parsing confirm addresses.

Every comparison of addresses goes through here, so that case, angle brackets and patterns are
treated alike by the delivery path, the lists and the CLI. Pure functions only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from crtool.errors import UsageError

EXACT = "exact"
DOMAIN = "domain"
SUBDOMAINS = "subdomains"

CONFIRM_WORD = "confirm"
# RFC 5321 caps an address at 254 octets in practice; longer text is no address to list.
MAX_ADDRESS = 254


def split_address(address: str) -> tuple[str, str]:
    """("bob", "example.com") for "bob@example.com"; the domain is the part after the last @."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain


# RFC 5322 atext without "*" and "?", which crtool's patterns use as wildcards.
_OWNER_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'+/=^_`{|}~-]+(\.[A-Za-z0-9!#$%&'+/=^_`{|}~-]+)*")
_DOMAIN_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def parse_owner_address(text: str) -> str:
    """The owner's own address as given to `init`: a plain addr-spec (dot-atom local part of at
    most 64 characters, a host name), or UsageError. A pattern such as `*@example.com` is
    refused: every confirm address and every row is built from this one address."""
    local, at, domain = text.rpartition("@")
    if (not at or len(text) > MAX_ADDRESS or len(local) > 64
            or not _OWNER_LOCAL.fullmatch(local)
            or not all(_DOMAIN_LABEL.fullmatch(label) for label in domain.split("."))):
        raise UsageError(f"not a plain address: {text!r} (use e.g. alice@example.test)")
    return text


def normalize_address(address: str) -> str:
    """The key of an address: lowercased whole, since local parts are compared without case."""
    local, domain = split_address(address)
    if not domain:
        return local.lower()
    return f"{local}@{domain}".lower()


def _valid_domain(domain: str) -> bool:
    labels = domain.split(".")
    return bool(domain) and all(labels) and not any(c.isspace() or c in "@<>" for c in domain)


@dataclass(frozen=True)
class Pattern:
    """A whitelist or blacklist entry: its kind and the key it is stored and looked up under."""

    kind: str
    key: str

    @property
    def text(self) -> str:
        """How the owner sees it: bob@example.com, @example.com or *@*.example.com."""
        if self.kind == EXACT:
            return self.key
        if self.kind == DOMAIN:
            return self.key
        return "*@" + self.key


def parse_pattern(text: str) -> Pattern:
    """Parse what the owner typed; UsageError for anything that is not one of the three forms.

    Keys are built so that one indexed equality look-up finds each kind: "bob@example.com",
    "@example.com" and "*.example.com" cannot collide with each other.
    """
    raw = text.strip()
    if not raw or len(raw) > MAX_ADDRESS or any(c.isspace() for c in raw):
        raise UsageError(f"not a pattern: {text!r}")
    lowered = raw.lower()
    if lowered.startswith("*@*."):
        domain = lowered[4:]
        if not _valid_domain(domain) or "*" in domain:
            raise UsageError(f"not a pattern: {text!r}")
        return Pattern(SUBDOMAINS, "*." + domain)
    if lowered.startswith("*@") or lowered.startswith("@"):
        domain = lowered.split("@", 1)[1]
        if not _valid_domain(domain) or "*" in domain:
            raise UsageError(f"not a pattern: {text!r}")
        return Pattern(DOMAIN, "@" + domain)
    local, domain = split_address(lowered)
    # "*" is legal in a local part (RFC 5322 atext); only the domain forms use it as a wildcard.
    if not local or not _valid_domain(domain) or "*" in domain or "<" in local:
        raise UsageError(f"not a pattern: {text!r} (use bob@example.com, @example.com "
                         "or *@*.example.com)")
    return Pattern(EXACT, f"{local}@{domain}")


def lookup_keys(address: str) -> list[str]:
    """Every list key that would match `address`, most specific first.

    For bob@a.b.example.com: the address itself, "@a.b.example.com", then the subdomain keys
    "*.b.example.com", "*.example.com" and "*.com". A look-up is one indexed IN over these.
    """
    key = normalize_address(address)
    local, domain = split_address(key)
    if not domain or not local:
        return []
    keys = [key, "@" + domain]
    labels = domain.split(".")
    keys.extend("*." + ".".join(labels[i:]) for i in range(1, len(labels)))
    return keys


def specificity(key: str) -> int:
    """How closely a stored key fits: an exact address beats any domain, a longer domain a
    shorter one, and a domain itself beats the same suffix as a subdomain pattern."""
    if key.startswith("@"):
        return 2 * len(key)
    if key.startswith("*."):
        return 2 * len(key) - 3
    return 10_000


def confirm_prefix(owner_address: str, delimiter: str) -> str:
    """"alice-confirm-" for alice@example.test: what every confirm local part starts with."""
    local, _ = split_address(owner_address)
    return f"{local}{delimiter}{CONFIRM_WORD}{delimiter}".lower()


def confirm_address(owner_address: str, delimiter: str, token: str) -> str:
    """alice-confirm-<token>@example.test."""
    local, domain = split_address(owner_address)
    return f"{local}{delimiter}{CONFIRM_WORD}{delimiter}{token}@{domain}"


def parse_confirm(recipient: str, owner_address: str, delimiter: str) -> str | None:
    """The token text if `recipient` is one of the owner's confirm addresses, else None.

    Case is ignored everywhere, since MTAs lowercase addresses on the way (Postfix does).
    A confirm address with an empty or malformed token still counts as one: the caller
    rejects the token, so such mail is never mistaken for ordinary mail and held.
    """
    local, domain = split_address(recipient)
    _, owner_domain = split_address(owner_address)
    if domain.lower() != owner_domain.lower():
        return None
    prefix = confirm_prefix(owner_address, delimiter)
    if not local.lower().startswith(prefix):
        return None
    return local[len(prefix):].lower()
