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
# The richer entries (crtool.entries parses them and matches them against a message).
LIST = "list"  # key "list:<list-id>"
WILDCARD = "wildcard"  # key "glob:bob-*@example.com"
FROM = "from"  # key "from:" + the key of any other address pattern
LIST_PREFIX = "list:"
FROM_PREFIX = "from:"
GLOB_PREFIX = "glob:"
RESERVED_PREFIXES = (LIST_PREFIX, FROM_PREFIX, GLOB_PREFIX)

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
        if self.kind == LIST:
            return self.key
        if self.kind == WILDCARD:
            return self.key[len(GLOB_PREFIX):]
        if self.kind == FROM:
            inner = self.key[len(FROM_PREFIX):]
            return FROM_PREFIX + Pattern(kind_of(inner), inner).text
        if self.kind == EXACT:
            # A sender whose local part has "*" or "?" (an exact entry a confirmation may
            # add) is shown quoted, the same mailbox in RFC 5321, so it reads back as exact.
            local, domain = split_address(self.key)
            return f'"{local}"@{domain}' if "*" in local or "?" in local else self.key
        if self.kind == DOMAIN:
            return self.key
        return "*@" + self.key


def kind_of(key: str) -> str:
    """The kind of a stored key: the forms cannot be mistaken for each other."""
    for prefix, kind in ((LIST_PREFIX, LIST), (FROM_PREFIX, FROM), (GLOB_PREFIX, WILDCARD)):
        if key.startswith(prefix):
            return kind
    if key.startswith("*."):
        return SUBDOMAINS
    return DOMAIN if key.startswith("@") else EXACT


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
    if local == '"*"':
        local = "*"  # "*"@example.com: the mailbox *, as Pattern.text shows it, not the domain
    # "*" is legal in a local part (RFC 5322 atext); only the domain forms use it as a wildcard.
    if not local or not _valid_domain(domain) or "*" in domain or "<" in local:
        raise UsageError(f"not a pattern: {text!r} (use bob@example.com, @example.com "
                         "or *@*.example.com)")
    return Pattern(EXACT, f"{local}@{domain}")


def exact_pattern(address: str) -> Pattern | None:
    """The exact entry for an address as it arrived, never read as owner syntax: a sender
    `*@evil.test` gets the exact key "*@evil.test", which matches that one sender and no
    domain. None when the text has no local part or no plain domain, since its key could
    then collide with a domain ("@x") or subdomain ("*.x") key or never match again."""
    key = normalize_address(address)
    local, domain = split_address(key)
    if (not local or local.startswith("@") or not _valid_domain(domain) or "*" in domain
            or len(key) > MAX_ADDRESS):
        return None
    return Pattern(EXACT, key)


# Senders that rewrite their envelope address per message still name one person: BATV
# (prvs=TAG=local@domain; Barracuda's btv1==TAG==local, Microsoft's msprvs1=TAG=local), SRS
# (SRS0=HH=TT=domain=local@forwarder, SRS1=HH=forwarder==HH=TT=domain=local@forwarder2) and
# sub-addresses (local+anything@domain). Gmail ignores dots in its local parts; no other
# domain is assumed to (john.smith and johns.mith may be two people).
_BATV_PREFIXES = ("prvs=", "msprvs1=", "btv1==")
_SRS_PREFIXES = ("srs0", "srs1")
DOTLESS_DOMAINS = frozenset({"gmail.com", "googlemail.com"})


def _unbatv(local: str) -> str | None:
    lowered = local.lower()
    for prefix in _BATV_PREFIXES:
        if lowered.startswith(prefix):
            separator = "==" if prefix.endswith("==") else "="
            tag, found, rest = local[len(prefix):].partition(separator)
            if found and tag and rest:
                return rest
    return None


def _unsrs(local: str) -> tuple[str, str] | None:
    """(local, domain) of the original sender inside an SRS local part, or None."""
    lowered = local.lower()
    if lowered[:4] not in _SRS_PREFIXES or lowered[4:5] not in ("=", "+", "-"):
        return None
    rest = local[5:]
    if lowered.startswith("srs1"):
        # SRS1=HHH=first-forwarder==HHH=TT=domain=local: the part after "==" is an SRS0 body.
        _, found, rest = rest.partition("==")
        if not found:
            return None
    parts = rest.split("=", 3)
    if len(parts) != 4 or not all(parts) or not _valid_domain(parts[2]) or "*" in parts[2]:
        return None
    return parts[3], parts[2]


def unmangle(address: str, separators: str = "+") -> str:
    """The person behind a BATV, SRS or sub-addressed envelope sender, lowercased:
    "prvs=1234abcdef=Bob+news@X.test" -> "bob@x.test". Anything else comes back normalised.

    The same person then gets one challenge per window and one whitelist look-up, whatever
    tag his MTA or a forwarder added. `separators` is the owner's `subaddress_separators`.
    """
    local, domain = split_address(normalize_address(address))
    if not local or not domain:
        return normalize_address(address)
    for _ in range(4):  # a forwarder may wrap an address that is itself tagged
        inner = _unbatv(local)
        if inner is not None:
            local = inner
            continue
        original = _unsrs(local)
        if original is None:
            break
        local, domain = original
    for index, char in enumerate(local):
        if char in separators and index > 0:
            local = local[:index]
            break
    if domain in DOTLESS_DOMAINS and local.replace(".", ""):
        local = local.replace(".", "")
    return f"{local}@{domain}"


def confirmed_pattern(address: str, separators: str = "+") -> Pattern | None:
    """The exact entry a confirmation (or the owner's release) adds for a held sender.

    The unmangled address when unmangling stays within the sender's own domain (BATV, a
    sub-address, Gmail's dots): that domain delivered the challenge to the person, and the
    next message will carry another tag. Across domains (SRS) the address as it arrived: a
    forwarder's word about another domain proves nothing about who owns it there.
    """
    base = unmangle(address, separators)
    if split_address(base)[1] == split_address(normalize_address(address))[1]:
        return exact_pattern(base)
    return exact_pattern(address)


def domain_keys(domain: str) -> list[str]:
    """The domain key and the subdomain keys that cover `domain`, most specific first."""
    labels = domain.split(".")
    return ["@" + domain] + ["*." + ".".join(labels[i:]) for i in range(1, len(labels))]


def lookup_keys(address: str, separators: str = "+") -> list[str]:
    """Every list key that would match `address`, most specific first (policy ranks a match
    by this order).

    For bob@a.b.example.com: the address itself, "@a.b.example.com", then the subdomain keys
    "*.b.example.com", "*.example.com" and "*.com". For a tagged sender
    (prvs=TAG=bob+x@a.test) the address as it arrived comes first, so an exact entry for the
    tagged form beats one for the person, then the unmangled "bob@a.test"; then the domain
    keys of the envelope's own domain, then those of the unmangled one (they differ only for
    SRS, whose envelope domain is the forwarder's). A look-up is one indexed IN over these.
    """
    key = normalize_address(address)
    local, domain = split_address(key)
    if not domain or not local:
        return []
    base = unmangle(key, separators)
    keys = [key, base, *domain_keys(domain), *domain_keys(split_address(base)[1])]
    return list(dict.fromkeys(keys))


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


@dataclass(frozen=True)
class OwnerAddress:
    """The owner's address as everything that compares mail with it sees it: the address, and
    the delimiter its extensions and its confirm, release and accept addresses are made with.
    One value, built from the settings in one place (`Settings.owner_address`), so a question
    about "the owner's address" has one answer whichever module asks it."""

    address: str
    delimiter: str = "-"

    def is_own(self, sender: str) -> bool:
        """The owner's own address or any extension of it: a challenge would go to ourselves."""
        owner = normalize_address(self.address)
        sender = normalize_address(sender)
        if sender == owner:
            return True
        owner_local, owner_domain = split_address(owner)
        local, domain = split_address(sender)
        return domain == owner_domain and local.startswith(owner_local + self.delimiter)

    def action(self, recipient: str) -> tuple[str, str] | None:
        """(word, token) when `recipient` is one of the owner's confirm, release or accept
        addresses (`parse_action`), else None."""
        return parse_action(recipient, self.address, self.delimiter)

    def confirm_local(self, recipient: str) -> bool:
        """Whether `recipient`'s local part is one of the owner's confirm local parts, at any
        domain."""
        local = split_address(recipient)[0].lower()
        return local.startswith(confirm_prefix(self.address, self.delimiter))

