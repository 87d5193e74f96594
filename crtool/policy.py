"""The decision core: what to do with one message, as a pure function of values.

No files, no database, no clock: the service looks up lists and counts and passes them in, so
every rule can be tested from a table. The rules that keep crtool from ever being a backscatter
source (RFC 3834, RFC 5321 §4.5.5, the practice of TMDA and qconfirm) are a table of named
predicates; the first that matches is the reason the held message gets no challenge.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import assert_never

from crtool import addresses
from crtool.message import Facts


class ListKind(enum.StrEnum):
    """The owner's lists of senders. The value is what the store keeps (address_entries'
    list_name); `command` is the list's name on the command line and on the web pages."""

    WHITE = "white"  # always delivered (unless forged)
    BLACK = "black"  # dropped, or bounced where blacklist_action = "bounce"

    @property
    def command(self) -> str:
        return f"{self.value}list"


WHITE = ListKind.WHITE
BLACK = ListKind.BLACK
LIST_COMMANDS: dict[str, ListKind] = {kind.command: kind for kind in ListKind}
LIST_KINDS = frozenset(kind.value for kind in ListKind)


class Action(enum.Enum):
    CONFIRM = "confirm"  # mail to a confirm, release or accept address
    ACCEPT = "accept"  # whitelisted
    BLACKLISTED = "blacklisted"
    CHALLENGE = "challenge"  # hold and send one challenge
    HOLD = "hold"  # hold silently; `reason` says why no challenge
    DROP = "drop"  # nothing held, nothing sent, never a bounce (a revoked keyword address)


@dataclass(frozen=True)
class Tag:
    """Mail to one of the owner's tagged addresses (tags.py), as the service found it: its
    kind (`dated`, `sender`, `keyword`) and what its token said (a TAG_* status)."""

    kind: str
    status: str


TAG_VALID = "valid"
TAG_EXPIRED = "expired"
TAG_FORGED = "forged"  # malformed, or the signature does not verify under any key
TAG_WRONG_SENDER = "wrong_sender"
TAG_REVOKED = "revoked"


@dataclass(frozen=True)
class Incoming:
    """What policy knows of one message: the envelope, the header facts, the owner."""

    sender: str
    sender_valid: bool
    recipient: str
    facts: Facts
    owner: addresses.OwnerAddress
    authserv_id: str = ""
    # A digest this crtool mailed to its owner, come back (its signed Message-ID verified).
    own_digest: bool = False
    # In-Reply-To or References names a Message-ID the owner sent within `reply_window`.
    reply: bool = False
    # The recipient is one of the owner's tagged addresses; None for any other recipient.
    tag: Tag | None = None
    # The owner's own spam filter marked it (setting `spam_header`, crtool/upstream.py).
    spam_flagged: bool = False
    # An open `crtool expect` window covers its domain (crtool/expect.py).
    expected: bool = False


@dataclass(frozen=True)
class Listing:
    """The entry that decides a sender's fate: which list, and the stored key that matched."""

    list_name: ListKind
    key: str


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str = ""
    token: str = ""  # with CONFIRM: the token text as it arrived
    listing: Listing | None = None


def decide_listing(matches: Iterable[tuple[str, str]], keys: Sequence[str]) -> Listing | None:
    """The most specific of the (list, key) matches wins; on a tie the blacklist does.

    `keys` are the look-up keys of the sender, most specific first (addresses.lookup_keys):
    so `@example.com` whitelisted with `spam@example.com` blacklisted blocks that one sender,
    `@spam.test` blacklisted with `friend@spam.test` whitelisted lets the friend through, and
    an exact entry for `bob+news@x.test` beats one for `bob@x.test`. An entry of a list this
    version does not know (written by a newer one) decides nothing.
    """
    rank_of = {key: len(keys) - index for index, key in enumerate(keys)}
    best: tuple[int, int, Listing] | None = None
    for list_name, key in matches:
        if list_name not in LIST_KINDS:
            continue
        rank = (rank_of.get(key, 0), 1 if list_name == BLACK else 0)
        if best is None or rank > best[:2]:
            best = (*rank, Listing(ListKind(list_name), key))
    return best[2] if best else None


# The suppression rules ---------------------------------------------------------------------

LIST_HEADERS = (
    "list-id", "list-post", "list-unsubscribe", "list-help", "list-subscribe", "list-owner",
    "list-archive", "mailing-list", "x-mailing-list", "x-ml-name", "x-list",
)
BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})
# Headers by which other challenge-response systems and crtool itself mark their challenges.
CHALLENGE_MARKERS = ("x-crtool-challenge", "x-askversion", "x-tmda-confirm")
# Microsoft's X-Auto-Response-Suppress names what kind of automatic answer the sender does not
# want. A challenge is an automatic reply that is not an out-of-office notice: "AutoReply" (and
# "All") forbid it; DR, NDR, RN, NRN and OOF ask for silence of other kinds.
SUPPRESS_AUTOREPLY = frozenset({"all", "autoreply"})
LIST_SENDERS = frozenset({"majordomo", "listserv", "mailman", "ezmlm"})
_NOREPLY = re.compile(
    r"^(no|do[-_.]?not)[-_.]?reply([-+._=].*)?$|[-+._]no[-_.]?reply$")
# The confirm addresses of challenge-response systems (crtool's, TMDA's -confirm-, qconfirm's
# -qconfirm-): mail from one of them is somebody's challenge.
_CONFIRM_LOCAL = re.compile(r"(^|[-+._=])q?confirm[-+._=]")
_COMMENT = re.compile(r"\([^()]*\)")


def _local(address: str) -> str:
    return addresses.split_address(address)[0].lower()


def _domain(address: str) -> str:
    return addresses.split_address(address)[1].lower().rstrip(".")


def _uncommented(value: str) -> str:
    """The value with RFC 5322 comments removed (nested ones too), whitespace collapsed."""
    for _ in range(8):
        stripped = _COMMENT.sub(" ", value)
        if stripped == value:
            break
        value = stripped
    return " ".join(value.split())


def _keyword(facts: Facts, name: str) -> str | None:
    """The first word of a header such as Auto-Submitted or Precedence, lowercased; None when
    the header is absent."""
    value = facts.get(name)
    if value is None:
        return None
    return _uncommented(value).split(";")[0].strip().lower()


def _auto_submitted(m: Incoming) -> bool:
    return _says_auto_submitted(m.facts)


def _says_auto_submitted(facts: Facts) -> bool:
    value = _keyword(facts, "auto-submitted")
    return value is not None and value != "no"


def _response_suppressed(m: Incoming) -> bool:
    value = m.facts.get("x-auto-response-suppress")
    if value is None:
        return False
    words = {w.lower() for w in re.split(r"[\s,;]+", _uncommented(value)) if w}
    return bool(words & SUPPRESS_AUTOREPLY)


def _bulk_precedence(m: Incoming) -> bool:
    return _says_bulk(m.facts)


def _says_bulk(facts: Facts) -> bool:
    return (_keyword(facts, "precedence") or "") in BULK_PRECEDENCE


def _own_address(m: Incoming) -> bool:
    """The owner's own address or any extension of it: a challenge would go to ourselves."""
    return m.owner.is_own(m.sender)


def _to_confirm_address(m: Incoming) -> bool:
    """Sent to one of the owner's confirm local parts at a domain that is not the owner's, so
    it is no confirmation here; it answers a challenge, and answering it back could loop."""
    return m.owner.confirm_local(m.recipient)


def _list_sender(m: Incoming) -> bool:
    local = _local(m.sender)
    return local.startswith("owner-") or local.endswith("-request") or local in LIST_SENDERS


# Authentication-Results (RFC 8601) --------------------------------------------------------------

@dataclass(frozen=True)
class AuthResult:
    """One result of an Authentication-Results header: `spf=fail smtp.mailfrom=x@y.test`."""

    method: str
    result: str
    properties: dict[str, str]


def authentication_results(facts: Facts, authserv_id: str) -> list[AuthResult]:
    """Every result in the Authentication-Results headers written by `authserv_id`.

    Only the owner's own MTA counts: the sender can write any header, and RFC 8601 §5 has the
    receiving MTA remove (or rename) those that carry its own authserv-id. Comments are dropped,
    so text inside parentheses can never pass for a result.
    """
    if not authserv_id:
        return []
    found = []
    for value in facts.all("authentication-results"):
        clean = re.sub(r"\s*=\s*", "=", _uncommented(value))
        served_by, *resinfos = clean.split(";")
        words = served_by.split()
        if not words or words[0].lower() != authserv_id.lower():
            continue
        for resinfo in resinfos:
            words = resinfo.split()
            if not words or "=" not in words[0]:
                continue
            method, _, result = words[0].partition("=")
            properties = {}
            for word in words[1:]:
                name, eq, prop = word.partition("=")
                if eq:
                    properties[name.lower()] = prop.strip('"')
            found.append(AuthResult(method.split("/")[0].lower(), result.lower(), properties))
    return found


def _domain_of(value: str) -> str:
    """The domain of a property value that may be an address (smtp.mailfrom) or a domain."""
    return _domain(value) if "@" in value else value.lower().rstrip(".")


def spf_failed(m: Incoming) -> bool:
    """The owner's MTA says SPF failed for the envelope sender's domain (smtp.mailfrom).

    A result for another identity (smtp.helo, or none named) proves nothing about the
    envelope sender, and softfail, permerror and temperror are no evidence of forgery.
    """
    domain = _domain(m.sender)
    return bool(domain) and any(
        r.method == "spf" and r.result == "fail"
        and _domain_of(r.properties.get("smtp.mailfrom", "")) == domain
        for r in authentication_results(m.facts, m.authserv_id))


def dmarc_failed(m: Incoming) -> bool:
    """The owner's MTA says DMARC failed for the domain in the message's From: (header.from)."""
    domain = _domain(m.facts.from_address)
    return bool(domain) and any(
        r.method == "dmarc" and r.result == "fail"
        and _domain_of(r.properties.get("header.from", "")) == domain
        for r in authentication_results(m.facts, m.authserv_id))


def _dkim_domain(result: AuthResult) -> str:
    """The signing domain of a DKIM result: header.d, else the domain of header.i."""
    if "header.d" in result.properties:
        return result.properties["header.d"].lower().rstrip(".")
    identity = result.properties.get("header.i", "")
    return _domain(identity) if "@" in identity else identity.lower().rstrip(".")


def dkim_passed_for(m: Incoming, domain: str) -> bool:
    """The owner's MTA says a DKIM signature of `domain` or of a parent domain verified.

    A pass for any other domain proves nothing about this one: a forger signs his own mail.
    A parent's key is published by whoever controls the domain itself, so it counts.
    """
    return bool(domain) and any(
        r.method == "dkim" and r.result == "pass"
        and (signer := _dkim_domain(r)) != ""
        and (domain == signer or domain.endswith("." + signer))
        for r in authentication_results(m.facts, m.authserv_id))


def _named_by_forwarder(m: Incoming, listing: Listing) -> str:
    """The original sender's domain when `listing` matched only the address an SRS forwarder
    named (SRS0=HH=TT=domain=local@forwarder), not the envelope's own; else ""."""
    own = addresses.normalize_address(m.sender)
    domain = _domain(own)
    original = _domain(addresses.unmangle(own, ""))
    if original == domain or listing.key == own or listing.key in addresses.domain_keys(domain):
        return ""
    return original


def whitelisted_but_forged(m: Incoming, listing: Listing) -> bool:
    """A whitelisted sender's address on a message its domain disowns: DMARC fails for the
    From: domain, or SPF fails for the envelope domain and no DKIM signature of that domain
    verified (a forwarded message fails SPF but keeps its signature). The SPF a forwarder
    passes says nothing of the sender it names in an SRS address, so a match through that
    name needs a DKIM pass of the named sender's domain. Only the owner's MTA's results count
    (`authserv_id`), so without it nothing is judged forged."""
    if not m.authserv_id:
        return False
    named = _named_by_forwarder(m, listing)
    return (dmarc_failed(m) or (spf_failed(m) and not dkim_passed_for(m, _domain(m.sender)))
            or (named != "" and not dkim_passed_for(m, named)))


@dataclass(frozen=True)
class Rule:
    """One row of the checklist: the reason recorded, the test, and what triggers it."""

    reason: str
    applies: Callable[[Incoming], bool]
    trigger: str


# One row per rule, in the order they are tried; the first that applies is the reason recorded
# for the hold, shown by `pending list` and counted by `stats`. docs/reasons.md is this table
# (tests/unit/test_policy_reasons.py keeps the two equal).
SUPPRESSION_RULES: tuple[Rule, ...] = (
    Rule("spam_flagged", lambda m: m.spam_flagged,
         "the owner's own spam filter marked the message (setting `spam_header`, e.g. "
         "`X-Spam-Flag: YES`, above the owner's MTA's Received line)"),
    Rule("null_sender", lambda m: m.sender == "",
         "the envelope sender is empty: a bounce (RFC 5321 §4.5.5)"),
    Rule("double_bounce", lambda m: m.sender == "#@[]",
         "the envelope sender is `#@[]`: a qmail double bounce"),
    Rule("mailer_daemon", lambda m: _local(m.sender) in ("mailer-daemon", "postmaster"),
         "the sender is `MAILER-DAEMON@…` or `postmaster@…`"),
    Rule("invalid_sender", lambda m: not m.sender_valid,
         "the envelope sender is no plain address a reply could safely go to"),
    Rule("own_address", _own_address,
         "the sender is the owner's own address or one of its extensions"),
    Rule("to_confirm_address", _to_confirm_address,
         "the message is addressed to a confirm address that is not the owner's "
         "(another domain)"),
    Rule("challenge_sender", lambda m: bool(_CONFIRM_LOCAL.search(_local(m.sender))),
         "the sender is a confirm address (`…-confirm-…`, `…-qconfirm-…`): "
         "somebody's challenge"),
    Rule("auto_submitted", _auto_submitted,
         "`Auto-Submitted` is present and not `no` (RFC 3834)"),
    Rule("response_suppressed", _response_suppressed,
         "`X-Auto-Response-Suppress` names `All` or `AutoReply`"),
    Rule("challenge_headers", lambda m: any(m.facts.has(h) for h in CHALLENGE_MARKERS),
         "the message carries a challenge marker (`X-Crtool-Challenge`, `X-ASKVersion`, "
         "`X-TMDA-Confirm`)"),
    Rule("list_headers", lambda m: any(m.facts.has(h) for h in LIST_HEADERS),
         "a `List-*`, `Mailing-List`, `X-Mailing-List`, `X-ML-Name` or `X-List` header"),
    Rule("bulk_precedence", _bulk_precedence, "`Precedence` is `bulk`, `list` or `junk`"),
    Rule("list_sender", _list_sender,
         "the sender is `owner-*`, `*-request`, `majordomo`, `listserv`, `mailman` or `ezmlm`"),
    Rule("noreply_sender", lambda m: bool(_NOREPLY.search(_local(m.sender))),
         "the sender is `noreply`, `no-reply`, `donotreply` or `*-noreply`"),
    Rule("no_header_block", lambda m: not m.facts.has_header_block,
         "the message has no header block at all"),
    Rule("spf_fail", spf_failed,
         "the owner's MTA (`authserv_id`) wrote `spf=fail` for the envelope sender's domain"),
    Rule("dmarc_fail", dmarc_failed,
         "the owner's MTA (`authserv_id`) wrote `dmarc=fail` for the From: domain"),
)

# Why a message from a whitelisted sender is held (without a challenge) instead of delivered.
WHITELIST_HOLD_REASONS: dict[str, str] = {
    "whitelist_forged": "the sender is whitelisted, but the owner's MTA (`authserv_id`) wrote "
                        "`dmarc=fail` for the From: domain, or `spf=fail` for the envelope "
                        "sender's domain with no `dkim=pass` for that domain; or the sender "
                        "is whitelisted only as the original sender an SRS address names, "
                        "and no `dkim=pass` for that sender's domain was written",
}

RATE_LIMIT_RULES: tuple[tuple[str, str], ...] = (
    ("sender_rate_limit",
     "`challenge_limit` challenges (default 1) already went to this sender within "
     "`challenge_window` (default 24 h)"),
    ("global_rate_limit",
     "`challenge_global_limit` challenges (default 30) already went out in the last hour"),
)

# Every reason a held message gets no challenge, in the order they are tried.
SUPPRESSION_REASONS: tuple[str, ...] = tuple(r.reason for r in SUPPRESSION_RULES) + tuple(
    name for name, _ in RATE_LIMIT_RULES)

# Every reason a message is dropped: nothing is held, released or sent (exit "done").
DROP_REASONS: dict[str, str] = {
    "blacklisted": "the sender matches the blacklist (`blacklist_action = \"drop\"`, the "
                   "default; `\"bounce\"` bounces instead)",
    "confirm_from_null_sender": "a reply to a confirm address from a null or `#@[]` sender",
    "confirm_automated": "a reply to a confirm address that is automated (`Auto-Submitted`, "
                         "`Precedence`, list headers or a challenge marker)",
    "token_malformed": "a confirm address whose token is not one crtool could have made",
    "token_unknown": "a well-formed token for no message held here (never issued, or purged)",
    "token_forged": "a token whose signature does not verify under any key",
    "token_future": "a token from a challenge time ahead of this host's clock",
    "token_expired": "a token past `confirm_ttl`; if its message is still held, a fresh "
                     "challenge goes to the held message's sender, within the rate limits",
    "message_gone": "a valid token for a message the owner has deleted",
    "token_used": "a valid token whose message is no longer held (released by an earlier "
                  "confirmation or by the owner, deleted, or expired): it changes nothing, so "
                  "a replay cannot whitelist the sender again or release anything twice",
    "confirm_blacklisted": "a valid token from a sender the owner has blacklisted since the "
                           "challenge: nothing is released, nothing whitelisted",
}


# A challenge recorded for a held message is handed to sendmail at most this many times over
# the MTA's retries; then the delivery is done and the message stays held with this reason, so a
# sendmail that sends and then exits non-zero cannot mail one person on every retry.
CHALLENGE_TRIES = 3
CHALLENGE_FAILED = "challenge_failed"
UNSENT_REASONS: dict[str, str] = {
    CHALLENGE_FAILED: f"sendmail failed on each of {CHALLENGE_TRIES} tries (over the MTA's "
                      "retries) to send the recorded challenge; it is not tried again",
}


# Accepted without a list entry: replies to the owner's own mail (`crtool sendmail` records or
# signs its Message-IDs) and mail to the owner's tagged addresses (`crtool address`). A tag that
# does not hold is no reason to refuse mail: it is read as mail to the bare address, under the
# rules above, with the reason recorded as an event. docs/reasons.md shows these tables too.
REPLY = "reply"
REPLY_REASONS: dict[str, str] = {
    REPLY: "`In-Reply-To` or `References` names a Message-ID the owner sent (within "
           "`reply_window`): delivered, and the envelope sender whitelisted (note `reply`)",
    "reply_automated": "a reply to the owner's mail (as `reply`) from a sender one of the "
                       "held-without-challenge rules names (a bounce, an automated answer, a "
                       "list): delivered, nobody whitelisted",
}
TAG_REASONS: dict[str, str] = {
    "tagged_dated": "mail to a dated address (`crtool address dated`) before it expires: "
                    "delivered",
    "tagged_sender": "mail to a sender address (`crtool address sender`) from the address or "
                     "domain it was made for, not failing SPF or DMARC: delivered",
    "tagged_keyword": "mail to a keyword address (`crtool address keyword`) not revoked: "
                      "delivered",
    "keyword_revoked": "mail to a keyword address the owner revoked (`crtool address revoke "
                       "keyword`): dropped, nothing sent, never a bounce",
    "dated_expired": "mail to a dated address past its expiry: read as mail to the bare "
                     "address",
    "sender_mismatch": "mail to a sender address from a sender it was not made for (or whose "
                       "token does not verify): read as mail to the bare address",
    "tag_forged": "mail to a tagged address whose token is malformed or does not verify "
                  "under any key: read as mail to the bare address",
}
_TAG_FALLBACK = {TAG_EXPIRED: "dated_expired", TAG_WRONG_SENDER: "sender_mismatch",
                 TAG_FORGED: "tag_forged"}


def tag_fallback_reason(tag: Tag | None) -> str | None:
    """Why mail to a tagged address is read as mail to the bare address, or None when the
    tag holds (or is revoked, which drops it)."""
    return None if tag is None else _TAG_FALLBACK.get(tag.status)


def _forged(m: Incoming) -> bool:
    """The owner's MTA says the sender's domain disowns this message (SPF or DMARC fail)."""
    return spf_failed(m) or dmarc_failed(m)


def suppression_reason(message: Incoming) -> str | None:
    """The first rule that forbids a challenge to this message's sender, or None."""
    for rule in SUPPRESSION_RULES:
        if rule.applies(message):
            return rule.reason
    return None


def classify(message: Incoming, listing: Listing | None) -> Verdict:
    """Decide one message. Rate limits come after, from `rate_limit_reason`, since they need
    counts that are only worth reading for a message that would be challenged."""
    action = message.owner.action(message.recipient)
    if action is not None:
        # A confirm, release or accept address (`reason` says which): acted on by its token,
        # never delivered or held as ordinary mail, whoever sent it.
        return Verdict(Action.CONFIRM, reason=action[0], token=action[1])
    if listing is not None:
        match listing.list_name:
            case ListKind.BLACK:
                return Verdict(Action.BLACKLISTED, reason="blacklisted", listing=listing)
            case ListKind.WHITE:
                if whitelisted_but_forged(message, listing):
                    return Verdict(Action.HOLD, reason="whitelist_forged", listing=listing)
                return Verdict(Action.ACCEPT, reason="whitelisted", listing=listing)
            case _:  # every list decides something: mypy finds a kind left out here
                assert_never(listing.list_name)
    if message.tag is not None and message.tag.status == TAG_REVOKED:
        return Verdict(Action.DROP, reason="keyword_revoked")
    if message.tag is not None and message.tag.status == TAG_VALID and not (
            message.tag.kind == "sender" and _forged(message)):
        return Verdict(Action.ACCEPT, reason=f"tagged_{message.tag.kind}")
    if message.reply and not _forged(message):
        # Someone answering the owner: a person is whitelisted, an automated answer (a
        # vacation notice, a list carrying replies to the owner's post) only delivered.
        automated = suppression_reason(message) is not None
        return Verdict(Action.ACCEPT, reason="reply_automated" if automated else REPLY)
    if message.expected:
        return Verdict(Action.ACCEPT, reason="expected")
    if message.own_digest:
        # Null sender and Auto-Submitted, so any rule below would hold it: the owner would
        # never see the digest that tells him what is held.
        return Verdict(Action.ACCEPT, reason="own_digest")
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
    """Which limit forbids one more challenge now, or None; the counts include every
    challenge recorded, so a limit of 0 means none is ever sent."""
    if counts.to_sender_in_window >= per_sender:
        return "sender_rate_limit"
    if counts.in_last_hour >= per_hour:
        return "global_rate_limit"
    return None


def confirm_reply_refusal(facts: Facts, sender: str) -> str | None:
    """Why a reply to a confirm address must not count as a human's answer, or None.

    A vacation program at a forged sender's address answers the challenge by itself, and so
    does another challenge-response system; letting that release the message would whitelist
    the forger. So replies that say they are automated confirm nothing. (A naive responder
    that says nothing of the kind cannot be told from a person.)
    """
    if sender in ("", "#@[]"):
        return "confirm_from_null_sender"
    if (_says_auto_submitted(facts) or _says_bulk(facts)
            or any(facts.has(h) for h in LIST_HEADERS + CHALLENGE_MARKERS)):
        return "confirm_automated"
    return None
