"""Confirm tokens: unforgeable, robust to case, expiring, surviving key rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crtool import tokens
from crtool.errors import BadToken, TemporaryFailure

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
OWNER = "alice@example.test"
SENDER = "bob@remote.test"
T0 = 1_800_000_000
TTL = 14 * 86400

ids = st.binary(min_size=5, max_size=5).map(tokens.b32)
senders = st.emails().map(str)


def issue(token_id: str = "abcdefgh", sender: str = SENDER, at: int = T0,
          keys: list[bytes] | None = None) -> str:
    return tokens.issue(keys or [KEY_A], "confirm", OWNER, token_id, sender, at)


def verify(text: str, sender: str = SENDER, at: int = T0, now: int = T0 + 60,
           keys: list[bytes] | None = None, purpose: str = "confirm") -> str:
    return tokens.verify(keys or [KEY_A], purpose, OWNER, text, sender, at, now, TTL)


def test_known_answer_vector() -> None:
    """A fixed key, id, sender and time give one fixed token, computed here from first
    principles: the format is stable, so challenges already sent keep verifying after an
    upgrade, and the construction is the documented one (itsdangerous' HMAC key derivation
    with the purpose salt, then HMAC-SHA256 over length-prefixed fields, cut to 80 bits)."""
    derived = hmac.new(KEY_A, b"crtool.token.confirm", hashlib.sha256).digest()
    fields = b"".join(struct.pack(">H", len(f)) + f
                      for f in (OWNER.encode(), b"abcdefgh", SENDER.encode()))
    value = b"crtool-token-v1\0" + fields + struct.pack(">q", T0)
    mac = hmac.new(derived, value, hashlib.sha256).digest()[:10]
    expected = "abcdefgh" + base64.b32encode(mac).decode().lower()
    assert issue() == expected == "abcdefghevoh3xpwaf3x6snx"


def test_shape_fits_in_a_local_part() -> None:
    """24 characters of [a-z2-7]: with '-confirm-' a 24-character owner still fits in 64."""
    token = issue()
    assert len(token) == tokens.TOKEN_CHARS == 24
    assert set(token) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert len("a" * 24 + "-confirm-" + token) <= 64


@settings(max_examples=200, deadline=None)
@given(token_id=ids, sender=senders, at=st.integers(0, 2**40))
def test_round_trip(token_id: str, sender: str, at: int) -> None:
    text = issue(token_id, sender, at)
    assert verify(text, sender, at, now=at) == token_id


@settings(max_examples=200, deadline=None)
@given(token_id=ids, flips=st.lists(st.booleans(), min_size=24, max_size=24))
def test_any_case_verifies(token_id: str, flips: list[bool]) -> None:
    """Postfix lowercases LOCAL; qmail keeps the sender's case: every mix must verify."""
    text = issue(token_id)
    mixed = "".join(c.upper() if f else c for c, f in zip(text, flips, strict=True))
    assert verify(mixed) == token_id


@settings(max_examples=300, deadline=None)
@given(token_id=ids, position=st.integers(0, 23),
       replacement=st.sampled_from("abcdefghijklmnopqrstuvwxyz234567"))
def test_every_single_character_change_is_rejected(token_id: str, position: int,
                                                   replacement: str) -> None:
    text = issue(token_id)
    if text[position] == replacement:
        replacement = "a" if replacement != "a" else "b"
    changed = text[:position] + replacement + text[position + 1:]
    with pytest.raises(BadToken) as caught:
        verify(changed)
    assert caught.value.reason == "forged"


@settings(max_examples=100, deadline=None)
@given(token_id=ids)
def test_one_spelling_per_token(token_id: str) -> None:
    """The 15 raw bytes fill whole base32 groups: decoding and re-encoding gives the same
    text, so a token has no second spelling to replay under (besides case)."""
    text = issue(token_id)
    assert tokens.b32(tokens.unb32(text)) == text


@pytest.mark.parametrize("bad", ["", "short", "a" * 23, "a" * 25, "abcdefgh!zkmftyvaczd4mkx",
                                 "abcdefgh0zkmftyvaczd4mkx", "abcdefgh szkmftyvaczd4mk"])
def test_malformed_tokens(bad: str) -> None:
    with pytest.raises(BadToken) as caught:
        verify(bad)
    assert caught.value.reason == "malformed"
    # The event log's reason is the word; the message says what was wrong with the text.
    assert str(caught.value) == f"malformed: {len(bad.strip())} characters"


def test_bound_to_sender_owner_time_and_purpose() -> None:
    text = issue()
    for kwargs in ({"sender": "mallory@remote.test"}, {"at": T0 + 1}, {"purpose": "web"}):
        with pytest.raises(BadToken) as caught:
            verify(text, **kwargs)  # type: ignore[arg-type]
        assert caught.value.reason == "forged", kwargs
    with pytest.raises(BadToken) as caught:
        tokens.verify([KEY_A], "confirm", "carol@example.test", text, SENDER, T0, T0, TTL)
    assert caught.value.reason == "forged"


def test_expiry_is_absolute_with_clock_skew() -> None:
    text = issue()
    assert verify(text, now=T0 + TTL + tokens.CLOCK_SKEW)
    with pytest.raises(BadToken) as caught:
        verify(text, now=T0 + TTL + tokens.CLOCK_SKEW + 1)
    assert caught.value.reason == "expired"
    # A challenge time from another host up to 300 s ahead verifies; further is refused.
    assert verify(text, now=T0 - tokens.CLOCK_SKEW)
    with pytest.raises(BadToken) as caught:
        verify(text, now=T0 - tokens.CLOCK_SKEW - 1)
    assert caught.value.reason == "future"
    assert str(caught.value) == "future: challenge time is ahead of this host's clock"


def test_a_forged_token_reads_as_forged_even_when_expired() -> None:
    text = issue(keys=[KEY_B])
    with pytest.raises(BadToken) as caught:
        verify(text, now=T0 + 10 * TTL)
    assert caught.value.reason == "forged"


def test_rotation_keeps_old_tokens_valid_until_they_expire() -> None:
    old_ring = [tokens.Key(T0 - 100, KEY_A)]
    text = issue(keys=tokens.secrets_of(old_ring))
    ring = tokens.rotated(old_ring, T0, TTL)
    assert len(ring) == 2 and ring[0].secret == KEY_A
    assert verify(text, keys=tokens.secrets_of(ring))
    # New tokens are signed with the newest key only.
    new = issue(keys=tokens.secrets_of(ring))
    with pytest.raises(BadToken) as caught:
        verify(new, keys=[KEY_A])
    assert caught.value.reason == "forged"
    # Once every token the old key signed has expired, the next rotation drops it.
    later = tokens.rotated(ring, T0 + TTL + tokens.CLOCK_SKEW + 1, TTL)
    assert KEY_A not in tokens.secrets_of(later)
    assert len(later) == 2


def test_key_ring_file_is_private(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keys"
    ring = tokens.new_ring(T0)
    tokens.write_keys(path, ring)
    assert path.stat().st_mode & 0o777 == 0o600
    assert tokens.load_keys(path) == ring
    path.chmod(0o644)
    with pytest.raises(TemporaryFailure, match="readable by others"):
        tokens.load_keys(path)


def test_rotation_keeps_a_key_exactly_as_long_as_its_tokens_can_verify() -> None:
    """A key is dropped once its successor is older than ttl + skew: at that second a token
    it signed (issued before the successor existed) can still verify, one second later not."""
    ring = [tokens.Key(T0 - 50, KEY_A), tokens.Key(T0, KEY_B)]
    boundary = T0 + TTL + tokens.CLOCK_SKEW
    kept = tokens.rotated(ring, boundary, TTL)
    assert [k.secret for k in kept[:2]] == [KEY_A, KEY_B] and len(kept) == 3
    assert kept[-1].created == boundary and len(kept[-1].secret) == tokens.KEY_BYTES
    dropped = tokens.rotated(ring, boundary + 1, TTL)
    assert [k.secret for k in dropped[:1]] == [KEY_B] and len(dropped) == 2
    # Each key is judged by its own successor: the oldest goes, the one after it stays.
    key_c = bytes(range(64, 96))
    three = [tokens.Key(T0 - 3 * TTL, KEY_A), tokens.Key(T0 - 2 * TTL, KEY_B),
             tokens.Key(T0, key_c)]
    assert [k.secret for k in tokens.rotated(three, T0 + 10, TTL)[:2]] == [KEY_B, key_c]
    assert len(tokens.rotated(three, T0 + 10, TTL)) == 3
    # The newest key is always kept, however old, and the order of the input does not matter.
    assert [k.secret for k in tokens.rotated(ring[::-1], T0 + 100 * TTL, TTL)[:1]] == [KEY_B]
    assert tokens.rotated([], T0, TTL)[0].created == T0


def test_key_ring_round_trip_keeps_order_comments_and_refuses_damage(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keys"
    ring = [tokens.Key(T0 + 5, KEY_B), tokens.Key(T0, KEY_A)]
    tokens.write_keys(path, ring)
    text = path.read_text()
    assert text.startswith("# crtool key ring")
    assert f"{T0 + 5} {KEY_B.hex()}\n" in text
    assert tokens.load_keys(path) == sorted(ring, key=lambda k: k.created)
    assert tokens.secrets_of(tokens.load_keys(path)) == [KEY_A, KEY_B]
    fresh = tokens.new_ring(T0)
    assert len(fresh) == 1 and fresh[0].created == T0 and len(fresh[0].secret) == 32
    assert tokens.new_ring(T0)[0].secret != fresh[0].secret
    for body, why in (("# only a comment\n\n", "holds no key"), (f"{T0} zz\n", "line 1"),
                      (f"\n{T0}\n", "line 2 is damaged")):
        path.write_text(body)
        with pytest.raises(TemporaryFailure, match=why):
            tokens.load_keys(path)
    path.chmod(0o640)
    with pytest.raises(TemporaryFailure, match="readable by others"):
        tokens.load_keys(path)
    with pytest.raises(TemporaryFailure, match="is missing"):
        tokens.load_keys(tmp_path / "none")


def test_a_signed_text_verifies_under_any_key_of_the_ring_and_nothing_else() -> None:
    signature = tokens.sign_text([KEY_A], "web", "ABCdef")
    assert signature == tokens.sign_text([KEY_A], "web", "abcdef")
    assert len(signature) == 16 and set(signature) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert tokens.check_text([KEY_A, KEY_B], "web", "abcdef", f" {signature.upper()} ")
    assert not tokens.check_text([KEY_B], "web", "abcdef", signature)
    assert not tokens.check_text([KEY_A], "login", "abcdef", signature)
    assert not tokens.check_text([KEY_A], "web", "abcdeg", signature)
    assert not tokens.check_text([KEY_A], "web", "abcdef", "not base32!")
    with pytest.raises(ValueError, match="unknown token purpose"):
        tokens.sign_text([KEY_A], "nonsense", "x")


def test_a_key_ring_reached_through_a_symlink_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    real = tmp_path / "real-keys"
    tokens.write_keys(real, tokens.new_ring(T0))
    (tmp_path / "keys").symlink_to(real)
    with pytest.raises(TemporaryFailure, match="is unreadable"):
        tokens.load_keys(tmp_path / "keys")


def test_a_stray_byte_in_the_key_ring_is_damage_where_it_matters_and_nowhere_else(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An editor's non-ASCII byte in a comment leaves the ring readable; in a key's line it
    is a damaged line (a broken environment: tempfail), never a crash."""
    path = tmp_path / "keys"
    tokens.write_keys(path, [tokens.Key(T0, KEY_A)])
    path.write_bytes(b"# r\xe9sum\xc3\xa9 of the keys\n" + path.read_bytes())
    assert tokens.secrets_of(tokens.load_keys(path)) == [KEY_A]
    path.write_bytes(f"{T0} {KEY_A.hex()}".encode() + b"\xe9\n")
    with pytest.raises(TemporaryFailure, match="line 1 is damaged"):
        tokens.load_keys(path)
