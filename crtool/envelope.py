"""The envelope and the raw message as the MTA hands them over: the only reader of os.environ.

qmail and Postfix put the envelope in the environment (flags override it) and the message on
stdin. Everything here is attacker-controlled text, so values are decoded defensively and judged
(`sender_valid`) rather than trusted; a missing envelope, though, is a broken installation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from crtool.errors import TemporaryFailure

# How much of the message is read before deciding anything: the header block, up to this cap.
# The rest stays in the pipe until a branch needs it, so a whitelisted 50 MB message costs little.
HEAD_CAP = 256 * 1024
CHUNK = 256 * 1024
# How much of the start of a message a challenge may read (the header block and a little of
# the body): kept while the message streams into the store, so nothing reads it back.
START_CAP = HEAD_CAP + 64 * 1024
# An envelope value longer than this is hostile; it is kept for the digest, cut for storage.
STORED_CAP = 320

_SENDER = re.compile(
    r"^[^\s@<>\"'`$\\;|&(),\[\]\x00-\x1f\x7f]{1,64}"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)


def valid_mailbox(address: str) -> bool:
    """A plain dot-atom address that a challenge can safely be sent to."""
    return len(address) <= 254 and bool(_SENDER.match(address))


def _decode(value: bytes) -> tuple[str, bool]:
    try:
        return value.decode("utf-8"), True
    except UnicodeDecodeError:
        return value.decode("utf-8", "replace"), False


def _from_argv(value: str) -> tuple[str, bool]:
    """A flag's value decoded like the environment's. Python hands undecodable argv bytes over
    as lone surrogates, which no database driver accepts: left in, they made every retry of
    the delivery a temporary failure."""
    try:
        return _decode(value.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8"), False


@dataclass(frozen=True)
class Envelope:
    """Who sent the message to whom, as the MTA says; `sender` is "" for a bounce."""

    sender: str
    recipient: str
    sender_clean: bool = True

    @property
    def sender_valid(self) -> bool:
        """True when the sender decoded cleanly and is an address a challenge may go to."""
        return self.sender_clean and valid_mailbox(self.sender)

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[bytes, bytes],
        sender: str | None = None,
        recipient: str | None = None,
    ) -> Envelope:
        """Read SENDER and RECIPIENT (bytes environment), the flags winning when given.

        Raises TemporaryFailure when either is absent: that is a broken installation, and
        holding the message would mean a hold under the wrong owner or with no sender.
        """
        clean = True
        if sender is None:
            raw = environ.get(b"SENDER")
            if raw is None:
                raise TemporaryFailure("no SENDER in the environment and no --sender")
            sender, clean = _decode(raw)
        else:
            sender, clean = _from_argv(sender)
        if recipient is None:
            raw = environ.get(b"RECIPIENT")
            if raw is None:
                raise TemporaryFailure("no RECIPIENT in the environment and no --recipient")
            recipient, _ = _decode(raw)
        else:
            recipient, _ = _from_argv(recipient)
        sender = sender.strip()
        if sender.startswith("<") and sender.endswith(">"):
            sender = sender[1:-1]
        return cls(sender=sender, recipient=recipient.strip(), sender_clean=clean)


class RawMessage:
    """The message bytes: the head (header block, capped) read now, the rest left in the pipe.

    The bytes are never altered, except that the mbox `From ` line a sysexits MTA (Postfix)
    puts first is removed, as contract §8 says. They are read once, as a stream (`chunks`), so
    a message of any size costs the same memory; `limit` bounds that stream (see `chunks`).
    """

    def __init__(self, head: bytes, rest: BinaryIO | None, limit: int | None = None) -> None:
        self.head = head
        self._rest = rest
        self._whole: bytes | None = None if rest is not None else head
        self._limit = limit
        # The first START_CAP bytes, kept while `chunks` streams past: all a challenge reads.
        self.start = head[:START_CAP]

    @classmethod
    def read(cls, stream: BinaryIO, strip_from_line: bool = False,
             limit: int | None = None) -> RawMessage:
        """Read the header block (up to HEAD_CAP) from `stream`; side effect: consumes it."""
        parts: list[bytes] = []
        size = 0
        first = True
        while size < HEAD_CAP:
            line = stream.readline(HEAD_CAP - size)
            if not line:
                return cls(b"".join(parts), None, limit)
            if first and strip_from_line and line.startswith(b"From "):
                first = False
                while not line.endswith(b"\n"):
                    line = stream.readline(CHUNK)
                    if not line:
                        return cls(b"".join(parts), None, limit)
                continue
            first = False
            parts.append(line)
            size += len(line)
            if line in (b"\n", b"\r\n"):
                break
        return cls(b"".join(parts), stream, limit)

    @classmethod
    def from_bytes(cls, data: bytes) -> RawMessage:
        return cls(data, None)

    def chunks(self) -> Iterator[bytes]:
        """The bytes in pieces of at most CHUNK, never the whole body in memory; once only
        (side effect: drains the pipe).

        Raises TemporaryFailure when the stream runs past `limit` (config max_message_size):
        a stream that long is no message an MTA handed over but a broken environment (such as
        /dev/zero on stdin). Cutting it and holding the start would lose a real message's
        end, and exit "done" would let the MTA delete it; a retry loses nothing.
        """
        if self._whole is not None:
            yield self._whole
            return
        yield self.head
        size = len(self.head)
        while self._rest is not None and (chunk := self._rest.read(CHUNK)):
            size += len(chunk)
            if self._limit is not None and size > self._limit:
                self._rest = None
                raise TemporaryFailure(f"the message is larger than max_message_size "
                                       f"({self._limit} bytes): not read to its end")
            if len(self.start) < START_CAP:
                self.start += chunk[:START_CAP - len(self.start)]
            yield chunk
        self._rest = None


class Fingerprint:
    """`digest` computed while the bytes stream past (`through`), so the message need not be
    whole in memory to be identified."""

    def __init__(self, owner: str, envelope: Envelope) -> None:
        import hashlib  # only a hold needs it, not the whitelisted check

        self._hash = hashlib.sha256()
        for part in (owner, envelope.sender, envelope.recipient):
            encoded = part.encode("utf-8", "surrogateescape")
            self._hash.update(len(encoded).to_bytes(4, "big") + encoded)

    def through(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self._hash.update(chunk)
            yield chunk

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

