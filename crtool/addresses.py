"""Addresses and list patterns: normalising them, and building and parsing confirm addresses.

Every comparison of addresses goes through here, so that case, angle brackets and patterns are
treated alike by the delivery path, the lists and the CLI. Pure functions only.
"""

from __future__ import annotations

from dataclasses import dataclass

from crtool.errors import UsageError

EXACT = "exact"
DOMAIN = "domain"
SUBDOMAINS = "subdomains"

CONFIRM_WORD = "confirm"
# The owner's own commands by mail, listed in the digest: release one held message, or accept
# (release all held from one sender and whitelist him).
RELEASE_WORD = "release"
ACCEPT_WORD = "accept"
ACTION_WORDS = (CONFIRM_WORD, RELEASE_WORD, ACCEPT_WORD)
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


def action_prefix(owner_address: str, delimiter: str, word: str = CONFIRM_WORD) -> str:
    """"alice-confirm-" for alice@example.test: what every such local part starts with."""
    local, _ = split_address(owner_address)
    return f"{local}{delimiter}{word}{delimiter}".lower()


def confirm_prefix(owner_address: str, delimiter: str) -> str:
    return action_prefix(owner_address, delimiter, CONFIRM_WORD)


def action_address(owner_address: str, delimiter: str, word: str, token: str) -> str:
    """alice-<word>-<token>@example.test (word: confirm, release or accept)."""
    local, domain = split_address(owner_address)
    return f"{local}{delimiter}{word}{delimiter}{token}@{domain}"


def confirm_address(owner_address: str, delimiter: str, token: str) -> str:
    """alice-confirm-<token>@example.test."""
    return action_address(owner_address, delimiter, CONFIRM_WORD, token)


def parse_action(recipient: str, owner_address: str, delimiter: str) -> tuple[str, str] | None:
    """(word, token) if `recipient` is one of the owner's confirm, release or accept
    addresses, else None.

    Case is ignored everywhere, since MTAs lowercase addresses on the way (Postfix does).
    Such an address with an empty or malformed token still counts as one: the caller
    rejects the token, so such mail is never mistaken for ordinary mail and held.
    """
    local, domain = split_address(recipient)
    _, owner_domain = split_address(owner_address)
    if domain.lower() != owner_domain.lower():
        return None
    for word in ACTION_WORDS:
        prefix = action_prefix(owner_address, delimiter, word)
        if local.lower().startswith(prefix):
            return word, local[len(prefix):].lower()
    return None


def parse_confirm(recipient: str, owner_address: str, delimiter: str) -> str | None:
    """The token text if `recipient` is one of the owner's confirm addresses, else None."""
    found = parse_action(recipient, owner_address, delimiter)
    if found is None or found[0] != CONFIRM_WORD:
        return None
    return found[1]
