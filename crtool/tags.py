"""Tagged addresses: the owner's own addresses that let a stranger's mail through unchallenged.

    alice-dated-<expiry><mac>@example.test      until it expires (a sign-up, a one-off contact)
    alice-sender-<mac>@example.test             only from the address (or domain) it was made for
    alice-keyword-<word>-<mac>@example.test     from anyone, until the owner revokes the word

Each token is an HMAC of the key ring through itsdangerous (tokens.py) with a salt per purpose
(`dated`, `sender`, `keyword`), in lowercase base32, so it survives MTAs that lowercase local
parts and verifies under every key `keys rotate` keeps. A dated token carries its expiry (5
bytes of epoch seconds, signed); a sender token signs the address or `@domain` it was made
for, a keyword token the word: nothing needs to be looked up to verify one. The database only
says which keywords are revoked, and for whom a sender address was made (`address check`).

Pure functions: keys, the owner and the clock are passed in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from crtool import addresses, policy, tokens
from crtool.errors import UsageError

DATED = "dated"
SENDER = "sender"
KEYWORD = "keyword"
KINDS = (DATED, SENDER, KEYWORD)
MAC_CHARS = tokens.MAC_BYTES * 8 // 5
STAMP_BYTES = 5
STAMP_CHARS = STAMP_BYTES * 8 // 5
# A keyword is one word of letters and digits, with single dots or underscores inside: it
# must survive every MTA unchanged (no delimiter, no `+`, lowercase).
_KEYWORD = re.compile(r"[a-z0-9]+(?:[._][a-z0-9]+)*")
MAX_KEYWORD = 32
_BASE32 = re.compile(r"[a-z2-7]+")
MAX_LOCAL = 64


@dataclass(frozen=True)
class Tagged:
    """A recipient that is one of the owner's tagged addresses, as it arrived (lowercased)."""

    kind: str
    token: str
    keyword: str = ""


def parse(recipient: str, owner_address: str, delimiter: str) -> Tagged | None:
    """The tagged address `recipient` names, or None when it is no tagged address of this
    owner. A malformed token still counts as one (it then reads as forged)."""
    local, domain = addresses.split_address(recipient)
    owner_local, owner_domain = addresses.split_address(owner_address)
    if domain.lower().rstrip(".") != owner_domain.lower():
        return None
    local = local.lower()
    for kind in KINDS:
        prefix = f"{owner_local}{delimiter}{kind}{delimiter}".lower()
        if not local.startswith(prefix):
            continue
        rest = local[len(prefix):]
        if kind == KEYWORD:
            word, _, token = rest.rpartition(delimiter)
            return Tagged(kind, token, word)
        return Tagged(kind, rest)
    return None


def _local(owner_address: str, delimiter: str, *parts: str) -> str:
    local, domain = addresses.split_address(owner_address)
    text = delimiter.join([local, *parts])
    if len(text) > MAX_LOCAL:
        raise UsageError(f"the address would have a local part of {len(text)} characters, "
                         f"more than {MAX_LOCAL}")
    return f"{text}@{domain}"


def _stamp(epoch: int) -> str:
    return tokens.b32(max(0, epoch).to_bytes(STAMP_BYTES, "big"))


def _signed(keys: Sequence[bytes], purpose: str, owner: str, value: str) -> str:
    return tokens.sign_text(keys, purpose, f"{owner.lower()}\0{value}")


def dated_address(keys: Sequence[bytes], owner_address: str, delimiter: str,
                  expires: int) -> str:
    """`alice-dated-<token>@domain`, accepted until `expires` (epoch seconds)."""
    stamp = _stamp(expires)
    token = tokens.issue(keys, DATED, owner_address.lower(), stamp, "", expires)
    return _local(owner_address, delimiter, DATED, token)


def sender_value(text: str, domain: bool) -> str:
    """What a sender address is made for: the person's address (tags and SRS removed, as the
    whitelist reads it) or, with `domain`, `@domain`; UsageError for no plain address."""
    pattern = addresses.exact_pattern(addresses.unmangle(text.strip()))
    if pattern is None or "@" not in text:
        raise UsageError(f"not an address: {text!r} (use e.g. bob@example.com)")
    return "@" + addresses.split_address(pattern.key)[1] if domain else pattern.key


def sender_address(keys: Sequence[bytes], owner_address: str, delimiter: str,
                   value: str) -> str:
    """`alice-sender-<token>@domain` for `value` (sender_value's)."""
    return _local(owner_address, delimiter, SENDER, _signed(keys, SENDER, owner_address, value))


def keyword_word(text: str) -> str:
    """The keyword as it is signed and stored; UsageError unless it is one plain word."""
    word = text.strip().lower()
    if not _KEYWORD.fullmatch(word) or len(word) > MAX_KEYWORD:
        raise UsageError(f"not a keyword: {text!r} (letters and digits, single '.' or '_' "
                         f"inside, at most {MAX_KEYWORD} characters)")
    return word


def keyword_address(keys: Sequence[bytes], owner_address: str, delimiter: str,
                    word: str) -> str:
    """`alice-keyword-<word>-<token>@domain`."""
    return _local(owner_address, delimiter, KEYWORD, word,
                  _signed(keys, KEYWORD, owner_address, word))


@dataclass(frozen=True)
class Checked:
    """What a tagged address's token says: the status (policy.TAG_*) and, for a dated
    address, its expiry (also for an expired one)."""

    status: str
    expires: int | None = None


def expiry(tagged: Tagged) -> int | None:
    """The expiry a dated token states (signed, but not yet verified), or None."""
    if tagged.kind != DATED or len(tagged.token) != tokens.TOKEN_CHARS \
            or not _BASE32.fullmatch(tagged.token):
        return None
    return int.from_bytes(tokens.unb32(tagged.token[:STAMP_CHARS]), "big")


def sender_candidates(sender: str, separators: str) -> list[str]:
    """Every value a sender address may have been made for that covers `sender`."""
    seen = []
    for form in (addresses.normalize_address(sender), addresses.unmangle(sender, separators)):
        local, domain = addresses.split_address(form)
        if local and domain:
            seen += [form, "@" + domain]
    return list(dict.fromkeys(seen))


def verify(keys: Sequence[bytes], owner_address: str, tagged: Tagged, sender: str, now: int,
           separators: str = "+") -> Checked:
    """Check a tagged address's token for mail from `sender` at `now`. The signature is
    checked before the clock, so a forged token always reads as forged."""
    owner = owner_address.lower()
    if tagged.kind == DATED:
        expires = expiry(tagged)
        if expires is None:
            return Checked(policy.TAG_FORGED)
        signer = tokens.Base32Signer(keys, DATED)
        value = tokens.mac_input(owner, tagged.token[:STAMP_CHARS], "", expires)
        if not signer.verify_signature(value, tagged.token[STAMP_CHARS:]):
            return Checked(policy.TAG_FORGED)
        if now > expires + tokens.CLOCK_SKEW:
            return Checked(policy.TAG_EXPIRED, expires)
        return Checked(policy.TAG_VALID, expires)
    if len(tagged.token) != MAC_CHARS or not _BASE32.fullmatch(tagged.token):
        return Checked(policy.TAG_FORGED)
    if tagged.kind == KEYWORD:
        if not _KEYWORD.fullmatch(tagged.keyword) or not tokens.check_text(
                keys, KEYWORD, f"{owner}\0{tagged.keyword}", tagged.token):
            return Checked(policy.TAG_FORGED)
        return Checked(policy.TAG_VALID)
    if any(tokens.check_text(keys, SENDER, f"{owner}\0{value}", tagged.token)
           for value in sender_candidates(sender, separators)):
        return Checked(policy.TAG_VALID)
    return Checked(policy.TAG_WRONG_SENDER)
