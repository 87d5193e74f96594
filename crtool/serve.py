"""`crtool serve`: the resident mode, like spamd to `deliver`'s spamc.

It runs in the foreground (daemontools, runit or systemd supervise it; samples in etc/), keeps
SQLAlchemy, the engine, the challenge templates and the key ring loaded, and listens on
HOME/crtool.sock (0600, in the owner's 0700 HOME). Each connection is one delivery: the client
passes the envelope and the message's file descriptor (client.py says why), and the server runs
`delivery.handle` on it, the very code `deliver` runs in-process, then answers with the outcome.
Only the owner's own processes are served: the kernel's SO_PEERCRED uid must be ours.

Each delivery runs in its own thread with its own pooled SQLite connection; SQLite's BEGIN
IMMEDIATE (or PostgreSQL's row lock) orders them exactly as it orders separate processes.
The server never owns the message: until it has answered, the client can still deliver
in-process, and a hold the server committed first is found again by its digest. So stopping or
killing the server at any moment loses nothing.

Expired held mail is purged at start and then hourly, in a thread of its own beside the
deliveries; the clock that schedules it (and dates the deliveries) is passed in.

With `idle` (`serve --idle`, what autostart.py starts) the server exits once that long has
passed without a delivery: it takes the socket's name away first, so that no new client finds
it, serves whatever had connected before that, and exits. A server that may go away at any
idle moment is not the place for scheduled work, so it mails no digest (cron or a supervised
server does). Every server holds HOME/serve.lock while it runs, so only one runs per HOME.
"""

from __future__ import annotations

import io
import os
import select
import signal
import socket
import stat
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crtool import client, delivery
from crtool.config import Settings, load_settings
from crtool.errors import TemporaryFailure

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from crtool.service import Mailbox

BACKLOG = 64
# More deliveries than this at once wait in the listen queue; a client whose request is not
# taken within client.ACK_TIMEOUT delivers in-process instead.
MAX_WORKERS = 32
REQUEST_TIMEOUT = 10.0
# Expired held mail is purged at start and then this often, beside the deliveries.
PURGE_EVERY = 3600.0
# How often the server looks whether a scheduled chore (the owner's digest) is due.
CHORE_INTERVAL = 60.0


class PositionalReader(io.RawIOBase):
    """The passed descriptor read with pread from `offset`, never moving the shared file
    position the client falls back on. Closing it closes the server's copy of the descriptor."""

    def __init__(self, fd: int, offset: int) -> None:
        super().__init__()
        self._fd = fd
        self._position = offset

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = os.pread(self._fd, len(buffer), self._position)
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class Warm:
    """Resources kept between deliveries: settings (re-read when config.toml changes), one
    engine per database URL, and the key ring (re-read when the keys file changes)."""

    def __init__(self, home: Path, clock: Callable[[], float] = time.time) -> None:
        self.home = home
        self.clock = clock
        self._lock = threading.Lock()
        self._settings: tuple[tuple[int, int], Settings] | None = None
        self._engines: dict[tuple[str, int], Engine] = {}
        self._keys: dict[Path, tuple[tuple[int, int, int], list[bytes]]] = {}

    def settings(self, home: Path) -> Settings:
        """The settings, re-read whenever config.toml's modification time or size changes."""
        try:
            stat = (home / "config.toml").stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = (-1, -1)
        with self._lock:
            if self._settings is None or self._settings[0] != stamp:
                self._settings = (stamp, load_settings(home))
            return self._settings[1]

    def engine(self, settings: Settings) -> Engine:
        from crtool.store.engine import make_engine

        key = (settings.database_url, settings.database_timeout)
        with self._lock:
            if key not in self._engines:
                self._engines[key] = make_engine(settings.database_url,
                                                 timeout=settings.database_timeout)
            return self._engines[key]

    def keys(self, path: Path) -> list[bytes]:
        """The key ring, re-read when the file changes (mode included, so a ring made
        world-readable is refused again by tokens.load_keys)."""
        from crtool.tokens import load_keys, secrets_of

        try:
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_mode)
        except OSError:
            stamp = (-1, -1, -1)
        with self._lock:
            cached = self._keys.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        secrets = secrets_of(load_keys(path))
        with self._lock:
            self._keys[path] = (stamp, secrets)
        return secrets

    def mailbox(self, settings: Settings) -> Mailbox:
        from crtool import service

        path = settings.keys_path
        return service.open_mailbox(settings, self.engine(settings), lambda: self.keys(path),
                                    self.clock)

    def warm_up(self) -> None:
        """Import and open everything a delivery needs, so the first one is not slow, and
        fail at start rather than at the first message when the installation is broken."""
        from crtool import challenge, service  # noqa: F401 - imported to be loaded

        settings = self.settings(self.home)
        box = self.mailbox(settings)
        box.keys()
        from crtool.addresses import lookup_keys
        from crtool.store.engine import transaction
        from crtool.store.lists import matches

        with transaction(box.engine, write=False) as session:
            matches(session, settings.owner, lookup_keys(settings.address))
        challenge.environment(settings)

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()


def _regular_file(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _log(line: str) -> None:
    sys.stderr.write(f"crtool serve: {' '.join(line.split())}\n")
    sys.stderr.flush()


class Server:
    """The listening socket and its worker threads."""

    def __init__(self, home: Path, clock: Callable[[], float] = time.time,
                 idle: float | None = None) -> None:
        self.home = home
        self.idle = idle
        self.last_active = time.monotonic()
        self.path = home / client.SOCKET_NAME
        self.clock = clock
        self.warm = Warm(home, clock)
        self.next_purge = clock()
        self.purger: threading.Thread | None = None
        self.slots = threading.BoundedSemaphore(MAX_WORKERS)
        self.workers: set[threading.Thread] = set()
        self.workers_lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.inode: int | None = None
        self.chore: threading.Thread | None = None
        self.next_chores = 0.0

    def bind(self) -> None:
        """Listen on HOME/crtool.sock: bound under a temporary name with mode 0600 and renamed
        into place, so the socket is never reachable with wider permissions. Refuses when
        another server answers there; a stale socket file is replaced."""
        if self.path.exists() and client.listening(str(self.path)):
            raise TemporaryFailure(f"another server is listening on {self.path}")
        temporary = self.home / f".{client.SOCKET_NAME}.{os.getpid()}"
        temporary.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old_umask = os.umask(0o177)
        try:
            listener.bind(str(temporary))
        finally:
            os.umask(old_umask)
        os.chmod(temporary, 0o600)
        listener.listen(BACKLOG)
        os.rename(temporary, self.path)
        self.inode = self.path.stat().st_ino
        self.listener = listener

    def unbind_path(self) -> None:
        """Remove the socket file if it is still ours (a newer server may have replaced it)."""
        try:
            if self.inode is not None and self.path.stat().st_ino == self.inode:
                self.path.unlink()
        except OSError:
            pass

    def unbind(self) -> None:
        """Remove the socket if it is still ours, and stop listening."""
        self.unbind_path()
        if self.listener is not None:
            self.listener.close()

    def serve_forever(self, wakeup: socket.socket) -> None:
        """Accept until `wakeup` becomes readable (a signal arrived: signal.set_wakeup_fd)."""
        if self.listener is None:
            raise RuntimeError("serve_forever before bind")
        while True:
            timeout = max(0.0, min(self.next_purge - self.clock(), self.chore_interval(),
                                   self.idle_left()))
            readable, _, _ = select.select([self.listener, wakeup], [], [], timeout)
            if wakeup in readable:
                return
            if self.listener not in readable and self.idle_left() <= 0:
                self.retire()
                return
            # Checked on every wake-up, before the connection that caused it is served.
            self.purge_if_due()
            self.chores()
            if self.listener not in readable:
                continue
            connection, _ = self.listener.accept()
            self._start_worker(connection)

    def _start_worker(self, connection: socket.socket) -> None:
        self.slots.acquire()
        worker = threading.Thread(target=self._run, args=(connection,), daemon=False)
        with self.workers_lock:
            self.workers.add(worker)
            self.last_active = time.monotonic()
        worker.start()

    def idle_left(self) -> float:
        """Seconds until an idle server exits (the last delivery's end plus `idle`); an
        hour when it never exits, and a second (look again) while deliveries are under way."""
        if self.idle is None:
            return 3600.0
        with self.workers_lock:
            if self.workers:
                return min(self.idle, 1.0)
            return self.last_active + self.idle - time.monotonic()

    def retire(self) -> None:
        """Idle: unlink the socket, so that no new client finds it (they deliver
        in-process), then serve the connections that came before that."""
        self.unbind_path()
        if self.listener is None:
            return
        self.listener.setblocking(False)
        while True:
            try:
                connection, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            connection.setblocking(True)
            self._start_worker(connection)

    def drain(self) -> None:
        """Wait for the deliveries under way; their clients are waiting for the answers."""
        with self.workers_lock:
            workers = list(self.workers)
        for worker in workers:
            worker.join()
        if self.purger is not None:
            self.purger.join()
        if self.chore is not None:
            self.chore.join()

    def purge_if_due(self) -> None:
        """Start the hourly purge of expired held mail in a thread of its own, so that the
        accept loop, and the deliveries, never wait for it."""
        now = self.clock()
        if now < self.next_purge or (self.purger is not None and self.purger.is_alive()):
            return
        self.next_purge = now + PURGE_EVERY
        purger = threading.Thread(target=self._purge, daemon=False)
        purger.start()
        # Published only once started: whoever sees it may join it (drain, the tests).
        self.purger = purger

    def _purge(self) -> None:
        from crtool import service

        total = 0
        try:
            box = self.warm.mailbox(self.warm.settings(self.home))
            # Batches, each a short transaction, until one comes back less than full.
            while (removed := service.purge_expired(box)) > 0:
                total += removed
                if removed < service.PURGE_BATCH:
                    break
        except Exception as error:  # noqa: BLE001 - logged; the next hour tries again
            _log(f"purging expired mail failed after {total}: {delivery.describe(error)}")
            return
        if total:
            _log(f"purged {total} expired held messages")

    def chore_interval(self) -> float:
        """CHORE_INTERVAL, or `digest_every` when that is shorter (at least a second)."""
        try:
            every = self.warm.settings(self.home).digest_every
        except TemporaryFailure:
            return CHORE_INTERVAL
        return min(CHORE_INTERVAL, float(max(1, every or CHORE_INTERVAL)))

    def chores(self) -> None:
        """At most once a CHORE_INTERVAL, and never two at once: the scheduled work (the
        digest, when `digest_every` has passed since the last one), in a thread of its own
        so that deliveries are never kept waiting for it. None in a server that exits when
        idle (see the module docstring)."""
        if self.idle is not None:
            return
        now = time.monotonic()
        if now < self.next_chores or (self.chore is not None and self.chore.is_alive()):
            return
        self.next_chores = now + self.chore_interval()
        self.chore = threading.Thread(target=self._chores, daemon=False)
        self.chore.start()

    def _chores(self) -> None:
        from crtool import digest

        try:
            box = self.warm.mailbox(self.warm.settings(self.home))
            if digest.due(box):
                sent = digest.send(box)
                if sent.digest_id:
                    _log(f"digest {sent.digest_id} sent to {sent.recipient}: "
                         f"{sent.held} held messages")
        except Exception as error:  # noqa: BLE001 - logged; the next interval tries again
            _log(f"digest failed: {delivery.describe(error)}")

    def _run(self, connection: socket.socket) -> None:
        try:
            with connection:
                self._serve(connection)
        except Exception as error:  # noqa: BLE001 - one connection's trouble, logged
            _log(f"connection failed: {delivery.describe(error)}")
        finally:
            with self.workers_lock:
                self.workers.discard(threading.current_thread())
                self.last_active = time.monotonic()
            self.slots.release()

    def _serve(self, connection: socket.socket) -> None:
        if client.peer_uid(connection) != os.getuid():
            _log("refused a connection from another user")
            return
        connection.settimeout(REQUEST_TIMEOUT)
        data, fds, _flags, _addr = socket.recv_fds(connection, client.MAX_PACKET, 4)
        if not data and not fds:
            # Connected and closed without a request: a probe (client.listening, from a
            # second `crtool serve` or `crtool doctor`), which needs no answer and no log.
            return
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            _log("refused a request without exactly one message descriptor")
            return
        try:
            request, offset = client.decode_request(data)
        except client.ProtocolError as error:
            os.close(fds[0])
            _log(f"refused a malformed request: {error}")
            return
        stream = io.BufferedReader(PositionalReader(fds[0], offset))
        with stream:
            connection.sendall(client.ACK)
            if _regular_file(fds[0]):
                answer = delivery.handle(self.home, request, stream, self.warm, fast=False,
                                         on_error=traceback.print_exception)
            else:
                # crtool's client passes only a regular file (a pipe or a device it copies
                # first), so anything else, /dev/zero say, comes from a broken caller:
                # refused at once rather than read without end.
                answer = delivery.failure(request, TemporaryFailure(
                    "the message descriptor is not a regular file"))
        _log(f"{answer.outcome}: {answer.detail}")
        code, line = delivery.status(answer)
        try:
            connection.sendall(client.encode_reply(code, line))
        except OSError:
            # The client gave up waiting; it delivers in-process and finds any hold by digest.
            _log("the client went away before the answer")


def run(home: Path, idle: float | None = None) -> int:
    """`crtool serve`: until SIGTERM or SIGINT, or `idle` seconds without a delivery. Raises
    TemporaryFailure when the installation is broken (no config, no database, no keys) or
    another server runs for HOME.

    The signals only wake the accept loop (signal.set_wakeup_fd), so that no exception is
    ever raised into the middle of a delivery or a lock.
    """
    from crtool import autostart

    server = Server(home, idle=idle)
    try:
        lock = autostart.take_lock(str(home))
    except OSError as error:
        raise TemporaryFailure(f"cannot lock {home / autostart.LOCK_NAME}: "
                               f"{error.strerror}") from None
    if lock is None:
        if server.path.exists() and client.listening(str(server.path)):
            raise TemporaryFailure(f"another server is listening on {server.path}")
        raise TemporaryFailure(f"another server is starting for {home} "
                               f"(pid {autostart.running(str(home))})")
    server.warm.warm_up()
    server.bind()
    received: list[str] = []
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno())
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: received.append(
            signal.Signals(number).name))
    _log(f"listening on {server.path}")
    try:
        server.chores()
        server.serve_forever(reader)
        why = ", ".join(received) or ("idle" if server.idle is not None else "signal")
        _log(f"{why}: finishing the deliveries under way")
    finally:
        server.unbind()
        server.drain()
        server.warm.close()
        signal.set_wakeup_fd(-1)
        reader.close()
        writer.close()
        os.close(lock)
    _log("stopped")
    return 0
