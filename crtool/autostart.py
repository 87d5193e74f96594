"""The resident server on demand: a delivery that found no server starts one, which exits when idle.

`crtool serve` pays SQLAlchemy, Jinja2 and the key ring once; a delivery it answers costs little
more than starting the interpreter. Most owners will never set up a supervised service, so a
delivery that had to work in-process (no server answered) starts `crtool serve --idle
<serve_idle>` itself, and the deliveries after it, while mail keeps coming, are the server's
clients. After `serve_idle` without a delivery the server exits; the next delivery works
in-process again and starts a new one. `serve_idle = 0` never starts one.

Why the MTA never waits for it: qmail-local and Postfix's local/pipe read the delivery's
stdout and stderr until every copy of those descriptors is closed, and Postfix signals the
delivery's process group on a timeout. So the server is started in a session of its own
(setsid), from "/", with stdin, stdout and stderr on /dev/null and every other descriptor
closed; it is a grandchild nobody waits for. The delivery that starts it has already done its
own work by then, in-process, exactly as without a server; the server only ever takes over the
deliveries that come later, through client.py, which falls back to in-process whenever the
server is absent, refuses, dies or is slow. So a server killed at any moment loses nothing.

Only one server per HOME: it holds an exclusive lock on HOME/serve.lock (flock, released by the
kernel when it dies, however it dies) and writes its pid there. A delivery starts one only when
that lock is free; two deliveries that both see it free start two, and the second finds the
lock taken and exits before it has loaded anything.
"""

from __future__ import annotations

import os
import sys

LOCK_NAME = "serve.lock"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _open_lock(home: str) -> int:
    return os.open(os.path.join(home, LOCK_NAME),
                   os.O_RDWR | os.O_CREAT | _NOFOLLOW | os.O_CLOEXEC, 0o600)


def take_lock(home: str) -> int | None:
    """The server's lock on HOME/serve.lock, with this process's pid written in it, or None
    when another server holds it. The descriptor stays open for the server's life.

    Side effect: creates HOME/serve.lock (0600) when missing; raises OSError when it cannot.
    """
    import fcntl

    fd = _open_lock(home)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def running(home: str) -> int | None:
    """The pid of the server holding HOME/serve.lock, or None when none does."""
    import fcntl

    try:
        fd = os.open(os.path.join(home, LOCK_NAME), os.O_RDONLY | _NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        return None
    finally:
        os.close(fd)


def start(home: str, idle: int) -> bool:
    """Start `crtool serve --idle IDLE` for HOME, detached, unless `idle` is 0 or a server
    holds the lock; whether one was started. Never raises: a server that cannot be started
    only means the next delivery works in-process too.

    Side effect: a new process in its own session, stdin/stdout/stderr on /dev/null, no
    other descriptor of this one, working directory "/".
    """
    if idle <= 0:
        return False
    try:
        if running(home) is not None:
            return False
        import subprocess

        subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
            [sys.executable, "-m", "crtool", "--home", home, "serve", "--idle", f"{idle}s"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=True, start_new_session=True, cwd="/")
    except Exception:  # noqa: BLE001 - the delivery is done; a server is only a speed-up
        return False
    return True
