"""Run `crtool` (crtool.cli.main) from outside, to crash it or to time its locks.

The crash points of the fault tests are reached without any hook in crtool (STYLE habit 12):
this wrapper watches function calls with `sys.setprofile` and SIGKILLs its own process when the
function named in CRTOOL_TEST_CRASH_AT is entered or returns, exactly as a power cut or the OOM
killer would stop it there. CRTOOL_TEST_LOCKLOG names a file that gets one JSON line per process
saying how long it waited for SQLite's write lock (BEGIN IMMEDIATE) and held it, read through
SQLAlchemy's public event API.

    CRTOOL_TEST_CRASH_AT=crtool.outbox:SendmailOutbox.send:call  python crashpoint.py deliver
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any


def arm_crash(spec: str) -> None:
    """SIGKILL this process at `module:qualname:event` (event: call or return), or at its
    Nth occurrence with `module:qualname:event:N`."""
    module, qualname, wanted, *nth = spec.split(":")
    remaining = [int(nth[0]) if nth else 1]

    def profiler(frame: FrameType, event: str, _arg: Any) -> None:
        if event == wanted and frame.f_code.co_qualname == qualname \
                and frame.f_globals.get("__name__") == module:
            remaining[0] -= 1
            if remaining[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    sys.setprofile(profiler)
    # crtool lmtp delivers in worker threads; each new thread gets the same watch.
    threading.setprofile(profiler)


def record_locks(path: str) -> None:
    """Time every write transaction of this process and append the worst to `path`."""
    from sqlalchemy import Engine, event

    figures: dict[str, Any] = {"argv": sys.argv[1:], "transactions": 0, "max_wait": 0.0,
                               "max_hold": 0.0, "max_deleted": 0, "max_bodies_dropped": 0}
    state: dict[str, float] = {}

    @event.listens_for(Engine, "before_cursor_execute")
    def _before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        state["started"] = time.monotonic()

    @event.listens_for(Engine, "after_cursor_execute")
    def _after(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        now = time.monotonic()
        if statement.startswith("BEGIN IMMEDIATE"):
            figures["transactions"] += 1
            figures["max_wait"] = max(figures["max_wait"], now - state["started"])
            state["locked"] = now
            state["deleted"] = 0
            state["bodies"] = 0
        elif statement.startswith("DELETE FROM pending "):
            state["deleted"] = state.get("deleted", 0) + max(cursor.rowcount, 0)
            figures["max_deleted"] = max(figures["max_deleted"], state["deleted"])
        elif statement.startswith("DELETE FROM pending_chunks "):
            # A held message leaving the queue (released or deleted): per transaction.
            state["bodies"] = state.get("bodies", 0) + max(cursor.rowcount, 0)
            figures["max_bodies_dropped"] = max(figures["max_bodies_dropped"],
                                                state["bodies"])

    def _ended(_conn: Any) -> None:
        if "locked" in state:
            figures["max_hold"] = max(figures["max_hold"], time.monotonic() - state.pop("locked"))

    event.listen(Engine, "commit", _ended)
    event.listen(Engine, "rollback", _ended)

    def _write() -> None:
        line = json.dumps(figures) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    atexit.register(_write)


def main() -> int:
    locklog = os.environ.pop("CRTOOL_TEST_LOCKLOG", "")
    if locklog:
        record_locks(locklog)
    crash_at = os.environ.pop("CRTOOL_TEST_CRASH_AT", "")
    from crtool.cli import main as crtool_main

    if crash_at:
        arm_crash(crash_at)
    code = crtool_main(sys.argv[1:])
    sys.setprofile(None)
    return code


if __name__ == "__main__":
    sys.exit(main())
