"""The owner's existing mail and address books, read as streams: Maildirs, mbox files, vCard
files and TMDA list files (for `crtool learn` and `crtool simulate`).

Memory is flat in the size of a source: an mbox is read line by line (each line read in pieces
of at most LINE_CAP bytes), only each message's header block is kept, at most HEAD_CAP bytes of
it, and the body is skipped. Nothing here raises for bad input: what cannot be read is yielded
as a `Skip` with the reason, so the caller counts it and goes on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from crtool import addresses, entries
from crtool.errors import UsageError

HEAD_CAP = 256 * 1024
LINE_CAP = 64 * 1024

MAILDIR = "maildir"
MBOX = "mbox"
VCARD = "vcard"
TMDA = "tmda"


@dataclass(frozen=True)
class Mail:
    """One message's header block, and where it was found (for --verbose)."""

    head: bytes
    where: str


@dataclass(frozen=True)
class Card:
    addresses: list[str]
    where: str


@dataclass(frozen=True)
class Listed:
    """A TMDA line translated: which list, and the entry."""

    list_name: str
    pattern: addresses.Pattern
    where: str


@dataclass(frozen=True)
class Skip:
    reason: str
    where: str


Item = Mail | Card | Listed | Skip


def kind_of(path: Path) -> str:
    """What a source is: a directory with cur/ or new/ is a Maildir; a file is an mbox when it
    starts with a "From " line, a vCard file when it starts with BEGIN:VCARD, else a TMDA list
    file. UsageError for a path that is neither (missing, a directory of something else)."""
    if path.is_dir():
        if (path / "cur").is_dir() or (path / "new").is_dir():
            return MAILDIR
        raise UsageError(f"{path}: a directory but not a Maildir (no cur/ or new/)")
    try:
        with open(path, "rb") as handle:
            start = handle.read(4096)
    except OSError as error:
        raise UsageError(f"{path}: cannot be read: {error.strerror}") from None
    first = start.lstrip(b"\xef\xbb\xbf \t\r\n")
    if first.startswith(b"From "):
        return MBOX
    if first[:11].upper() == b"BEGIN:VCARD":
        return VCARD
    return TMDA


def _head_of(read: BinaryIO) -> bytes:
    """The header block at the start of a stream, at most HEAD_CAP bytes."""
    lines = []
    size = 0
    while size < HEAD_CAP:
        line = read.readline(LINE_CAP)
        if not line or not line.strip(b"\r\n"):
            break
        lines.append(line)
        size += len(line)
    return b"".join(lines)


def maildir_messages(path: Path) -> Iterator[Mail | Skip]:
    for sub in ("cur", "new"):
        folder = path / sub
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            if name.startswith("."):
                continue
            where = f"{folder / name}"
            try:
                with open(folder / name, "rb") as handle:
                    head = _head_of(handle)
            except OSError as error:
                yield Skip(f"unreadable ({error.strerror})", where)
                continue
            yield Mail(head, where) if head else Skip("no header block", where)


def mbox_messages(path: Path) -> Iterator[Mail | Skip]:
    """Each message of an mbox (mboxo/mboxrd: a message starts at a "From " line at the start
    of the file or after an empty line). A stretch before the first "From " line, or a message
    whose header block is empty, is skipped with its reason."""
    with open(path, "rb") as handle:
        state = "junk"  # junk (before the first "From "), head, body
        head: list[bytes] = []
        size = number = 0
        after_blank = whole_line = True
        junk = False
        for piece in iter(lambda: handle.readline(LINE_CAP), b""):
            starts_line, whole_line = whole_line, piece.endswith(b"\n")
            if starts_line and after_blank and piece.startswith(b"From "):
                if state == "head":
                    yield _mail(head, f"{path}#{number}")
                number += 1
                state, head, size, after_blank = "head", [], 0, False
                continue
            blank = starts_line and not piece.strip(b"\r\n")
            if starts_line:
                after_blank = blank
            if state == "junk":
                junk = junk or bool(piece.strip())
            elif state == "head":
                if blank:
                    yield _mail(head, f"{path}#{number}")
                    state, head = "body", []
                elif size < HEAD_CAP:
                    head.append(piece)
                    size += len(piece)
        if state == "head":
            yield _mail(head, f"{path}#{number}")
        if junk:
            yield Skip('text before the first "From " line', f"{path}#0")


def _mail(head: list[bytes], where: str) -> Mail | Skip:
    return Mail(b"".join(head), where) if head else Skip("no header block", where)


def messages(path: Path) -> Iterator[Mail | Skip]:
    """The messages of a Maildir or an mbox file."""
    kind = kind_of(path)
    if kind == MAILDIR:
        return maildir_messages(path)
    if kind == MBOX:
        return mbox_messages(path)
    raise UsageError(f"{path}: neither a Maildir nor an mbox file")


def _unfolded(handle: BinaryIO) -> Iterator[str]:
    current: str | None = None
    while True:
        piece = handle.readline(LINE_CAP)
        if not piece:
            break
        line = piece.decode("utf-8", "replace").rstrip("\r\n")
        if line[:1] in (" ", "\t") and current is not None:
            current += line[1:]
            continue
        if current is not None:
            yield current
        current = line
    if current is not None:
        yield current


def vcards(path: Path) -> Iterator[Card | Skip]:
    """The EMAIL properties of each card (vCard 2.1, 3.0, 4.0; `item1.EMAIL;TYPE=…:`)."""
    with open(path, "rb") as handle:
        number = 0
        found: list[str] | None = None
        for line in _unfolded(handle):
            name, colon, value = line.partition(":")
            upper = name.strip().upper()
            if upper == "BEGIN" and value.strip().upper() == "VCARD":
                number += 1
                found = []
            elif upper == "END" and value.strip().upper() == "VCARD" and found is not None:
                where = f"{path}#card{number}"
                yield Card(found, where) if found else Skip("vcard without an address", where)
                found = None
            elif colon and found is not None:
                prop = upper.split(";", 1)[0].rsplit(".", 1)[-1]
                if prop == "EMAIL":
                    address = value.strip()
                    if address.lower().startswith("mailto:"):
                        address = address[7:]
                    if len(found) < 100:
                        found.append(address)
        if found is not None:
            yield Skip("vcard without END:VCARD", f"{path}#card{number}")


# TMDA's actions, as crtool's lists understand them.
_WHITE_ACTIONS = frozenset({"ok", "accept", "deliver"})
_BLACK_ACTIONS = frozenset({"bounce", "reject", "drop", "exit", "stop"})
_UNTRANSLATABLE_SOURCES = frozenset({
    "to", "to-file", "to-dbm", "to-cdb", "to-ezmlm", "to-mailman", "to-mysql", "to-sql",
    "from-file", "from-dbm", "from-cdb", "from-ezmlm", "from-mailman", "from-mysql", "from-sql",
    "body", "body-file", "headers", "headers-file", "size", "pipe",
})


def tmda_line(line: str) -> list[tuple[str, addresses.Pattern]] | str:
    """A line of a TMDA list or filter file as crtool entries, or the reason it cannot be.

    `bob@x.test`, `from bob@x.test ok`, `*@*.x.test`, `*@=x.test` (x.test and its subdomains:
    two entries), `foe@x.test bounce` (blacklist); actions ok/accept/deliver whitelist,
    bounce/reject/drop/exit/stop blacklist. An empty or comment line is `[]`."""
    text = line.split(" #", 1)[0].split("\t#", 1)[0].strip()
    if not text or text.startswith("#"):
        return []
    words = text.split()
    if words[0].lower() in _UNTRANSLATABLE_SOURCES:
        return f"TMDA source {words[0]!r} has no crtool equivalent"
    if words[0].lower() == "from":
        words = words[1:]
    if not words:
        return "no pattern"
    pattern_text = words[0]
    if pattern_text.startswith("-"):
        return f"TMDA option {pattern_text!r} has no crtool equivalent"
    action = words[1].lower().split("=", 1)[0] if len(words) > 1 else "ok"
    if action in _WHITE_ACTIONS:
        list_name = "white"
    elif action in _BLACK_ACTIONS:
        list_name = "black"
    else:
        return f"TMDA action {action!r} has no crtool equivalent"
    if len(words) > 2:
        return "more than a pattern and an action"
    local, domain = addresses.split_address(pattern_text)
    texts = [pattern_text]
    if domain.startswith("="):
        if local != "*":
            return f"cannot translate {pattern_text!r}"
        texts = ["@" + domain[1:], "*@*." + domain[1:]]
    try:
        return [(list_name, entries.parse_entry(t)) for t in texts]
    except UsageError:
        return f"cannot translate {pattern_text!r}"


def tmda_entries(path: Path) -> Iterator[Listed | Skip]:
    with open(path, "rb") as handle:
        number = 0
        for number, piece in enumerate(iter(lambda: handle.readline(LINE_CAP), b""), 1):
            where = f"{path}:{number}"
            try:
                line = piece.decode("utf-8")
            except UnicodeDecodeError:
                yield Skip("not UTF-8 text", where)
                continue
            found = tmda_line(line)
            if isinstance(found, str):
                yield Skip(found, where)
                continue
            for list_name, pattern in found:
                yield Listed(list_name, pattern, where)


def items(path: Path) -> Iterator[Item]:
    """Everything a source holds, whatever its kind."""
    kind = kind_of(path)
    if kind == VCARD:
        return vcards(path)
    if kind == TMDA:
        return tmda_entries(path)
    return messages(path)
