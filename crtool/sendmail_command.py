"""`crtool sendmail`: the owner's mail program's sendmail, in front of the real one.

    mutt:            set sendmail="/usr/local/bin/crtool sendmail"
    git send-email:  git config --global sendemail.sendmailcmd "/usr/local/bin/crtool sendmail"

It reads the message's header block, gives the message a signed Message-ID when it has none,
streams header block and body to the configured `sendmail` run with the very same arguments,
and exits with its code. Only when that exits 0 does it whitelist the recipients and record the
Message-ID (outgoing.py). The message is never held whole in memory: the body is copied from
stdin to the real sendmail's stdin in pieces.

The owner's outgoing mail must never wait for crtool: a config, key ring or database that
cannot be used makes it skip its own part with one line on stderr, and the mail goes out as it
would have without crtool (the `sendmail` setting, else the system's sendmail). A command line
that sends nothing (`-bp`, `-bs`, `-q` ...) is handed over untouched.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import BinaryIO

from crtool import sendmail_args
from crtool.config import Settings, default_sendmail, load_settings
from crtool.exits import EX_TEMPFAIL

CHUNK = 64 * 1024
HEAD_CAP = 1024 * 1024
# Set for the real sendmail: a `sendmail` setting that runs `crtool sendmail` again would
# otherwise call itself for ever.
DEPTH_ENV = "CRTOOL_SENDMAIL_ACTIVE"
# How long recording may wait for the database lock: the mail is sent by then and the mail
# program is waiting.
RECORD_TIMEOUT = 10
_ADDRESS_HEADERS = ("to", "cc", "bcc")
_RESENT_HEADERS = ("resent-to", "resent-cc", "resent-bcc")


def say(line: str) -> None:
    sys.stderr.write(f"crtool sendmail: {line}\n")
    sys.stderr.flush()


def read_head(stream: BinaryIO, ignore_dots: bool) -> tuple[bytes, bool]:
    """The header block (up to the empty line that ends it, at most HEAD_CAP bytes) and
    whether the message ended inside it. Side effect: consumes it from `stream`."""
    parts: list[bytes] = []
    size = 0
    while size < HEAD_CAP:
        line = stream.readline(HEAD_CAP - size)
        if not line:
            return b"".join(parts), True
        parts.append(line)
        size += len(line)
        if line in (b"\n", b"\r\n") or (not ignore_dots and line.rstrip(b"\r\n") == b"."):
            break
    return b"".join(parts), False


def _headers(head: bytes) -> tuple[bytes, bytes]:
    """(the mbox `From ` line a mail program may put first, or b"", the header fields)."""
    if head.startswith(b"From "):
        end = head.find(b"\n") + 1 or len(head)
        return head[:end], head[end:]
    return b"", head


def header_recipients(head: bytes) -> list[str]:
    """The recipients `-t` takes from the header block: Resent-To/Cc/Bcc when the message
    has any Resent- field (a resent message), else To, Cc and Bcc."""
    from crtool.outgoing import recipient_addresses

    fields = BytesHeaderParser(policy=compat32).parsebytes(_headers(head)[1])
    resent = any(name.lower().startswith("resent-") for name in fields.keys())
    names = _RESENT_HEADERS if resent else _ADDRESS_HEADERS
    values = [str(value) for name in names for value in fields.get_all(name, [])]
    return recipient_addresses(values)


def message_id_of(head: bytes) -> tuple[bool, str]:
    """(whether the header block has a Message-ID field, its valid msg-id or "")."""
    from crtool.message import parse_head

    facts = parse_head(_headers(head)[1])
    return facts.has("message-id"), facts.message_id


def with_message_id(head: bytes, message_id: str) -> bytes:
    """The header block with a Message-ID field first (after a `From ` line), in the line
    ending the message uses."""
    from_line, fields = _headers(head)
    ending = b"\r\n" if fields.split(b"\n", 1)[0].endswith(b"\r") else b"\n"
    return from_line + b"Message-ID: " + message_id.encode("ascii") + ending + fields


def _settings(home: Path) -> Settings | None:
    try:
        return load_settings(home)
    except Exception as error:  # noqa: BLE001 - the mail goes out whatever is wrong here
        say(f"{error}; sending without whitelisting or recording")
        return None


def _mint(settings: Settings) -> str:
    """A signed Message-ID, or "" (with one line said) when the key ring cannot be read."""
    import time

    from crtool import addresses, replies, tokens

    try:
        keys = tokens.secrets_of(tokens.load_keys(settings.keys_path))
    except Exception as error:  # noqa: BLE001 - the mail goes out without our Message-ID
        say(f"{error}; the MTA gives the Message-ID, replies will not be recognised")
        return ""
    domain = addresses.split_address(settings.address)[1]
    return replies.mint(keys, settings.owner, domain, int(time.time()))


def _send(argv: list[str], head: bytes, rest: BinaryIO | None) -> int:
    """Run the real sendmail with `head` and then the rest of stdin on its stdin; its exit
    code, or EX_TEMPFAIL (one line said) when it cannot be run."""
    env = dict(os.environ)
    env[DEPTH_ENV] = "1"
    try:
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, env=env)  # noqa: S603
    except OSError as error:
        say(f"cannot run {argv[0]}: {error.strerror}")
        return EX_TEMPFAIL
    pipe = process.stdin
    if pipe is None:  # pragma: no cover - stdin=PIPE always gives one
        return process.wait()
    try:
        pipe.write(head)
        while rest is not None and (chunk := rest.read(CHUNK)):
            pipe.write(chunk)
    except BrokenPipeError:
        pass  # it stopped reading: its exit code says why
    finally:
        try:
            pipe.close()
        except BrokenPipeError:
            pass
    return process.wait()


def _bounded(url: str) -> str:
    """`url` with a connect timeout for PostgreSQL: a database host that does not answer
    must not keep the mail program waiting for the system's TCP timeout (minutes)."""
    from sqlalchemy import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or "connect_timeout" in parsed.query:
        return url
    return parsed.update_query_dict({"connect_timeout": str(RECORD_TIMEOUT)}).render_as_string(
        hide_password=False)


def _record(settings: Settings, recipients: Sequence[str], message_id: str) -> None:
    import time

    try:
        from crtool import outgoing
        from crtool.store.engine import make_engine

        engine = make_engine(_bounded(settings.database_url),
                             timeout=min(settings.database_timeout, RECORD_TIMEOUT))
        try:
            outgoing.record(settings, engine, recipients, message_id, int(time.time()))
        finally:
            engine.dispose()
    except Exception as error:  # noqa: BLE001 - the mail is sent: say so, exit its code
        from crtool.delivery import describe

        say(f"sent, but not recorded: {describe(error)}")


def run(home: Path | None, argv: Sequence[str]) -> int:
    """Send what stdin holds as the real sendmail would, with `argv` (sendmail's arguments);
    the real sendmail's exit code. Without `home` nothing is recorded."""
    invocation = sendmail_args.parse(argv)
    if os.environ.get(DEPTH_ENV):
        say("the sendmail setting runs crtool sendmail itself; set it to the MTA's "
             "sendmail (e.g. /usr/sbin/sendmail)")
        return EX_TEMPFAIL
    settings = _settings(home) if home is not None else None
    try:
        command = shlex.split(settings.sendmail) if settings is not None else []
    except ValueError as error:
        say(f"the sendmail setting cannot be read ({error}); sending through "
            f"{default_sendmail()} without whitelisting or recording")
        settings, command = None, []
    real = [*(command or [default_sendmail()]), *argv]
    if not invocation.sends or sys.stdin is None:
        return _run_plain(real)
    stream = sys.stdin.buffer
    head, ended = read_head(stream, invocation.ignore_dots)
    message_id = ""
    try:
        has_id, message_id = message_id_of(head)
        if settings is not None and not has_id:
            message_id = _mint(settings)
            if message_id:
                head = with_message_id(head, message_id)
    except Exception as error:  # noqa: BLE001 - crtool's part fails, the mail goes out as is
        say(f"sending without a Message-ID of crtool's: {error}")
        message_id = ""
    code = _send(real, head, None if ended else stream)
    if code != 0 or settings is None:
        return code
    try:
        from crtool.outgoing import recipient_addresses

        recipients = recipient_addresses(list(invocation.recipients))
        if invocation.extract:
            recipients = list(dict.fromkeys([*recipients, *header_recipients(head)]))
    except Exception as error:  # noqa: BLE001 - sent: the mail program must not send again
        say(f"sent, but not recorded: {error}")
        return code
    _record(settings, recipients, message_id)
    return code


def _run_plain(argv: list[str]) -> int:
    """A command line that sends nothing (or speaks SMTP on stdin, -bs): run as it is, with
    stdin, stdout and stderr shared."""
    env = dict(os.environ)
    env[DEPTH_ENV] = "1"
    try:
        return subprocess.run(argv, env=env, check=False).returncode  # noqa: S603
    except OSError as error:
        say(f"cannot run {argv[0]}: {error.strerror}")
        return EX_TEMPFAIL


def _global_home(words: Sequence[str]) -> tuple[str | None, bool, list[str]]:
    """(--home, whether --config was given, sendmail's arguments) of a command line whose
    command is `sendmail` (cli.command_word)."""
    home: str | None = None
    system = False
    position = 0
    while position < len(words):
        word = words[position]
        if word == "sendmail":
            return home, system, list(words[position + 1:])
        name, eq, value = word.partition("=")
        takes = len(name) > 3 and ("--home".startswith(name) or "--config".startswith(name))
        if takes and not eq:
            value = words[position + 1] if position + 1 < len(words) else ""
            position += 1
        if takes and "--home".startswith(name):
            home = value
        elif takes:
            system = True
        position += 1
    return home, system, []


def run_words(words: Sequence[str]) -> int:
    """`crtool [--home H] sendmail ARGS…` as cli.main got it: HOME from the global options
    before the command, sendmail's own arguments after it."""
    from crtool.config import resolve_home

    home, system, arguments = _global_home(words)
    if system:
        # Hub mode has no one owner to record for here: the mail goes out all the same.
        say("system mode (--config) names no owner; sending without whitelisting or "
            "recording")
        return run(None, arguments)
    return run(resolve_home(home, os.environ), arguments)
