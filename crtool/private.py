"""Files that hold mail or secrets, written so that nobody else can steer the write.

An administrator may run `crtool --home ~user/.crtool init` as root. If crtool then followed a
symbolic link the user planted (HOME itself, `config.toml`, a temporary file beside the key
ring), root would write lines the user chose into a file the user chose. So HOME must be a real
directory owned by whoever runs crtool, every file is reached through a descriptor of its
directory opened with O_NOFOLLOW, a file is replaced by writing a temporary file under a fresh
name (O_CREAT | O_EXCL | O_NOFOLLOW, 0600 from the first byte) and renaming it over the old one
(a rename replaces a planted link, never its target), and a file is read with O_NOFOLLOW.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

from crtool.errors import UsageError

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
PRIVATE = 0o600


def open_directory(path: Path, what: str = "directory") -> int:
    """A descriptor of `path`, a real directory (not a symbolic link) that belongs to the user
    running crtool; UsageError otherwise. The caller closes it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
    except OSError as error:
        if error.errno == errno.ELOOP or path.is_symlink():
            raise UsageError(f"{what} {path} is a symbolic link; give the real directory") \
                from None
        if error.errno == errno.ENOTDIR:
            raise UsageError(f"{what} {path} is not a directory") from None
        raise UsageError(f"{what} {path} cannot be opened: {error.strerror}") from None
    owner = os.fstat(fd).st_uid
    if owner != os.geteuid():
        os.close(fd)
        raise UsageError(f"{what} {path} belongs to uid {owner}, not to this user "
                         f"({os.geteuid()}): run crtool as its owner")
    return fd


def prepare_home(home: Path) -> None:
    """Create HOME (0700) where missing, refuse it when it is a link or someone else's, and
    make it 0700. Side effect: the directory (and missing parents, with the umask's mode)."""
    home.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(home, 0o700)
    except FileExistsError:
        pass
    fd = open_directory(home, "HOME")
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def read_file(path: Path) -> bytes | None:
    """The bytes of `path`, never through a symbolic link; None when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UsageError(f"{path} is a symbolic link; crtool does not follow it") from None
        raise UsageError(f"{path} cannot be read: {error.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def replace_file(path: Path, data: bytes, mode: int = PRIVATE) -> None:
    """Write `data` as `path`, atomically: a fresh temporary file in the same directory
    (O_EXCL | O_NOFOLLOW, created with `mode`), fsynced, renamed over `path`, the directory
    fsynced. The directory must be a real one owned by this user (open_directory).
    Side effect: the file; nothing else is written, whatever links lie around."""
    dir_fd = open_directory(path.parent)
    try:
        temporary = f".{path.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, mode,
                     dir_fd=dir_fd)
        try:
            try:
                os.fchmod(fd, mode)  # the umask may have taken bits `mode` asks for
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(temporary, dir_fd=dir_fd)
            except OSError:
                pass
            raise
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def create_empty(path: Path) -> None:
    """Create `path` empty and 0600 unless it exists; a symbolic link there is refused, so
    a program that then opens the path by name (SQLite) opens this very file. SQLite gives
    the -wal and -shm files it makes beside a database the database's mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, PRIVATE)
    except FileExistsError:
        if path.is_symlink():
            raise UsageError(f"{path} is a symbolic link; crtool does not follow it") from None
        return
    os.close(fd)
