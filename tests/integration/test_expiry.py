"""Expiry without cron: held mail older than `hold_ttl` is deleted by the deliveries that write
(a hold, a confirmation), at most 100 at a time, and by `crtool serve` hourly; the challenge
states the date it is really deleted. On SQLite and, when CRTOOL_TEST_DATABASE_URL is set,
PostgreSQL. The clock is passed in (the service's and the server's), never slept on.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text

from crtool import serve
from crtool.config import settings_from_mapping
from crtool.store.engine import make_engine, transaction
from crtool.store.models import Pending, PendingChunk
from tests.faults.common import seed_old_pending
from tests.integration import test_backscatter
from tests.integration.test_backscatter import (
    DAY,
    START,
    Clock,
    Service,
    _confirm,
    _held_and_challenged,
)
from tests.support import Mailbox, message

# alice's mailbox driven in-process with a clock the test moves, as the backscatter tests do.
alice = test_backscatter.alice

TTL = 14 * DAY


def stored_ids(box: Mailbox) -> set[str]:
    """Every message the store still has a row or bytes for, whatever its status (read from
    the database: `pending list` shows a page)."""
    engine = make_engine(box.database_url)
    try:
        with transaction(engine, write=False) as session:
            rows = set(session.scalars(select(Pending.id)))
            bodies = set(session.scalars(select(PendingChunk.pending_id)))
    finally:
        engine.dispose()
    assert bodies <= rows
    return rows


def kept_until_line(challenge: object) -> str:
    body = challenge.get_content()  # type: ignore[attr-defined]
    [line] = [line for line in body.splitlines() if "kept until" in line]
    return str(line)


def stamp(at: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


def test_a_default_install_deletes_held_mail_after_hold_ttl_without_cron(
        alice: Service) -> None:
    assert alice.box.settings.hold_ttl == alice.box.settings.confirm_ttl == TTL
    first = alice.deliver(message("bob@remote.test"), "bob@remote.test").pending_id
    [challenge] = alice.challenges(1)
    # The challenge promises the date the message really goes.
    assert "kept until " + stamp(START + TTL) + ";" in kept_until_line(challenge)
    alice.clock.now = START + TTL - 1
    second = alice.deliver(message("carol@remote.test"), "carol@remote.test")
    assert stored_ids(alice.files) == {first, second.pending_id}
    alice.clock.now = START + TTL
    third = alice.deliver(message("dave@remote.test"), "dave@remote.test")
    assert stored_ids(alice.files) == {second.pending_id, third.pending_id}
    assert alice.files.run("pending", "show", first).returncode == 3


def test_a_shorter_hold_ttl_is_stated_in_the_challenge_and_kept(alice: Service) -> None:
    short = {"hold_ttl": 3 * DAY}
    result = alice.deliver(message("bob@remote.test"), "bob@remote.test", **short)
    [challenge] = alice.challenges(1)
    assert "kept until " + stamp(START + 3 * DAY) + ";" in kept_until_line(challenge)
    alice.clock.now = START + 3 * DAY - 1
    kept = alice.deliver(message("carol@remote.test"), "carol@remote.test", **short)
    assert stored_ids(alice.files) == {result.pending_id, kept.pending_id}
    alice.clock.now = START + 3 * DAY
    alice.deliver(message("dave@remote.test"), "dave@remote.test", **short)
    assert result.pending_id not in stored_ids(alice.files)


def test_a_confirmation_purges_too(alice: Service) -> None:
    bob, _ = _held_and_challenged(alice)
    alice.clock.now = START + DAY
    carol, token = _held_and_challenged(alice, "carol@remote.test")
    # Bob's message has expired; nothing written since, so it is still there.
    alice.clock.now = START + TTL + 10
    assert bob in stored_ids(alice.files)
    confirmed = _confirm(alice, token, sender="carol@remote.test")
    assert confirmed.reason == ""
    assert stored_ids(alice.files) == {carol}
    assert len(alice.files.maildir_messages()) == 1


def test_a_fresh_challenge_keeps_the_message_and_states_its_new_date(alice: Service) -> None:
    """A token that expired while its message was still held (nothing wrote in between)
    earns a fresh challenge; the purge that follows that very confirmation spares the
    message, which is kept hold_ttl from the fresh challenge, as that challenge says."""
    pending_id, token = _held_and_challenged(alice)
    later = START + TTL + 2 * DAY
    alice.clock.now = later
    assert _confirm(alice, token).reason == "token_expired"
    [fresh] = alice.challenges(1)
    assert "kept until " + stamp(later + TTL) + ";" in kept_until_line(fresh)
    assert pending_id in stored_ids(alice.files)
    alice.clock.now = later + TTL
    alice.deliver(message("carol@remote.test"), "carol@remote.test")
    assert pending_id not in stored_ids(alice.files)


def test_one_delivery_purges_at_most_100(alice: Service) -> None:
    old = set(seed_old_pending(alice.files, 150, TTL + DAY, now=START))
    first = alice.deliver(message("bob@remote.test"), "bob@remote.test")
    left = stored_ids(alice.files)
    assert len(left & old) == 50 and first.pending_id in left
    # Oldest first: what is left is the end of the seeded run (all received at one time,
    # so only the count is fixed), and the next writing delivery takes the rest.
    second = alice.deliver(message("carol@remote.test"), "carol@remote.test")
    assert stored_ids(alice.files) == {first.pending_id, second.pending_id}


def test_real_deliveries_purge_and_the_fast_path_never_writes(mailbox: Mailbox) -> None:
    """`crtool deliver` as qmail runs it, with the real clock and the config `init` wrote."""
    mailbox.ok("whitelist", "add", "friend@remote.test")
    old = set(seed_old_pending(mailbox, 3, TTL + 60))
    assert mailbox.deliver(message("friend@remote.test"), "friend@remote.test").returncode == 0
    assert stored_ids(mailbox) == old
    held = mailbox.deliver(message("bob@remote.test"), "bob@remote.test")
    assert held.returncode == 99, held.stderr
    assert len(stored_ids(mailbox)) == 1 and not stored_ids(mailbox) & old


def _refuse_deletes(database_url: str) -> None:
    """Make the database itself refuse every purge: a trigger that raises on DELETE."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "sqlite":
                connection.execute(text(
                    "CREATE TRIGGER refuse_delete BEFORE DELETE ON pending_chunks "
                    "BEGIN SELECT RAISE(ABORT, 'deletes refused here'); END"))
            else:
                connection.execute(text(
                    "CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'deletes refused here'; END $$"))
                connection.execute(text(
                    "CREATE TRIGGER refuse_delete BEFORE DELETE ON pending_chunks "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_delete()"))
    finally:
        engine.dispose()


def test_a_failing_purge_is_told_in_the_one_line_and_never_a_retry(mailbox: Mailbox) -> None:
    old = set(seed_old_pending(mailbox, 2, TTL + 60))
    _refuse_deletes(mailbox.database_url)
    result = mailbox.deliver(message("bob@remote.test"), "bob@remote.test")
    assert result.returncode == 99, result.stderr
    line = result.stderr.decode()
    assert line.count("\n") == 1 and line.startswith("crtool: held as ")
    assert "(expired mail not purged: " in line and "deletes refused here" in line
    assert len(stored_ids(mailbox) - old) == 1
    assert len(mailbox.outbox.drain(1)) == 1


def test_hold_ttl_longer_than_confirm_ttl_is_refused(tmp_path: Path) -> None:
    base = {"address": "alice@example.test"}
    assert settings_from_mapping(tmp_path, base).hold_ttl == TTL
    assert settings_from_mapping(tmp_path, {**base, "confirm_ttl": "20d"}).hold_ttl == 20 * DAY
    assert settings_from_mapping(tmp_path, {**base, "hold_ttl": "7d"}).hold_ttl == 7 * DAY
    for wrong in ({"hold_ttl": "15d"}, {"hold_ttl": "0s"}, {"confirm_ttl": "1d",
                                                          "hold_ttl": "2d"}):
        with pytest.raises(ValueError, match="hold_ttl"):
            settings_from_mapping(tmp_path, {**base, **wrong})


# crtool serve ---------------------------------------------------------------------------------

class RunningServer:
    """crtool's real Server, in a thread of this process, so that its clock can be passed in."""

    def __init__(self, home: Path, clock: Clock) -> None:
        self.server = serve.Server(home, clock)
        self.server.warm.warm_up()
        self.server.bind()
        self.reader, self.writer = socket.socketpair()
        self.thread = threading.Thread(target=self.server.serve_forever, args=(self.reader,))
        self.thread.start()

    def settle(self) -> None:
        """Wait for the purge the server's last wake-up started, if it started one."""
        if self.server.purger is not None:
            self.server.purger.join(timeout=120)
            assert not self.server.purger.is_alive()

    def stop(self) -> None:
        self.writer.send(b"x")
        self.thread.join(timeout=120)
        self.server.unbind()
        self.server.drain()
        self.server.warm.close()
        self.reader.close()
        self.writer.close()


@pytest.fixture
def served(mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Clock, list[
        RunningServer]]]:
    monkeypatch.setenv("CRTOOL_TEST_OUTBOX", str(mailbox.outbox.path))
    clock = Clock(START)
    running: list[RunningServer] = []
    yield clock, running
    for server in running:
        server.stop()


def test_serve_purges_at_start_and_then_hourly(
        mailbox: Mailbox, served: tuple[Clock, list[RunningServer]],
        capsys: pytest.CaptureFixture[str]) -> None:
    clock, running = served
    mailbox.ok("whitelist", "add", "friend@remote.test")
    expired = set(seed_old_pending(mailbox, 3, TTL + 10, now=START, prefix="e"))
    # These expire half an hour after the server starts.
    later = set(seed_old_pending(mailbox, 2, TTL - 1800, now=START, prefix="l"))
    server = RunningServer(mailbox.home, clock)
    running.append(server)
    # At start: the first wake-up is due at once.
    deadline = time.monotonic() + 120
    while server.server.purger is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server.settle()
    assert stored_ids(mailbox) == later

    def wake() -> None:
        """A delivery through the server: the loop checks the purge before serving it."""
        result = mailbox.deliver(message("friend@remote.test"), "friend@remote.test")
        assert result.returncode == 0, result.stderr
        server.settle()

    clock.now = START + 1800
    wake()
    assert stored_ids(mailbox) == later  # expired now, but the hour is not up
    clock.now = START + 3600
    wake()
    assert stored_ids(mailbox) == set()
    log = capsys.readouterr().err
    assert "crtool serve: purged 3 expired held messages" in log
    assert "crtool serve: purged 2 expired held messages" in log
    assert log.count("crtool serve: continue: ") == 2
    assert not expired & stored_ids(mailbox)
