"""One delivery, from what the MTA handed over to an Answer: the code both ways of running share.

`crtool deliver` runs `handle` in its own process when no server answers; `crtool serve` runs
the same `handle` for each client. So there is one implementation of the delivery, and the two
differ only in where the engine, settings and keys come from (`Resources`) and in whether the
fast read path is tried first (it only pays where SQLAlchemy is not imported yet).

Every exception becomes an Answer here. `status` turns an Answer into the exit code and the
stderr line through exits.py, in the server (which sends both to the client) as in-process;
`cli.main` returns the code either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from crtool import exits
from crtool.client import Request
from crtool.errors import PermanentFailure, TemporaryFailure
from crtool.exits import Outcome

if TYPE_CHECKING:
    from crtool.config import Settings
    from crtool.service import Mailbox


@dataclass(frozen=True)
class Answer:
    """The outcome of one delivery: the exit profile (exits.GUESSED when it is only guessed),
    exits.Outcome's value, and why."""

    mta: str
    outcome: str
    detail: str


def status(answer: Answer) -> tuple[int, str]:
    """The exit code and the stderr line ("" for none) for an Answer (contract §2)."""
    outcome = Outcome(answer.outcome)
    line = exits.stderr_line(outcome, answer.mta, answer.detail)
    return exits.code(outcome, answer.mta), line or ""


def failure(request: Request, error: BaseException) -> Answer:
    """A delivery that broke before `handle` could say anything: a retry."""
    detail = str(error) if isinstance(error, TemporaryFailure) else describe(error)
    return Answer(guess_mta(request), Outcome.TEMPFAIL.value, detail)


class Resources(Protocol):
    """Where a delivery gets its settings and its Mailbox (engine, outbox, keys)."""

    def settings(self, home: Path) -> Settings: ...

    def mailbox(self, settings: Settings) -> Mailbox: ...


class OneShot:
    """Resources made fresh for one delivery and dropped with the process; `loaded` keeps
    the settings read, for what the process does after the delivery (autostart.py)."""

    loaded: Settings | None = None

    def settings(self, home: Path) -> Settings:
        from crtool.config import load_settings

        self.loaded = load_settings(home)
        return self.loaded

    def mailbox(self, settings: Settings) -> Mailbox:
        from crtool import service

        return service.open_mailbox(settings)


def guess_mta(request: Request) -> str:
    """The profile before the config is read: a qmail environment has DTLINE; anything else
    gets the sysexits profile, whose 75 both qmail and Postfix retry (111 would bounce under
    Postfix)."""
    if request.mta:
        return request.mta
    if b"DTLINE" in request.environ or b"RPLINE" in request.environ:
        return "qmail"
    return exits.GUESSED


def describe(error: BaseException) -> str:
    """One line for an unexpected error, saying what broke rather than where."""
    try:
        from sqlalchemy.exc import DBAPIError, SQLAlchemyError

        if isinstance(error, DBAPIError) and error.orig is not None:
            said = " ".join(str(error.orig).split())[:300]
            # Under WAL a full disk shows as "disk I/O error" (the -shm file cannot grow);
            # SQLite's error name says which write failed, the hint says what to look at.
            name = getattr(error.orig, "sqlite_errorname", "")
            if name.startswith(("SQLITE_IOERR", "SQLITE_FULL")):
                return f"database error: {said} ({name}): is the disk full or failing?"
            return f"database error: {said}"
        if isinstance(error, SQLAlchemyError):
            return f"database error: {' '.join(str(error).split())[:300]}"
    except ImportError:  # pragma: no cover - sqlalchemy is a dependency
        pass
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror or error}{where}"
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def handle(home: Path, request: Request, stream: BinaryIO, resources: Resources,
           fast: bool, on_error: Callable[[BaseException], None] | None = None) -> Answer:
    """Deliver the message on `stream`; never raises (an Exception becomes a retry).

    `fast` tries the stdlib-only whitelisted check first (fastpath.py). `on_error` is given
    each unexpected exception (for --debug, or the server's log).
    """
    mta = guess_mta(request)
    try:
        from crtool.config import with_mta
        from crtool.envelope import Envelope, RawMessage
        from crtool.message import parse_head

        settings = with_mta(resources.settings(home), request.mta)
        mta = settings.mta
        envelope = Envelope.from_environ(request.environ, request.sender, request.recipient)
        # Only a pipe from a sysexits MTA starts with an mbox `From ` line; LMTP never does.
        raw = RawMessage.read(stream, strip_from_line=mta not in ("qmail", "lmtp"),
                              limit=settings.max_message_size)
        facts = parse_head(raw.head)  # once per delivery: both paths read these
        if fast:
            from crtool import acceptance, fastpath, tally

            key = fastpath.whitelisted(settings, envelope, facts)
            if key is not None:
                outcome, detail = acceptance.accept(settings, envelope, raw, key)
                tally.count_delivery(settings.home)
                return Answer(mta, outcome.value, detail)
        from crtool import service

        result = service.deliver(resources.mailbox(settings), envelope, raw, facts)
        outcome, detail = result.outcome, result.detail
    except TemporaryFailure as error:
        outcome, detail = Outcome.TEMPFAIL, str(error)
    except PermanentFailure as error:
        outcome, detail = Outcome.BOUNCED, str(error)
    except BaseException as error:  # noqa: BLE001 - anything unexpected: the MTA retries
        if on_error is not None:
            on_error(error)
        outcome, detail = Outcome.TEMPFAIL, describe(error)
    return Answer(mta, outcome.value, detail)
