"""Where accepted and released mail goes: the owner's Maildir, or on to a downstream LMTP server.

A single owner's crtool writes the Maildir itself. In hub mode an owner may instead have
`lmtp_next` (Dovecot's LMTP socket, say): then the mailbox server stores the message, applies its
own filters and quotas, and writes the Return-Path and Delivered-To lines itself, so none is
prepended here. Every host of a hub can thus deliver what any other host held: the bytes are in
the shared database and delivery goes over the network, not into one host's disk.

A downstream answer of 4xx, or no answer at all, is a TemporaryFailure: the message stays with
the MTA (or held, for a release) and is tried again. A 5xx is a PermanentFailure carrying the
downstream's own words, so the MTA's bounce says what the mailbox server said.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from crtool.config import Settings
from crtool.errors import PermanentFailure, TemporaryFailure

LMTP_TIMEOUT = 60.0
_BARE_LF = re.compile(rb"(?<!\r)\n")


def deliver(settings: Settings, sender: str, recipient: str, chunks: Iterable[bytes],
            prefix: bytes = b"", name: str | None = None) -> str:
    """Deliver one message for the owner of `settings`; returns a few words saying where.

    Side effects: a new file in the owner's Maildir, or one LMTP transaction downstream.
    `prefix` (trace lines) goes before the message in a Maildir only. `name` (see
    maildir.deliver) makes a Maildir delivery idempotent; an LMTP server downstream has no
    such name, so there a crash between its 250 and crtool's commit can deliver twice.
    """
    if settings.lmtp_next:
        lmtp_deliver(settings.lmtp_next, sender, recipient, b"".join(chunks))
        return f"passed to {settings.lmtp_next}"
    from crtool import maildir

    path = maildir.deliver(settings.maildir, chunks, prefix, name)
    return f"delivered to {path.name}"


def release_name(owner: str, pending_id: str, received_at: int) -> str:
    """The Maildir name of a released message: the same on every try and every host, so a
    release retried after a crash finds the copy already written (maildir(5) asks only that
    names be unique; the held message's id is, within its owner)."""
    local = "".join(c if c.isalnum() else "_" for c in owner)[:64]
    return f"{received_at}.R{pending_id}.{local}.crtool"


def split_target(target: str) -> tuple[str, int]:
    """`unix:/path` or `/path` -> (path, 0); `host:port` -> (host, port); ValueError else."""
    if target.startswith("unix:"):
        target = target[len("unix:"):]
    if target.startswith("/"):
        return target, 0
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"not unix:PATH or HOST:PORT: {target!r}")
    return host.strip("[]"), int(port)


def lmtp_deliver(target: str, sender: str, recipient: str, data: bytes,
                 timeout: float = LMTP_TIMEOUT) -> None:
    """One LMTP transaction (RFC 2033) for one recipient; raises Temporary/PermanentFailure."""
    import smtplib

    try:
        host, port = split_target(target)
    except ValueError as error:
        raise TemporaryFailure(f"lmtp_next: {error}") from None
    # LMTP lines end in CRLF; messages are stored with the LF ends a Maildir keeps.
    wire = _BARE_LF.sub(b"\r\n", data)
    try:
        with smtplib.LMTP(host, port, timeout=timeout) as client:
            client.sendmail(sender, [recipient], wire)
    except smtplib.SMTPRecipientsRefused as error:
        code, said = error.recipients.get(recipient, (450, b"refused"))
        _raise(target, code, said)
    except smtplib.SMTPResponseException as error:
        _raise(target, error.smtp_code, error.smtp_error)
    except (smtplib.SMTPException, OSError) as error:
        raise TemporaryFailure(f"downstream {target}: {error}") from None


def _raise(target: str, code: int, said: bytes | str) -> None:
    text = said.decode("utf-8", "replace") if isinstance(said, bytes) else said
    line = f"downstream {target} answered {code} {' '.join(text.split())[:200]}"
    if 500 <= code < 600:
        raise PermanentFailure(line)
    raise TemporaryFailure(line)
