"""`crtool deliver` as a client of the resident server (`crtool serve`), like spamc to spamd.

This module imports only the standard library, and of that only `os`, `stat`, `struct` and,
once there is a server to talk to, `socket` (no dataclasses, no typing: each costs as much as
starting the interpreter): a client that paid for SQLAlchemy, or for much else, would gain
little from the server. It hands the
server the envelope and the message's file descriptor; the server answers with the exit code and
the stderr line, worked out by the same code (delivery.status, exits.py) as an in-process
delivery.

Why the descriptor is passed (SCM_RIGHTS) rather than the bytes streamed: qmail hands a program
delivery the message as a seekable file, so the server can read the header block straight from
it and never touch the body of a whitelisted 50 MB message, with no copy through this process.
The server reads with pread at an offset and never moves the shared file position, so if it
dies, refuses or does not answer, this process still has its stdin exactly as it got it and
delivers in-process. A pipe (Postfix, procmail) cannot be re-read, so its bytes are first
copied into an unlinked file in HOME; both the server and the fallback read that copy. Only a
regular file is passed as it is: anything else (a device such as /dev/zero is seekable too) is
copied like a pipe, and a copy that reaches SPOOL_CAP is not offered to the server at all: the
delivery goes on in-process, from the copy and then the rest of stdin, where the configured
max_message_size bounds it.

Wire format, over an AF_UNIX SOCK_SEQPACKET socket (one packet each way, so no framing):
request = MAGIC + offset + fields, each field "-" (absent) or "+" len(4) bytes; the server sends
ACK once it has the request, then one reply packet: the exit code (1 byte) and the stderr line.
"""

from __future__ import annotations

import os
import stat
import struct

from crtool.profiles import MTA_PROFILES

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Any, BinaryIO

SOCKET_NAME = "crtool.sock"
MAGIC = b"crtool/1\n"
ACK = b"A"
MAX_PACKET = 256 * 1024
# How long a server may take to take the request: a live server acknowledges at once, so
# anything slower means it is stuck and the message is better handled here.
ACK_TIMEOUT = 5.0
# How long a delivery may take once acknowledged: the database's busy timeout and sendmail's
# timeout both fit in it. After it the message is handled here; a hold the server committed
# meanwhile is found by its digest, so nothing is held twice.
ANSWER_TIMEOUT = 300.0
# The environment variables a delivery reads (envelope.py and the exit profile guess).
ENVIRON_KEYS = (b"SENDER", b"RECIPIENT", b"DTLINE", b"RPLINE")
_UCRED = struct.Struct("3i")
_COPY_CHUNK = 1024 * 1024
# The most of a pipe copied for the server: the server pays off for the many small messages;
# a message larger than this is read on in-process, straight from the pipe.
SPOOL_CAP = 64 * 1024 * 1024


class ProtocolError(Exception):
    """A packet that is not what this protocol sends."""


class Request:
    """What `crtool deliver` was given besides the message: flags and envelope environment."""

    __slots__ = ("mta", "sender", "recipient", "environ")

    def __init__(self, mta: str | None = None, sender: str | None = None,
                 recipient: str | None = None, environ: dict[bytes, bytes] | None = None,
                 ) -> None:
        self.mta = mta
        self.sender = sender
        self.recipient = recipient
        self.environ = dict(environ or {})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Request) and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__)

    def __repr__(self) -> str:
        return (f"Request(mta={self.mta!r}, sender={self.sender!r}, "
                f"recipient={self.recipient!r}, environ={self.environ!r})")

    @classmethod
    def of_process(cls, environ: object, mta: str | None, sender: str | None,
                   recipient: str | None) -> Request:
        """From os.environb and the command line; only ENVIRON_KEYS are kept."""
        source = dict(environ)  # type: ignore[call-overload]
        kept = {k: source[k] for k in ENVIRON_KEYS if k in source}
        return cls(mta=mta, sender=sender, recipient=recipient, environ=kept)


def _field(value: bytes | None) -> bytes:
    if value is None:
        return b"-"
    return b"+" + len(value).to_bytes(4, "big") + value


def _text(value: str | None) -> bytes | None:
    return None if value is None else value.encode("utf-8", "surrogateescape")


def encode_request(request: Request, offset: int) -> bytes:
    parts = [MAGIC, offset.to_bytes(8, "big"),
             _field(_text(request.mta)), _field(_text(request.sender)),
             _field(_text(request.recipient))]
    parts += [_field(request.environ.get(key)) for key in ENVIRON_KEYS]
    return b"".join(parts)


def decode_request(data: bytes) -> tuple[Request, int]:
    """The request and the message's offset in the passed file; ProtocolError when malformed."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise ProtocolError("not a crtool request")
    position = len(MAGIC)
    offset = int.from_bytes(data[position:position + 8], "big")
    position += 8
    values: list[bytes | None] = []
    for _ in range(3 + len(ENVIRON_KEYS)):
        marker = data[position:position + 1]
        if marker == b"-":
            values.append(None)
            position += 1
        elif marker == b"+" and len(data) >= position + 5:
            size = int.from_bytes(data[position + 1:position + 5], "big")
            value = data[position + 5:position + 5 + size]
            if len(value) != size:
                raise ProtocolError("truncated field")
            values.append(value)
            position += 5 + size
        else:
            raise ProtocolError("malformed field")
    if position != len(data):
        raise ProtocolError("trailing bytes")

    def text(value: bytes | None) -> str | None:
        return None if value is None else value.decode("utf-8", "surrogateescape")

    environ = {key: value for key, value in zip(ENVIRON_KEYS, values[3:], strict=True)
               if value is not None}
    mta = text(values[0])
    if mta is not None and mta not in MTA_PROFILES:
        # The command line only ever passes a known profile; anything else is not our client.
        raise ProtocolError("unknown MTA profile")
    return Request(mta=mta, sender=text(values[1]), recipient=text(values[2]),
                   environ=environ), offset


def encode_reply(code: int, line: str) -> bytes:
    """The exit code and the one stderr line (empty for none) of a delivery."""
    return bytes([code]) + line.replace("\n", " ").encode("utf-8", "replace")[:MAX_PACKET - 1]


def decode_reply(data: bytes) -> tuple[int, str]:
    if not data:
        raise ProtocolError("empty reply")
    return data[0], data[1:].decode("utf-8", "replace")


def peer_uid(connection: socket.socket) -> int:
    """The uid of the process at the other end, as the kernel vouches for it (SO_PEERCRED)."""
    import socket
    raw = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return int(_UCRED.unpack(raw)[1])


def _file_offset(fd: int) -> int | None:
    """The position in `fd` when it is a regular file (what qmail gives), else None: only a
    regular file is passed to the server as it is, since only a file has an end of its own
    (a device such as /dev/zero is seekable too, and endless)."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return None


def _spool(source: BinaryIO, directory: str) -> tuple[BinaryIO, bool]:
    """Copy a pipe into an unlinked file in `directory` (HOME, 0700), in bounded chunks, and
    say whether the pipe ended within SPOOL_CAP bytes.

    Side effect: drains `source` up to SPOOL_CAP. The file vanishes when it is closed.
    """
    import tempfile

    spool = tempfile.TemporaryFile(dir=directory)
    size = 0
    complete = False
    while size < SPOOL_CAP:
        chunk = source.read(min(_COPY_CHUNK, SPOOL_CAP - size))
        if not chunk:
            complete = True
            break
        spool.write(chunk)
        size += len(chunk)
    spool.flush()
    spool.seek(0)
    return spool, complete


def _chain(first: BinaryIO, then: BinaryIO) -> BinaryIO:
    """`first` to its end, then `then`: a pipe too long to spool, read on in-process."""
    import io

    class Chain(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            data = first.read(len(buffer)) or then.read(len(buffer))
            buffer[:len(data)] = data
            return len(data)

        def close(self) -> None:
            first.close()  # the copy; `then` (stdin) is the caller's
            super().close()

    return io.BufferedReader(Chain())


def connect(path: str) -> socket.socket | None:
    """A connection to the server at `path` run by this very user, or None. (`socket` is
    imported here: a delivery that finds no server never needs it.)"""
    import socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.settimeout(ACK_TIMEOUT)
        sock.connect(path)
        if peer_uid(sock) != os.getuid():
            sock.close()
            return None
    except OSError:
        sock.close()
        return None
    return sock


def listening(path: str) -> bool:
    """Whether a server takes connections at `path`, whoever runs it: False only when nothing
    can (no socket file, or the kernel refuses: the server that made it is gone). It connects
    and closes without a request, which a server takes as a probe and does not log."""
    import errno
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.settimeout(ACK_TIMEOUT)
        sock.connect(path)
    except OSError as error:
        return error.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        sock.close()
    return True


def deliver(home: str, request: Request,
            stdin: BinaryIO) -> tuple[tuple[int, str] | None, BinaryIO]:
    """Ask the server in `home` to deliver; returns its (exit code, stderr line), or None with
    the stream to deliver from in-process (stdin itself, or the copy of a pipe), positioned at
    the message.

    A server that is absent, refuses, dies or is too slow means None, never an error. Only a
    pipe that cannot be copied raises (OSError): part of it is gone, so the MTA must retry.
    """
    sock = connect(os.path.join(home, SOCKET_NAME))
    if sock is None:
        return None, stdin
    with sock:
        stream = stdin
        offset = _file_offset(stdin.fileno())
        if offset is None:
            stream, complete = _spool(stdin, home)
            offset = 0
            if not complete:
                # Larger than any message worth a copy: read on in-process, where
                # max_message_size bounds it, with no second copy on disk.
                return None, _chain(stream, stdin)
        try:
            answer = _exchange(sock, request, stream.fileno(), offset)
        except (OSError, ProtocolError, ValueError):
            answer = None
    if answer is None:
        # The server reads with pread, so the position has not moved; set it all the same.
        os.lseek(stream.fileno(), offset, os.SEEK_SET)
    return answer, stream


def _exchange(sock: socket.socket, request: Request, fd: int,
              offset: int) -> tuple[int, str] | None:
    import socket

    socket.send_fds(sock, [encode_request(request, offset)], [fd])
    if sock.recv(16) != ACK:
        return None
    sock.settimeout(ANSWER_TIMEOUT)
    data = sock.recv(MAX_PACKET)
    if not data:
        return None
    return decode_reply(data)
