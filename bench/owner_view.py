"""The owner's view at scale: `crtool digest` (time and peak RSS) and `pending list --reason`
with 100,000 held, and `crtool history` of a sender with 10,000 events among 100,000 others.

Each digest run must find everything new again, so before each run (outside the measured
process) the held messages are marked unreported and the digests forgotten.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from bench.homes import CRTOOL, OWNER, Home, make_home
from bench.proc import Run, spawn

HISTORY_SENDER = "busy@remote.test"
REASONS = ("challenged", "list_headers", "noreply_sender", "bulk_precedence", "auto_submitted")


def spread_reasons(home: Home) -> None:
    """Give the held messages five reasons and ten messages per sender, as a digest sees."""
    with sqlite3.connect(home.home / "crtool.db") as db:
        for number, reason in enumerate(REASONS):
            db.execute("UPDATE pending SET reason = ? WHERE CAST(substr(id, 2) AS INTEGER) % ? = ?",
                       (reason, len(REASONS), number))
        db.execute("UPDATE pending SET sender_key = 's' || "
                   "(CAST(substr(id, 2) AS INTEGER) / 10) || '@remote.test', "
                   "sender = 's' || (CAST(substr(id, 2) AS INTEGER) / 10) || '@remote.test'")


def history_home(root: Path, events: int, others: int) -> Home:
    """A mailbox whose event log holds `events` about HISTORY_SENDER among `others`."""
    home = make_home(root, "history", 10)
    now = int(time.time())
    rows = [(OWNER, now - i, "held", "list_headers", HISTORY_SENDER, f"h{i:07d}",
             HISTORY_SENDER, "") for i in range(events)]
    rows += [(OWNER, now - i, "held", "challenged", f"o{i}@else.test", f"o{i:07d}",
              f"o{i}@else.test", "") for i in range(others)]
    with sqlite3.connect(home.home / "crtool.db") as db:
        db.executemany("INSERT INTO events (owner, at, kind, reason, sender, pending_id, "
                       "sender_key, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return home


def unreported(home: Home) -> None:
    with sqlite3.connect(home.home / "crtool.db") as db:
        db.execute("UPDATE pending SET digest_id = NULL")
        db.execute("DELETE FROM digests")


def digest_run(home: Home, rss_file: Path) -> Callable[[], Run]:
    def run() -> Run:
        unreported(home)
        return spawn([CRTOOL, "--home", str(home.home), "digest"], home.command_env(), None,
                     rss_file)
    return run
