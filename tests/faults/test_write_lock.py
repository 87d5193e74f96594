"""Whitelisted mail does not wait for the database's write lock.

Deciding only reads, and the Maildir is written with no lock held; the delivery's log line is
written after, in a short transaction of its own. So a writer that holds SQLite's lock (a long
`crtool learn`, a stuck process, a backup) delays no whitelisted message, and a log that
cannot be written then never turns a delivered message into a retry, which would deliver it
twice.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

from crtool import delivery
from crtool.client import Request
from crtool.exits import Outcome
from tests.faults.common import maildir_files, make_home
from tests.support import message

FRIEND = "friend@example.org"


def test_a_whitelisted_message_is_delivered_once_while_another_process_holds_the_write_lock(
        tmp_path: Path) -> None:
    box = make_home(tmp_path, delivery="maildir", database_timeout="1s")
    box.ok("whitelist", "add", FRIEND)
    blocker = sqlite3.connect(box.home / "crtool.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        answer = delivery.handle(
            box.home, Request(mta="qmail", sender=FRIEND, recipient=box.address),
            io.BytesIO(message(sender=FRIEND)), delivery.OneShot(), fast=False)
    finally:
        blocker.rollback()
        blocker.close()
    assert answer.outcome == Outcome.DELIVERED.value, answer
    assert "not logged" in answer.detail
    files = maildir_files(box)
    assert len(files) == 1
    assert files[0].read_bytes().endswith(message(sender=FRIEND))


def test_once_the_lock_is_free_the_delivery_is_logged(tmp_path: Path) -> None:
    box = make_home(tmp_path, delivery="maildir")
    box.ok("whitelist", "add", FRIEND)
    answer = delivery.handle(
        box.home, Request(mta="qmail", sender=FRIEND, recipient=box.address),
        io.BytesIO(message(sender=FRIEND)), delivery.OneShot(), fast=False)
    assert answer.outcome == Outcome.DELIVERED.value, answer
    assert "not logged" not in answer.detail
    assert len(maildir_files(box)) == 1
    assert "delivered" in box.ok("stats")
