"""maildir(5) delivery: a unique file in tmp/, every write checked, fsync, link into new/.

A message is in the Maildir only once its file and the directory entry are on disk, so a crash
at any point leaves either nothing in new/ or the whole message. Errors (disk full) propagate
as OSError for the caller to turn into a temporary failure; the tmp/ file is removed first.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path

_counter = itertools.count()


def ensure(maildir: Path) -> None:
    """Create the Maildir and its three subdirectories (0700) where missing."""
    for sub in ("", "tmp", "new", "cur"):
        (maildir / sub).mkdir(mode=0o700, parents=(sub == ""), exist_ok=True)


def _unique_name() -> str:
    now = time.time()
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return f"{int(now)}.M{int(now % 1 * 1_000_000)}P{os.getpid()}Q{next(_counter)}.{host}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def delivered(maildir: Path, name: str) -> Path | None:
    """The message called `name` if it is in new/, or in cur/ (where a mail reader moves it,
    adding `:2,FLAGS`), else None."""
    if (maildir / "new" / name).exists():
        return maildir / "new" / name
    try:
        with os.scandir(maildir / "cur") as entries:
            for entry in entries:
                if entry.name == name or entry.name.startswith(name + ":"):
                    return Path(entry.path)
    except FileNotFoundError:
        pass
    return None


def deliver(maildir: Path, chunks: Iterable[bytes], prefix: bytes = b"",
            name: str | None = None) -> Path:
    """Write `prefix` and `chunks` as one new message; returns its path in new/.

    `name`, unique for this message, makes the delivery idempotent: when a message of that
    name is already in new/ or cur/ (a delivery whose process died before it could record
    it), nothing is written again and its path is returned.

    Side effects: a file in MAILDIR/new, the directories created if missing.
    """
    ensure(maildir)
    unique = _unique_name()
    if name is not None:
        found = delivered(maildir, name)
        if found is not None:
            return found
    else:
        name = unique
    # tmp/ always gets a fresh name: a file a crashed delivery left there must not block it.
    tmp = maildir / "tmp" / unique
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            _write_all(fd, prefix)
            for chunk in chunks:
                _write_all(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        target = maildir / "new" / name
        os.link(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.unlink()
    _fsync_dir(maildir / "new")
    return target
