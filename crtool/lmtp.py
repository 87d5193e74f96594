"""`crtool lmtp`: one resident LMTP server (RFC 2033, on aiosmtpd) for every owner of a host.

Postfix hands it mail (`mailbox_transport = lmtp:unix:…` or a `transport_maps` entry) the way it
hands mail to Dovecot's LMTP. aiosmtpd speaks the protocol; this module only translates:
RCPT finds the owner the recipient belongs to (550 5.1.1 when none is served), and after DATA
each recipient's delivery is `delivery.handle`, the very function `crtool deliver` and
`crtool serve` run, with that owner's settings (owners.py). Its Answer becomes that
recipient's reply: 250 when delivered, held, confirmed or dropped, 450 when the environment is
broken (the MTA keeps the message and retries), 550 when the owner's config bounces it.

Deliveries are blocking (SQLAlchemy, fsync, sendmail), so they run in a pool of `workers`
threads while the event loop goes on serving other sessions. A reply of 250 is sent only after
`handle` returned, that is after the hold or the delivery was committed, so nothing answered
250 is ever lost. What the server holds per session is bounded: `max_message_size` (552 after
DATA beyond it), `max_recipients` (452 for the rest, which the client sends again),
`max_sessions` (421 at once beyond it) and `timeout` (a silent client, or a DATA that never
ends, is disconnected and its transaction dropped, unanswered and so not lost).

SIGTERM (or SIGINT) stops listening, answers 451 to any new transaction, lets the transactions
under way finish (up to `shutdown_grace`), then closes every session and exits 0.

Each recipient's outcome is one line of JSON on stderr (journald keeps it): who, what was
decided, the reply, how long it took.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from crtool import delivery, owners
from crtool.client import Request
from crtool.config import Settings
from crtool.exits import Outcome
from crtool.onward import split_target
from crtool.owners import HUB_MTA as HUB_PROFILE

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from crtool.service import Mailbox
    from crtool.store.ledger import GroupCommit

# A served owner is looked up again after this long, so `owner add`/`remove` take effect
# within it; an address that is not served is looked up every time.
OWNER_CACHE_SECONDS = 5.0
# Serialization failures and deadlocks (PostgreSQL SQLSTATE 40001, 40P01) are retried this
# many times: the transaction was rolled back whole, so running it again is safe.
RETRIES = 3
_RETRIABLE_STATES = {"40001", "40P01"}


@dataclass(frozen=True)
class Delivered:
    """One recipient's outcome, as logged and as answered."""

    answer: delivery.Answer
    reply: str


def reply_for(answer: delivery.Answer) -> str:
    """The LMTP reply for one recipient's Answer: 250 delivered or held, 450 retry, 550 refused."""
    detail = _printable(answer.detail)
    outcome = Outcome(answer.outcome)
    if outcome is Outcome.TEMPFAIL:
        return f"450 4.3.0 {detail or 'temporary failure'}"
    if outcome is Outcome.BOUNCED:
        return f"550 5.7.1 {detail or 'rejected'}"
    return f"250 2.0.0 {detail or 'ok'}"


def _printable(text: str) -> str:
    """Reply text: printable ASCII, one line, short; nothing a sender wrote can break it."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in " ".join(text.split()))
    return cleaned[:200]


def retriable(error: BaseException) -> bool:
    """A PostgreSQL serialization failure or deadlock: the whole transaction may run again."""
    state = getattr(getattr(error, "orig", None), "sqlstate", None)
    return state in _RETRIABLE_STATES


class Hub:
    """What every session shares: the system config, owners (cached briefly), one engine per
    database URL and one group commit per engine (the delivered mail's log lines of concurrent
    deliveries share a commit), the key ring (re-read when its file changes) and the counters
    that shutdown and the session limit look at."""

    def __init__(self, system: owners.System) -> None:
        from crtool.serve import Warm

        self.system = system
        self.warm = Warm(system.home)
        self._owners: dict[str, tuple[float, Settings]] = {}
        self._owners_lock = threading.Lock()
        self._ledgers: dict[Engine, GroupCommit] = {}
        self._ledgers_lock = threading.Lock()
        self.sessions = 0
        self.busy: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self.live: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self.stopping = False

    def engine(self) -> Engine:
        return self.warm.engine(owners.host_settings(self.system))

    def ledger(self, engine: Engine) -> GroupCommit:
        """The group commit of `engine`, shared by every owner whose database it is."""
        from crtool.store.ledger import GroupCommit

        with self._ledgers_lock:
            if engine not in self._ledgers:
                self._ledgers[engine] = GroupCommit(engine)
            return self._ledgers[engine]

    def owner_for(self, recipient: str) -> Settings | None:
        """The settings of the served owner `recipient` belongs to, or None."""
        from crtool.store import owners as rows
        from crtool.store.engine import transaction

        candidates = owners.base_candidates(recipient, self.system.delimiter)
        now = time.monotonic()
        with self._owners_lock:
            for candidate in candidates:
                cached = self._owners.get(candidate)
                if cached is not None and now - cached[0] < OWNER_CACHE_SECONDS:
                    return cached[1]
        with transaction(self.engine(), write=False) as session:
            found = {row.address: row for row in rows.served(session, candidates)}
        for candidate in candidates:
            row = found.get(candidate)
            if row is not None:
                settings = owners.owner_settings(self.system, row.address, row.maildir,
                                                 row.lmtp_next, row.overrides)
                with self._owners_lock:
                    self._owners[candidate] = (now, settings)
                return settings
        return None

    def deliver(self, settings: Settings, sender: str, recipient: str, data: bytes) -> Delivered:
        """One recipient's delivery through `delivery.handle`; never raises."""
        started = time.monotonic()
        if len(data) > settings.max_message_size:
            # deliver would call a stream this long a broken environment and retry it for
            # ever; over LMTP the size is known, so this mailbox refuses it for good.
            reply = f"552 5.3.4 message larger than {settings.max_message_size} bytes"
            self.log(owner=settings.owner, sender=sender, recipient=recipient, size=len(data),
                     outcome="refused", detail="too large", reply="552", attempts=0, ms=0.0,
                     pid=os.getpid())
            return Delivered(delivery.Answer(HUB_PROFILE, Outcome.BOUNCED.value, reply), reply)
        request = Request(mta=owners.HUB_MTA, sender=sender, recipient=recipient)
        resources = _OwnerResources(self, settings)
        for attempt in range(RETRIES + 1):
            errors: list[BaseException] = []
            answer = delivery.handle(settings.home, request, io.BytesIO(data), resources,
                                     fast=False, on_error=errors.append)
            if not (errors and retriable(errors[-1])) or attempt == RETRIES:
                break
            time.sleep(0.05 * (attempt + 1))
        reply = reply_for(answer)
        self.log(owner=settings.owner, sender=sender, recipient=recipient, size=len(data),
                 outcome=answer.outcome, detail=answer.detail, reply=reply[:3],
                 attempts=attempt + 1, ms=round((time.monotonic() - started) * 1000, 1),
                 pid=os.getpid())
        return Delivered(answer, reply)

    def log(self, **fields: Any) -> None:
        """One JSON line on stderr."""
        _log_line(**fields)


class _OwnerResources:
    """delivery.Resources for one owner of the hub: its settings, the shared engine and keys."""

    def __init__(self, hub: Hub, settings: Settings) -> None:
        self.hub = hub
        self._settings = settings

    def settings(self, home: Path) -> Settings:
        return self._settings

    def mailbox(self, settings: Settings) -> Mailbox:
        from crtool import service

        warm = self.hub.warm
        engine = warm.engine(settings)
        return service.open_mailbox(settings, engine, lambda: warm.keys(settings.keys_path),
                                    ledger=self.hub.ledger(engine))


class Handler:
    """aiosmtpd's handler hooks: they translate, `Hub` and `delivery.handle` decide."""

    def __init__(self, hub: Hub, pool: ThreadPoolExecutor) -> None:
        self.hub = hub
        self.pool = pool
        self._owners: weakref.WeakKeyDictionary[Envelope, list[Settings]] = \
            weakref.WeakKeyDictionary()

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if self.hub.stopping:
            return "451 4.3.2 shutting down; try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        self.hub.busy.add(server)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if self.hub.stopping:
            return "451 4.3.2 shutting down; try again later"
        if len(envelope.rcpt_tos) >= self.hub.system.lmtp.max_recipients:
            return "452 4.5.3 too many recipients; send the rest again"
        loop = asyncio.get_running_loop()
        try:
            settings = await loop.run_in_executor(self.pool, self.hub.owner_for, address)
        except Exception as error:  # noqa: BLE001 - the database is away: try again later
            self.hub.log(event="rcpt_failed", recipient=address,
                         detail=delivery.describe(error))
            return "451 4.3.0 cannot look up the recipient now; try again later"
        if settings is None:
            return f"550 5.1.1 <{_printable(address)}>: no such mailbox here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        self._owners.setdefault(envelope, []).append(settings)
        return "250 2.1.5 OK"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.hub.busy.discard(server)
        return "250 2.0.0 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """One reply per accepted recipient, in RCPT order (RFC 2033 §4.2)."""
        try:
            owners_of = self._owners.pop(envelope, [])
            # LMTP carries CRLF line ends; a Maildir and the store keep LF, as local
            # delivery agents do. Dot-stuffing was already undone by aiosmtpd.
            data = (envelope.original_content or b"").replace(b"\r\n", b"\n")
            sender = envelope.mail_from or ""
            loop = asyncio.get_running_loop()
            replies = []
            for recipient, settings in zip(envelope.rcpt_tos, owners_of, strict=True):
                done = await loop.run_in_executor(self.pool, self.hub.deliver, settings,
                                                  sender, recipient, data)
                replies.append(done.reply)
            return "\r\n".join(replies)
        finally:
            self.hub.busy.discard(server)


class _Session(LMTP):
    """aiosmtpd's LMTP session, counted: beyond `max_sessions`, or while stopping, a new
    connection gets 421 and is closed at once."""

    def __init__(self, hub: Hub, handler: Handler, loop: asyncio.AbstractEventLoop) -> None:
        limits = hub.system.lmtp
        super().__init__(handler, data_size_limit=limits.max_message_size,
                         enable_SMTPUTF8=True, decode_data=False,
                         hostname=socket.gethostname(), ident="crtool LMTP",
                         timeout=limits.timeout, loop=loop)
        self.hub = hub
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.hub.stopping or self.hub.sessions >= self.hub.system.lmtp.max_sessions:
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(b"421 4.3.2 too many sessions or shutting down; "
                                b"try again later\r\n")
            transport.close()
            return
        self.counted = True
        self.hub.sessions += 1
        self.hub.live.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self.counted:
            return
        self.counted = False
        self.hub.sessions -= 1
        self.hub.busy.discard(self)
        self.hub.live.discard(self)
        super().connection_lost(error)


async def _listen(loop: asyncio.AbstractEventLoop, target: str, hub: Hub,
                  handler: Handler, listening: socket.socket | None) -> asyncio.Server:
    def factory() -> _Session:
        return _Session(hub, handler, loop)

    if listening is None:
        host, port = split_target(target)
        if port:
            return await loop.create_server(factory, host, port, reuse_address=True)
        listening = bind(target, hub.system.lmtp.socket_mode)
    if listening.family == socket.AF_UNIX:
        # The file is removed by whoever bound it, once: `serve` for a lone server, the
        # parent of several after all have stopped; one stopped alone and started again
        # must leave it (Python 3.13 would not).
        keep: dict[str, Any] = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}
        return await loop.create_unix_server(factory, sock=listening, **keep)
    return await loop.create_server(factory, sock=listening)


async def serve(hub: Hub, target: str, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None,
                listening: socket.socket | None = None) -> None:
    """Listen on `target` until `stop` is set (SIGTERM and SIGINT set it), then shut down
    gracefully. `ready` is set once the socket listens. `listening` is a socket already bound
    to `target` (several processes share it); the one who bound it removes its file."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (RuntimeError, ValueError):  # not the main thread: the caller sets `stop`
            pass
    limits = hub.system.lmtp
    with ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="lmtp") as pool:
        handler = Handler(hub, pool)
        server = await _listen(loop, target, hub, handler, listening)
        hub.log(event="listening", listen=target, pid=os.getpid())
        if ready is not None:
            ready.set()
        await stop.wait()
        hub.stopping = True
        server.close()
        hub.log(event="stopping", sessions=hub.sessions, busy=len(hub.busy))
        deadline = loop.time() + limits.shutdown_grace
        while hub.busy and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(hub.live):
            if session.transport is not None:
                session.transport.close()
        await server.wait_closed()
        host, port = split_target(target)
        if not port and listening is None:
            # A socket file left behind would look like a live server to the next start's
            # supervisor and to `crtool health` (connection refused, not "missing").
            Path(host).unlink(missing_ok=True)
        hub.log(event="stopped", unfinished=len(hub.busy))


def run(system: owners.System, target: str) -> int:
    """`crtool lmtp`: serve in the foreground until SIGTERM; 0 after a graceful stop. With
    `[lmtp] processes` above 1, that many server processes share one listening socket."""
    hub = Hub(system)
    hub.engine()  # a database URL that cannot make an engine fails here, at start-up
    if system.lmtp.processes == 1:
        asyncio.run(serve(hub, target))
        return 0
    hub.engine().dispose()  # no pooled connection may be shared by the forked processes
    return _Processes(system, target).run()


def bind(target: str, mode: int) -> socket.socket:
    """A listening socket for `target` (unix:PATH or HOST:PORT), bound before the server
    processes that share it are forked; a unix socket gets `mode`. HOST:PORT binds the first
    address HOST resolves to (name an address, such as 127.0.0.1 or ::1, to choose)."""
    host, port = split_target(target)
    if port:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=_BACKLOG)
    path = Path(host)
    if path.is_socket():
        path.unlink()
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(path))
    os.chmod(path, mode)
    listening.listen(_BACKLOG)
    return listening


# The accept queue of a shared socket, as asyncio's own servers have.
_BACKLOG = 100
# A server process that died on its own is started again after this long (no busy loop when
# every start fails at once).
_RESTART_DELAY = 1.0
# A server process that dies within this long of its start failed to start; after this many
# such failures in a row the parent gives up and exits 1, so that its supervisor (systemd's
# Restart=on-failure) sees the failure and clients are refused instead of left in a queue.
_START_WINDOW = 10.0
_FAILED_STARTS = 5
_PR_SET_PDEATHSIG = 1


class _Processes:
    """The parent of `processes` server processes: it binds the socket, forks them, starts
    again one that dies, and on SIGTERM passes it on, waits for every one to finish its
    transactions under way (each does as a lone server does) and removes the socket file.

    A process runs its deliveries under one interpreter lock, so one process uses at most one
    core however many worker threads it has; the kernel spreads new connections over the
    processes accepting on the one socket. A server process dies with its parent
    (PR_SET_PDEATHSIG): one left behind would keep answering on a socket nobody supervises."""

    def __init__(self, system: owners.System, target: str) -> None:
        self.system = system
        self.target = target
        self.children: dict[int, float] = {}  # pid: when it was started (monotonic)
        self.stopping = False
        self.listening: socket.socket | None = None

    def run(self) -> int:
        self.listening = bind(self.target, self.system.lmtp.socket_mode)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        for _ in range(self.system.lmtp.processes):
            self._spawn()
        _log_line(event="processes", listen=self.target, pid=os.getpid(),
                  children=sorted(self.children))
        failed_starts = 0
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            started = self.children.pop(pid, 0.0)
            if self.stopping:
                continue
            _log_line(event="process_died", pid=pid, status=os.waitstatus_to_exitcode(status))
            failed_starts = failed_starts + 1 \
                if time.monotonic() - started < _START_WINDOW else 0
            if failed_starts >= _FAILED_STARTS:
                _log_line(event="processes_failed", pid=os.getpid(),
                          detail=f"{failed_starts} server processes in a row died at start")
                self._stop(signal.SIGTERM, None)
                continue
            time.sleep(_RESTART_DELAY)
            self._spawn()
        self._close()
        host, port = split_target(self.target)
        if not port:
            Path(host).unlink(missing_ok=True)
        _log_line(event="processes_stopped", pid=os.getpid())
        return 1 if failed_starts >= _FAILED_STARTS else 0

    def _stop(self, signum: int, _frame: object) -> None:
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        # The children stop accepting at once; with the parent's copy closed too, a new
        # connection is refused rather than left waiting in a queue nobody reads.
        self._close()

    def _close(self) -> None:
        if self.listening is not None:
            self.listening.close()
            self.listening = None

    def _spawn(self) -> None:
        signals = {signal.SIGTERM, signal.SIGINT}
        # Blocked across the fork, so that the child never runs the parent's handler, and
        # so that a stop cannot come between the look at `stopping` and the child's pid
        # being known to it.
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            listening = self.listening
            if self.stopping or listening is None:
                return
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:
                for signum in signals:
                    signal.signal(signum, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
                _serve_child(self.system, self.target, listening, parent)
            self.children[pid] = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def _serve_child(system: owners.System, target: str, listening: socket.socket,
                 parent: int) -> None:
    """One server process: the hub on the shared socket until SIGTERM; never returns."""
    code = 0
    try:
        _die_with_parent(parent)
        asyncio.run(serve(Hub(system), target, listening=listening))
    except BaseException:  # noqa: BLE001 - said on stderr; the parent starts another
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)


def _die_with_parent(parent: int) -> None:
    """SIGTERM when `parent` (its pid taken before the fork) dies; at once if it already
    has: the child's own getppid() after the fork would already name its new parent."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


_LOG_LOCK = threading.Lock()


def _log_line(**fields: Any) -> None:
    """One JSON line on stderr, whole: the server processes share it."""
    line = json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields},
                      ensure_ascii=True)
    with _LOG_LOCK:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
