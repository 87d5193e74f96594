"""The richer list entries, and how one message is matched against all kinds without a scan.

Besides the address forms of addresses.py an entry can be
- `list:<list-id>`: matches the id in the message's `List-Id` header (RFC 2919), any case;
- a wildcard in the local part, `bob-*@example.com` (`*` any run of characters, `?` one);
- `from:<pattern>`: any of the other address forms, matched against the `From:` header's
  address instead of the envelope sender (list posts, forwarders). A whitelist `from:` entry
  never counts when the owner's MTA says DMARC failed for the From: domain: the header is
  then anybody's word.

How a look-up stays indexed. Exact, domain, list and `from:` entries are found by equality on
their stored key, as before: the message gives a handful of keys that could match (the
sender, its domain and parent domains, `list:<id>`, `from:<address>` and its domains). A
wildcard cannot be found by equality on its key, so each wildcard entry also stores a
*probe*: the literal domain it is for (`@example.com`, or `from:@example.com` for a `from:`
wildcard). The message gives the probes it could match (its envelope domains and its From:
domain), and one statement - a UNION ALL of the key look-up and the probe look-up, both
equality look-ups on an index - returns the exact hits and the wildcard candidates of those
domains only. The candidates are matched here, in Python. The cost is the same with ten
entries or a million, hits or misses; it grows only with the number of wildcard entries
written for one and the same domain, which is what the owner typed by hand.

Pure functions only: the store runs the statement, policy makes the decision.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from crtool import addresses
from crtool.addresses import (
    FROM,
    FROM_PREFIX,
    GLOB_PREFIX,
    LIST,
    LIST_PREFIX,
    RESERVED_PREFIXES,
    WILDCARD,
    Pattern,
)
from crtool.errors import UsageError
from crtool.message import Facts
from crtool.policy import BLACK, LIST_KINDS, Listing, ListKind

# A List-Id's id (RFC 2919: a dot-atom); kept to what any list manager writes.
_LIST_ID = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_WILD_LOCAL = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~.-]+")
MAX_LIST_ID = 250


def parse_entry(text: str) -> Pattern:
    """What the owner typed, in any form: the forms of addresses.parse_pattern, `list:ID`,
    a wildcard local part, `from:PATTERN`, or a quoted local part (`"bob*"@x.test`, exact).
    UsageError for anything else."""
    raw = text.strip()
    lowered = raw.lower()
    if lowered.startswith(LIST_PREFIX):
        list_id = list_id_of(raw[len(LIST_PREFIX):])
        if not list_id:
            raise UsageError(f"not a list id: {text!r} (use list:debian-devel.lists.debian.org)")
        return Pattern(LIST, LIST_PREFIX + list_id)
    if lowered.startswith(FROM_PREFIX):
        inner = _address_entry(raw[len(FROM_PREFIX):], text)
        return Pattern(FROM, FROM_PREFIX + inner.key)
    return _address_entry(raw, text)


def _address_entry(raw: str, text: str) -> Pattern:
    local, domain = addresses.split_address(raw.lower())
    if len(local) > 2 and local.startswith('"') and local.endswith('"'):
        # A quoted local part is a mailbox, never a wildcard: "bob*"@x.test is that sender.
        found = addresses.exact_pattern(f"{local[1:-1]}@{domain}")
        if found is None:
            raise UsageError(f"not a pattern: {text!r}")
        return found
    if ("*" in local or "?" in local) and local != "*" and domain and not domain.startswith("*"):
        if (not _WILD_LOCAL.fullmatch(local) or len(raw) > addresses.MAX_ADDRESS
                or addresses.exact_pattern(f"x@{domain}") is None):
            raise UsageError(f"not a pattern: {text!r} (a wildcard is bob-*@example.com)")
        return Pattern(WILDCARD, f"{GLOB_PREFIX}{local}@{domain}")
    found = addresses.parse_pattern(raw)
    if found.key.startswith(RESERVED_PREFIXES):
        raise UsageError(f"not a pattern: {text!r}")
    return found


def list_id_of(value: str) -> str:
    """The id of a List-Id header (`Debian Devel <debian-devel.lists.debian.org>`) or of what
    the owner typed (`<id>` or `id`), lowercased; "" when there is none."""
    value = value.strip()
    start = value.rfind("<")
    if start >= 0:
        end = value.find(">", start)
        value = value[start + 1:end if end >= 0 else len(value)]
    value = value.strip().lower()
    if len(value) > MAX_LIST_ID or not _LIST_ID.fullmatch(value):
        return ""
    return value


def probe_of(key: str) -> str | None:
    """The indexed probe a stored key needs besides itself: a wildcard's literal domain
    (`@example.com`; `from:@example.com` for a `from:` wildcard); None for every other key,
    which equality on the key finds."""
    prefix = ""
    if key.startswith(FROM_PREFIX):
        prefix, key = FROM_PREFIX, key[len(FROM_PREFIX):]
    if not key.startswith(GLOB_PREFIX):
        return None
    return prefix + "@" + addresses.split_address(key)[1]


@lru_cache(maxsize=1024)
def _glob(local: str) -> re.Pattern[str]:
    parts = ["." if c == "?" else ".*" if c == "*" else re.escape(c) for c in local]
    return re.compile("".join(parts), re.DOTALL)


def glob_matches(key: str, address: str) -> bool:
    """Whether the wildcard key (`glob:bob-*@example.com`) matches a lowercased address."""
    pattern_local, pattern_domain = addresses.split_address(key[len(GLOB_PREFIX):])
    local, domain = addresses.split_address(address)
    return domain == pattern_domain and _glob(pattern_local).fullmatch(local) is not None


def _literal(key: str) -> int:
    return sum(c not in "*?" for c in addresses.split_address(key)[0])


@dataclass(frozen=True)
class Query:
    """What one message could match: equality keys and wildcard probes, and what to check the
    wildcard candidates against."""

    keys: list[str]
    probes: list[str]
    envelope: list[str] = field(default_factory=list)  # the sender as it came and unmangled
    envelope_domains: list[str] = field(default_factory=list)
    from_address: str = ""
    from_domains: list[str] = field(default_factory=list)
    list_key: str = ""


def _safe(key: str) -> bool:
    # A sender whose local part is `list:…` cannot match a list entry by its text.
    return not key.startswith(RESERVED_PREFIXES)


def query(sender: str, facts: Facts | None, separators: str = "+") -> Query:
    """The keys and probes of one message: its envelope sender, and with `facts` its From:
    address and List-Id."""
    envelope_keys = [k for k in addresses.lookup_keys(sender, separators) if _safe(k)] \
        if sender else []
    exact = [k for k in envelope_keys if "@" in k and not k.startswith("@")]
    domains = [k for k in envelope_keys if k not in exact]
    probes = list(dict.fromkeys("@" + addresses.split_address(k)[1] for k in exact))
    keys = list(envelope_keys)
    from_address = ""
    from_domains: list[str] = []
    list_key = ""
    if facts is not None:
        candidate = facts.from_address
        if candidate and _safe(candidate) and addresses.exact_pattern(candidate) is not None:
            from_address = addresses.normalize_address(candidate)
            domain = addresses.split_address(from_address)[1]
            from_domains = addresses.domain_keys(domain)
            keys += [FROM_PREFIX + from_address] + [FROM_PREFIX + k for k in from_domains]
            probes.append(FROM_PREFIX + "@" + domain)
        list_id = list_id_of(facts.get("list-id") or "")
        if list_id:
            list_key = LIST_PREFIX + list_id
            keys.append(list_key)
    return Query(keys=list(dict.fromkeys(keys)), probes=probes, envelope=exact,
                 envelope_domains=domains, from_address=from_address,
                 from_domains=from_domains, list_key=list_key)


def _rank(q: Query, key: str) -> int | None:
    """How specific a matching key is (higher wins), or None when it does not match: the
    sender's own address, a wildcard for it, the From: address, a From: wildcard, the list,
    then the sender's domains, then the From: domains."""
    if key in q.envelope:
        return 1000 - q.envelope.index(key)
    if key.startswith(GLOB_PREFIX):
        if any(glob_matches(key, address) for address in q.envelope):
            return 900 + min(_literal(key[len(GLOB_PREFIX):]), 64)
        return None
    if key.startswith(FROM_PREFIX):
        inner = key[len(FROM_PREFIX):]
        if inner == q.from_address:
            return 800
        if inner.startswith(GLOB_PREFIX):
            if q.from_address and glob_matches(inner, q.from_address):
                return 700 + min(_literal(inner[len(GLOB_PREFIX):]), 64)
            return None
        if inner in q.from_domains:
            return 400 - q.from_domains.index(inner)
        return None
    if key == q.list_key and key:
        return 600
    if key in q.envelope_domains:
        return 500 - q.envelope_domains.index(key)
    return None


def decide(rows: Iterable[tuple[str, str]], q: Query, from_trusted: bool = True) -> Listing | None:
    """The entry that decides, among the rows the statement returned: the most specific that
    matches wins, and on a tie the blacklist does. A whitelist `from:` entry is passed over
    when the From: header is not to be trusted (`from_trusted` False: DMARC failed)."""
    best: tuple[int, int, Listing] | None = None
    for list_name, key in rows:
        if list_name not in LIST_KINDS:  # a list a newer version keeps decides nothing
            continue
        rank = _rank(q, key)
        if rank is None:
            continue
        if key.startswith(FROM_PREFIX) and list_name != BLACK and not from_trusted:
            continue
        candidate = (rank, 1 if list_name == BLACK else 0)
        if best is None or candidate > best[:2]:
            best = (*candidate, Listing(ListKind(list_name), key))
    return best[2] if best else None


def shown(key: str) -> str:
    """A stored key as the owner writes it."""
    return Pattern(addresses.kind_of(key), key).text


__all__ = ["FROM", "LIST", "WILDCARD", "Query", "decide", "parse_entry", "probe_of", "query"]
