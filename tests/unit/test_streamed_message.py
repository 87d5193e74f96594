"""The message as a stream: read once in bounded pieces, identified by a digest computed on
the way, and never read past max_message_size."""

from __future__ import annotations

import hashlib
import io
import random

import pytest

from crtool.envelope import CHUNK, START_CAP, Envelope, Fingerprint, RawMessage
from crtool.errors import TemporaryFailure

ENVELOPE = Envelope("bob@remote.test", "alice@example.test")


def _message(size: int) -> bytes:
    body = random.Random(size).randbytes(size)
    return b"From: bob@remote.test\nSubject: s\n\n" + body


def _through(pieces: list[bytes]) -> str:
    fingerprint = Fingerprint("alice@example.test", ENVELOPE)
    for _ in fingerprint.through(pieces):
        pass
    return fingerprint.hexdigest()


@pytest.mark.parametrize("cut", [1, 7, 4096, CHUNK])
def test_the_digest_does_not_depend_on_where_the_stream_is_cut(cut: int) -> None:
    """A retry may read the message in other pieces (a pipe, a file, the server's pread):
    it must still find the earlier hold."""
    data = _message(3 * CHUNK + 5)
    pieces = [data[i:i + cut] for i in range(0, len(data), cut)]
    assert _through(pieces) == _through([data])


def test_the_digest_separates_owner_sender_recipient_and_bytes() -> None:
    data = b"Subject: x\n\nbody\n"
    base = _through([data])
    other = Fingerprint("alice@example.test", Envelope("bob@remote.tes", "talice@example.test"))
    for _ in other.through([data]):
        pass
    assert other.hexdigest() != base
    assert _through([data + b"\n"]) != base


def test_chunks_are_bounded_and_give_back_every_byte() -> None:
    data = _message(5 * CHUNK + 3)
    raw = RawMessage.read(io.BytesIO(data), limit=len(data))
    pieces = list(raw.chunks())
    assert b"".join(pieces) == data
    assert max(len(piece) for piece in pieces) <= CHUNK
    assert raw.start == data[:START_CAP]
    assert hashlib.sha256(b"".join(pieces)).digest() == hashlib.sha256(data).digest()


def test_a_stream_past_the_limit_is_a_temporary_failure() -> None:
    data = _message(3 * CHUNK)
    raw = RawMessage.read(io.BytesIO(data), limit=len(data) - 1)
    with pytest.raises(TemporaryFailure, match="max_message_size"):
        for _ in raw.chunks():
            pass
