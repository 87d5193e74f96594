"""Confirm tokens: HMAC through itsdangerous, in a lowercase base32 form that survives MTAs.

A token is base32(id ‖ mac): a 5-byte random id of the held message and the first 10 bytes of an
HMAC-SHA256 over (purpose salt, owner, id, sender as recorded at hold time, challenge time). That is
15 bytes, 24 characters of [a-z2-7], one spelling per token (15 bytes fill whole 5-bit groups), and
any case verifies alike because the text is lowercased before decoding. The challenge time is not
in the token: it is read from the held message's row, so a fresh challenge retires older tokens.

itsdangerous supplies the key derivation per salt (`Signer.derive_key`), the key list (sign with the
newest, verify with each) and the constant-time comparison (`hmac.compare_digest` in its algorithm);
this module supplies the truncation and the text form. The clock is always passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
import stat
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from itsdangerous.signer import HMACAlgorithm, Signer

from crtool.errors import BadToken, TemporaryFailure

ID_BYTES = 5
MAC_BYTES = 10
ID_CHARS = ID_BYTES * 8 // 5
TOKEN_CHARS = (ID_BYTES + MAC_BYTES) * 8 // 5
CLOCK_SKEW = 300
# "release" and "accept" sign the addresses an owner digest lists (one held message; all from
# one sender), "digest" the digest's own Message-ID; "login" the owner's one-time web link;
# "reply" the Message-IDs `crtool sendmail` gives the owner's mail (replies.py).
PURPOSES = frozenset({"confirm", "dated", "sender", "keyword", "web", "login", "release",
                      "accept", "digest", "reply"})
_TOKEN_TEXT = re.compile(r"^[a-z2-7]+$")


def b32(data: bytes) -> str:
    """Lowercase base32 without padding; callers only pass whole 5-byte groups."""
    return base64.b32encode(data).decode("ascii").lower()


def unb32(text: str) -> bytes:
    return base64.b32decode(text.upper())


class TruncatedHMAC(HMACAlgorithm):
    """HMAC-SHA256 cut to MAC_BYTES; itsdangerous compares it in constant time."""

    def __init__(self) -> None:
        super().__init__(hashlib.sha256)

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return super().get_signature(key, value)[:MAC_BYTES]


class Base32Signer(Signer):
    """An itsdangerous Signer whose signature text is lowercase base32 of the truncated MAC."""

    def __init__(self, keys: Sequence[bytes], purpose: str) -> None:
        if purpose not in PURPOSES:
            raise ValueError(f"unknown token purpose {purpose!r}")
        super().__init__(
            list(keys),
            salt=f"crtool.token.{purpose}",
            key_derivation="hmac",
            digest_method=hashlib.sha256,
            algorithm=TruncatedHMAC(),
        )

    def get_signature(self, value: str | bytes) -> bytes:
        raw = self.algorithm.get_signature(self.derive_key(), _bytes(value))
        return b32(raw).encode("ascii")

    def verify_signature(self, value: str | bytes, sig: str | bytes) -> bool:
        try:
            raw = unb32(_bytes(sig).decode("ascii"))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return False
        value = _bytes(value)
        # Every key is tried, so a token signed before `keys rotate` keeps verifying.
        return any(
            self.algorithm.verify_signature(self.derive_key(key), value, raw)
            for key in reversed(self.secret_keys)
        )


def _bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def mac_input(owner: str, token_id: str, sender: str, challenged_at: int) -> bytes:
    """The signed value: length-prefixed fields, so no two tuples share an encoding."""
    parts = [owner.lower(), token_id.lower(), sender]
    encoded = b"".join(struct.pack(">H", len(p)) + p for p in (_bytes(x) for x in parts))
    return b"crtool-token-v1\0" + encoded + struct.pack(">q", challenged_at)


def new_token_id(randbytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A fresh random id for a held message, as its 8-character base32 text."""
    return b32(randbytes(ID_BYTES))


def issue(
    keys: Sequence[bytes], purpose: str, owner: str, token_id: str, sender: str, challenged_at: int
) -> str:
    """The token text for a held message challenged at `challenged_at` (epoch seconds)."""
    signer = Base32Signer(keys, purpose)
    sig = signer.get_signature(mac_input(owner, token_id, sender, challenged_at))
    return token_id.lower() + sig.decode("ascii")


def parse(text: str) -> tuple[str, str]:
    """(id, signature) from a token as it arrived, in any case; BadToken if malformed."""
    text = text.strip().lower()
    if len(text) != TOKEN_CHARS or not _TOKEN_TEXT.match(text):
        raise BadToken("malformed", f"{len(text)} characters")
    return text[:ID_CHARS], text[ID_CHARS:]


def verify(
    keys: Sequence[bytes],
    purpose: str,
    owner: str,
    text: str,
    sender: str,
    challenged_at: int,
    now: int,
    ttl: int,
    skew: int = CLOCK_SKEW,
) -> str:
    """Check a token against its held message's row; the id on success, else BadToken.

    The MAC is checked before the clock so that a forged token always reads as forged.
    Expiry is absolute from the challenge time, with `skew` (CLOCK_SKEW) allowed either way
    for hosts that share a database; a login link, whose minutes are its whole point, passes 0.
    """
    token_id, sig = parse(text)
    signer = Base32Signer(keys, purpose)
    if not signer.verify_signature(mac_input(owner, token_id, sender, challenged_at), sig):
        raise BadToken("forged")
    if challenged_at > now + CLOCK_SKEW:
        raise BadToken("future", "challenge time is ahead of this host's clock")
    if now > challenged_at + ttl + skew:
        raise BadToken("expired")
    return token_id


# The key ring file -------------------------------------------------------------------------

KEY_BYTES = 32
_HEADER = "# crtool key ring: one key a line, 'created-epoch secret-hex', newest last. Keep 0600.\n"


@dataclass(frozen=True)
class Key:
    created: int
    secret: bytes


def load_keys(path: Path) -> list[Key]:
    """Read the key ring; a missing, unsafe or empty ring is a broken environment."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise TemporaryFailure(f"key ring {path} is missing (run 'crtool init')") from None
    except OSError as error:
        raise TemporaryFailure(f"key ring {path} is unreadable: {error.strerror}") from None
    with os.fdopen(fd, "r", encoding="ascii", errors="replace") as handle:
        info = os.fstat(handle.fileno())
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TemporaryFailure(
                f"key ring {path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}); "
                "chmod 600 it"
            )
        text = handle.read()
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            created, secret = line.split()
            keys.append(Key(int(created), bytes.fromhex(secret)))
        except ValueError:
            raise TemporaryFailure(f"key ring {path}: line {number} is damaged") from None
    if not keys:
        raise TemporaryFailure(f"key ring {path} holds no key")
    return sorted(keys, key=lambda k: k.created)


def secrets_of(keys: Sequence[Key]) -> list[bytes]:
    """The secrets oldest first, as itsdangerous wants them (it signs with the last)."""
    return [k.secret for k in keys]


def write_keys(path: Path, keys: Sequence[Key]) -> None:
    """Replace the key ring atomically, 0600 from the first byte, never through a link
    (private.replace_file). Side effect: the file."""
    from crtool.private import replace_file

    body = _HEADER + "".join(f"{k.created} {k.secret.hex()}\n" for k in keys)
    replace_file(path, body.encode("ascii"))


def rotated(keys: Sequence[Key], now: int, ttl: int) -> list[Key]:
    """The ring after a rotation: a new newest key, and old keys kept while tokens they
    signed can still be valid (until their successor is older than ttl + skew)."""
    ordered = sorted(keys, key=lambda k: k.created)
    fresh = Key(now, secrets.token_bytes(KEY_BYTES))
    kept = []
    for index, key in enumerate(ordered):
        successor = ordered[index + 1].created if index + 1 < len(ordered) else now
        if now - successor <= ttl + CLOCK_SKEW:
            kept.append(key)
    return [*kept, fresh]


def new_ring(now: int) -> list[Key]:
    return [Key(now, secrets.token_bytes(KEY_BYTES))]


# Web forms ---------------------------------------------------------------------------------

def sign_text(keys: Sequence[bytes], purpose: str, text: str) -> str:
    """A MAC over `text` alone (lowercased), in the token's base32 form: the web's confirm form
    carries one for its confirm token (purpose `web`), so only a POST from that page counts."""
    return Base32Signer(keys, purpose).get_signature(text.lower()).decode("ascii")


def check_text(keys: Sequence[bytes], purpose: str, text: str, signature: str) -> bool:
    """True when `signature` is sign_text's for `text` under any key of the ring."""
    return Base32Signer(keys, purpose).verify_signature(text.lower(), signature.strip().lower())
