"""`crtool doctor`: look over an installation and name each thing that would make `deliver`
tempfail (or worse), one line per problem, before the MTA finds out.

Every check runs even when an earlier one failed, so one run lists everything to fix. Nothing
is changed: the database is opened read-only, the template rendered with sample values.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from crtool.config import KEYS_NAME, Settings, load_settings
from crtool.errors import TemporaryFailure


def _private(path: Path, what: str, allowed: int) -> Iterator[str]:
    """`path` exists, belongs to this user and has no permission bits beyond `allowed`."""
    try:
        info = path.stat()
    except FileNotFoundError:
        yield f"{what} {path} is missing (run 'crtool init')"
        return
    except OSError as error:
        yield f"{what} {path} cannot be examined: {error.strerror}"
        return
    if info.st_uid != os.geteuid():
        yield f"{what} {path} belongs to uid {info.st_uid}, not to this user ({os.geteuid()})"
    mode = stat.S_IMODE(info.st_mode)
    if mode & ~allowed:
        yield f"{what} {path} has mode {mode:o}; chmod {allowed:o} it"


def check_home(home: Path) -> Iterator[str]:
    yield from _private(home, "HOME", 0o700)


def check_keys(home: Path) -> Iterator[str]:
    from crtool.tokens import load_keys

    path = home / KEYS_NAME
    problems = list(_private(path, "key ring", 0o600))
    yield from problems
    if not problems:
        try:
            load_keys(path)
        except TemporaryFailure as error:
            yield str(error)


def check_database(settings: Settings) -> Iterator[str]:
    from sqlalchemy import text

    from crtool.store import schema
    from crtool.store.engine import make_engine, sqlite_path

    try:
        engine = make_engine(settings.database_url, timeout=settings.database_timeout)
    except TemporaryFailure as error:
        yield str(error)
        return
    path = sqlite_path(settings.database_url)
    if path is not None:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            mode = 0  # what cannot be examined is reported below, when SQLite cannot open it
        if mode & 0o077:
            yield f"database {path} has mode {mode:o}: it holds mail; chmod 600 it"
    try:
        if engine.dialect.name == "sqlite":
            with engine.connect() as connection:
                found = [row[0] for row in connection.exec_driver_sql("PRAGMA quick_check")]
            if found != ["ok"]:
                yield f"database fails PRAGMA quick_check: {'; '.join(found)[:300]}"
                return
        else:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        current, head = schema.current(engine), schema.head()
        if current != head:
            yield (f"database schema is at {current or 'no revision'}, the newest is {head}; "
                   "run 'crtool db upgrade'")
    except Exception as error:  # noqa: BLE001 - any failure to read the database is the finding
        said = getattr(error, "orig", None) or error
        yield f"database cannot be read or checked: {' '.join(str(said).split())[:300]}"
    finally:
        engine.dispose()


def check_sendmail(settings: Settings) -> Iterator[str]:
    try:
        argv = shlex.split(settings.sendmail)
    except ValueError as error:
        yield f"sendmail command {settings.sendmail!r} does not parse: {error}"
        return
    if not argv:
        yield "sendmail command is empty"
        return
    program = argv[0]
    found = shutil.which(program) if "/" not in program else program
    if found is None or not Path(found).is_file():
        yield f"sendmail {program} not found"
    elif not os.access(found, os.X_OK):
        yield f"sendmail {program} is not executable"


def check_template(settings: Settings) -> Iterator[str]:
    from crtool import challenge
    from crtool.message import parse_head

    sample = b"From: Bob <bob@example.com>\nSubject: Hello\nMessage-ID: <1@example.com>\n\nHi\n"
    context = challenge.context_for(settings, "bob@example.com", parse_head(sample), sample,
                                    "a" * 24, 0, "aaaaaaaa")
    try:
        challenge.render(settings, context)
    except TemporaryFailure as error:
        yield str(error)


def check_socket(home: Path) -> Iterator[str]:
    """A crtool.sock no server answers on is left from a `crtool serve` that died: each
    delivery then tries it before doing the work itself."""
    from crtool.client import SOCKET_NAME, listening

    path = home / SOCKET_NAME
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        yield f"{path} is not a socket; remove it"
    elif not listening(str(path)):
        yield (f"{path} is stale: no crtool serve answers on it; start crtool serve or "
               "remove the file")


def check_dotfiles(settings: Settings) -> Iterator[str]:
    from crtool import dotfiles

    yield from dotfiles.problems(settings)


def problems(home: Path) -> list[str]:
    """Every problem found, in the order a delivery would meet them."""
    found = list(check_home(home))
    try:
        settings = load_settings(home)
    except TemporaryFailure as error:
        found.append(str(error))
        found.extend(check_keys(home))
        return found
    found.extend(check_keys(settings.home))
    found.extend(check_database(settings))
    found.extend(check_sendmail(settings))
    found.extend(check_template(settings))
    found.extend(check_dotfiles(settings))
    found.extend(check_socket(settings.home))
    return found


def run(home: Path) -> list[str]:
    """The problems of the installation in `home` (an empty list: healthy)."""
    if not home.is_dir():
        return [f"HOME {home} is missing (run 'crtool init')"]
    return problems(home)
