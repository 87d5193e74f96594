"""The decision core: what to do with one message, as a pure function of values.

No files, no database, no clock: the service looks up lists and counts and passes them in, so
every rule can be tested from a table. The rules that keep crtool from ever being a backscatter
source (RFC 3834, RFC 5321 §4.5.5, MTA.md "Before any automatic reply") are a table of named
predicates; the first that matches is the reason the held message gets no challenge.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from crtool import addresses
from crtool.message import Facts

WHITE = "white"
BLACK = "black"


class Action(enum.Enum):
    CONFIRM = "confirm"  # a reply to a confirm address
    ACCEPT = "accept"  # whitelisted
    BLACKLISTED = "blacklisted"
    CHALLENGE = "challenge"  # hold and send one challenge
    HOLD = "hold"  # hold silently; `reason` says why no challenge


@dataclass(frozen=True)
class Incoming:
    """What policy knows of one message: the envelope, the header facts, the owner."""

    sender: str
    sender_valid: bool
    recipient: str
    facts: Facts
    owner_address: str
    delimiter: str = "-"
    authserv_id: str = ""


@dataclass(frozen=True)
class Listing:
    """The entry that decides a sender's fate: which list, and the stored key that matched."""

    list_name: str
    key: str


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str = ""
    token: str = ""  # with CONFIRM: the token text as it arrived
    listing: Listing | None = None


def decide_listing(matches: Iterable[tuple[str, str]]) -> Listing | None:
    """The most specific of the (list, key) matches wins; on a tie the blacklist does.

    So `@example.com` whitelisted with `spam@example.com` blacklisted blocks that one sender,
    and `@spam.test` blacklisted with `friend@spam.test` whitelisted lets the friend through.
    """
    best: tuple[int, int, Listing] | None = None
    for list_name, key in matches:
        rank = (addresses.specificity(key), 1 if list_name == BLACK else 0)
        if best is None or rank > best[:2]:
            best = (*rank, Listing(list_name, key))
    return best[2] if best else None


# The suppression rules ---------------------------------------------------------------------

LIST_HEADERS = (
    "list-id", "list-post", "list-unsubscribe", "list-help", "list-subscribe", "list-owner",
    "list-archive", "mailing-list", "x-mailing-list", "x-ml-name", "x-list",
)
BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})
# Headers by which other challenge-response systems and crtool itself mark their challenges.
CHALLENGE_MARKERS = ("x-crtool-challenge", "x-askversion", "x-tmda-confirm")
_NOREPLY = re.compile(r"^(no-?reply|do-?not-?reply|donotreply)([+.\-_].*)?$|[.\-_]no-?reply$")
_AR_RESULT = re.compile(r"\b(spf|dmarc)\s*=\s*([a-z]+)", re.IGNORECASE)


def _local(address: str) -> str:
    return addresses.split_address(address)[0].lower()


def _auto_submitted(m: Incoming) -> bool:
    value = m.facts.get("auto-submitted")
    return value is not None and value.strip().split(";")[0].strip().lower() != "no"


def _response_suppressed(m: Incoming) -> bool:
    value = m.facts.get("x-auto-response-suppress")
    return value is not None and value.strip().lower() not in ("", "none")


def _bulk_precedence(m: Incoming) -> bool:
    value = (m.facts.get("precedence") or "").strip().lower()
    return value in BULK_PRECEDENCE


def _own_address(m: Incoming) -> bool:
    """The owner's own address or any extension of it: a challenge would go to ourselves."""
    owner = addresses.normalize_address(m.owner_address)
    sender = addresses.normalize_address(m.sender)
    if sender == owner:
        return True
    owner_local, owner_domain = addresses.split_address(owner)
    local, domain = addresses.split_address(sender)
    return domain == owner_domain and local.startswith(owner_local + m.delimiter)


def forged_by_authentication(facts: Facts, authserv_id: str) -> str | None:
    """"spf_fail" or "dmarc_fail" when the owner's own MTA says so, else None.

    Only Authentication-Results headers carrying the owner's authserv-id count: any other
    could have been written by the sender. No DNS is looked up here.
    """
    if not authserv_id:
        return None
    for value in facts.all("authentication-results"):
        served_by = value.split(";", 1)[0].strip().split()
        if not served_by or served_by[0].lower() != authserv_id.lower():
            continue
        for method, result in _AR_RESULT.findall(value):
            if result.lower() in ("fail", "permerror") and method.lower() in ("spf", "dmarc"):
                return f"{method.lower()}_fail"
    return None


Rule = Callable[[Incoming], bool]

# One row per rule, in the order they are tried. The name is the reason recorded for the
# hold and counted by `stats`.
SUPPRESSION_RULES: tuple[tuple[str, Rule], ...] = (
    ("null_sender", lambda m: m.sender == ""),
    ("double_bounce", lambda m: m.sender == "#@[]"),
    ("mailer_daemon", lambda m: _local(m.sender) in ("mailer-daemon", "postmaster")),
    ("invalid_sender", lambda m: not m.sender_valid),
    ("own_address", _own_address),
    ("to_confirm_address", lambda m: addresses.is_confirm_address(
        m.sender, m.owner_address, m.delimiter)),
    ("auto_submitted", _auto_submitted),
    ("response_suppressed", _response_suppressed),
    ("challenge", lambda m: any(m.facts.has(h) for h in CHALLENGE_MARKERS)),
    ("list_headers", lambda m: any(m.facts.has(h) for h in LIST_HEADERS)),
    ("bulk_precedence", _bulk_precedence),
    ("list_sender", lambda m: (
        _local(m.sender).startswith("owner-") or _local(m.sender).endswith("-request")
        or _local(m.sender) in ("majordomo", "listserv", "mailman", "ezmlm"))),
    ("noreply_sender", lambda m: bool(_NOREPLY.search(_local(m.sender)))),
    ("no_header_block", lambda m: not m.facts.has_header_block),
    ("spf_fail", lambda m: forged_by_authentication(m.facts, m.authserv_id) == "spf_fail"),
    ("dmarc_fail", lambda m: forged_by_authentication(m.facts, m.authserv_id) == "dmarc_fail"),
)

SUPPRESSION_REASONS = tuple(name for name, _ in SUPPRESSION_RULES) + (
    "sender_rate_limit", "global_rate_limit",
)


def suppression_reason(message: Incoming) -> str | None:
    """The first rule that forbids a challenge to this message's sender, or None."""
    for name, rule in SUPPRESSION_RULES:
        if rule(message):
            return name
    return None


def classify(message: Incoming, listing: Listing | None) -> Verdict:
    """Decide one message. Rate limits come after, from `rate_limit_reason`, since they need
    counts that are only worth reading for a message that would be challenged."""
    token = addresses.parse_confirm(message.recipient, message.owner_address, message.delimiter)
    if token is not None:
        return Verdict(Action.CONFIRM, token=token)
    if listing is not None and listing.list_name == BLACK:
        return Verdict(Action.BLACKLISTED, reason="blacklisted", listing=listing)
    if listing is not None and listing.list_name == WHITE:
        return Verdict(Action.ACCEPT, reason="whitelisted", listing=listing)
    reason = suppression_reason(message)
    if reason is not None:
        return Verdict(Action.HOLD, reason=reason)
    return Verdict(Action.CHALLENGE, reason="challenged")


@dataclass(frozen=True)
class ChallengeCounts:
    """Challenges already recorded: to this sender within the window, and in the last hour."""

    to_sender_in_window: int
    in_last_hour: int


def rate_limit_reason(counts: ChallengeCounts, per_sender: int, per_hour: int) -> str | None:
    if counts.to_sender_in_window >= per_sender:
        return "sender_rate_limit"
    if counts.in_last_hour >= per_hour:
        return "global_rate_limit"
    return None


def confirm_reply_refusal(facts: Facts, sender: str) -> str | None:
    """Why a reply to a confirm address must not count as a human's answer, or None.

    A vacation program at a forged sender's address answers the challenge by itself; letting
    that release the message would whitelist the forger. So automated replies confirm nothing.
    """
    if sender in ("", "#@[]"):
        return "confirm_from_null_sender"
    probe = Incoming(sender=sender, sender_valid=True, recipient="", facts=facts,
                     owner_address="")
    if _auto_submitted(probe) or _bulk_precedence(probe):
        return "confirm_automated"
    return None
