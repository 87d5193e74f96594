"""The hub's group commit (store/ledger.py), on a real database (SQLite, and PostgreSQL when
CRTOOL_TEST_DATABASE_URL is set): the log lines of deliveries that arrive together share one
commit, each caller returns once its own row is committed, and one job that cannot be written
costs the others nothing. The commits are counted by SQLAlchemy's `commit` event; a job that
waits on an event keeps a batch open while the next one queues, so nothing here is timed."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from crtool import addresses, owners, policy
from crtool.lmtp import Hub as LmtpHub
from crtool.lmtp import _OwnerResources
from crtool.store import log, schema
from crtool.store.engine import enable_wal, make_engine, sqlite_path, transaction
from crtool.store.ledger import GroupCommit, Ledger
from crtool.store.models import AddressEntry, Event
from tests.hub import Hub, wait_until
from tests.support import message

OWNER = "alice@example.test"
FRIEND = "friend@remote.test"
CALLERS = 8


def _engine(url: str, timeout: float = 30.0) -> Engine:
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url, create=True, timeout=timeout)
    enable_wal(engine)
    schema.upgrade(engine)
    return engine


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = _engine(database_url)
    yield engine
    engine.dispose()


def _commits(engine: Engine) -> list[int]:
    """A list that grows by one at each commit on `engine` (a read transaction's too)."""
    seen: list[int] = []
    event.listen(engine, "commit", lambda _connection: seen.append(1))
    return seen


def _logged(sender: str) -> Callable[[Session], None]:
    def job(session: Session) -> None:
        log.record_event(session, OWNER, 1, "delivered", "test", sender)
    return job


def _entry() -> AddressEntry:
    """FRIEND on the whitelist, as a reply lists him."""
    return AddressEntry(owner=OWNER, list_name=policy.WHITE, key=FRIEND,
                        kind=addresses.kind_of(FRIEND), note="reply", created_at=1,
                        source="reply")


def _senders(engine: Engine) -> list[str]:
    with transaction(engine, write=False) as session:
        return sorted(session.scalars(select(Event.sender).where(Event.kind == "delivered")))


class _Callers:
    """Threads that each write one job through the ledger; what each got back (None when
    its job was committed, else the error) by name."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.threads: list[threading.Thread] = []
        self.outcomes: dict[str, BaseException | None] = {}

    def start(self, name: str, job: Callable[[Session], None]) -> None:
        def call() -> None:
            try:
                self.ledger.write(job)
            except Exception as error:  # noqa: BLE001 - the outcome the test looks at
                self.outcomes[name] = error
            else:
                self.outcomes[name] = None

        thread = threading.Thread(target=call, name=name)
        thread.start()
        self.threads.append(thread)

    def join(self) -> dict[str, BaseException | None]:
        for thread in self.threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), f"{thread.name} still waits"
        return self.outcomes


def _open_batch(callers: _Callers) -> threading.Event:
    """Start a caller whose job waits, inside its batch, until the event returned is set:
    whoever writes meanwhile queues for the next batch."""
    inside, go_on = threading.Event(), threading.Event()

    def job(session: Session) -> None:
        _logged("first@remote.test")(session)
        inside.set()
        assert go_on.wait(timeout=60)

    callers.start("first", job)
    assert inside.wait(timeout=60)
    return go_on


def test_callers_that_arrive_together_share_one_commit(engine: Engine) -> None:
    ledger = GroupCommit(engine)
    commits = _commits(engine)
    callers = _Callers(ledger)
    go_on = _open_batch(callers)
    senders = [f"s{n}@remote.test" for n in range(CALLERS)]
    for sender in senders:
        callers.start(sender, _logged(sender))
    wait_until(lambda: ledger.waiting == CALLERS, "every caller to queue")
    assert _senders(engine) == []  # nobody's row is committed before its batch
    before = len(commits)
    go_on.set()
    assert set(callers.join().values()) == {None}
    # The first batch, then everyone who queued while it was written: two commits.
    assert len(commits) - before == 2
    assert _senders(engine) == sorted(["first@remote.test", *senders])


def test_a_job_that_cannot_be_written_costs_the_others_nothing(engine: Engine) -> None:
    # One caller's whitelist entry meets one written since (the unique index refuses it):
    # its batch fails, each job is written again alone, and only that caller hears of it.
    with transaction(engine) as session:
        session.add(_entry())
    ledger = GroupCommit(engine)
    callers = _Callers(ledger)
    go_on = _open_batch(callers)
    senders = [f"s{n}@remote.test" for n in range(CALLERS)]
    for sender in senders[:3]:
        callers.start(sender, _logged(sender))

    def listed_again(session: Session) -> None:
        _logged("again@remote.test")(session)
        session.add(_entry())

    callers.start("again", listed_again)
    for sender in senders[3:]:
        callers.start(sender, _logged(sender))
    wait_until(lambda: ledger.waiting == CALLERS + 1, "every caller to queue")
    go_on.set()
    outcomes = callers.join()
    assert isinstance(outcomes.pop("again"), IntegrityError)
    assert set(outcomes.values()) == {None}
    assert _senders(engine) == sorted(["first@remote.test", *senders])
    with transaction(engine, write=False) as session:
        assert session.scalar(select(func.count()).select_from(AddressEntry)) == 1


def test_a_job_that_raises_is_told_to_its_caller_alone(engine: Engine) -> None:
    ledger = GroupCommit(engine)
    callers = _Callers(ledger)
    go_on = _open_batch(callers)

    def broken(session: Session) -> None:
        raise ValueError("not this one")

    callers.start("broken", broken)
    callers.start("fine", _logged("fine@remote.test"))
    wait_until(lambda: ledger.waiting == 2, "both callers to queue")
    go_on.set()
    outcomes = callers.join()
    assert isinstance(outcomes["broken"], ValueError)
    assert outcomes["first"] is None and outcomes["fine"] is None
    assert _senders(engine) == ["fine@remote.test", "first@remote.test"]
    # The ledger goes on: the next caller leads a batch of its own.
    ledger.write(_logged("later@remote.test"))
    assert "later@remote.test" in _senders(engine)


def test_a_write_lock_not_had_in_time_fails_the_batch_once(tmp_path: Path) -> None:
    # Another process holds SQLite's write lock (a backup, a long `learn`). A batch waits
    # database_timeout for it once and fails every caller in it: writing its jobs one by one
    # would have made each caller wait that long again, behind the others.
    url = f"sqlite:///{tmp_path / 'crtool.db'}"
    engine = _engine(url, timeout=0.2)
    begun: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("BEGIN"):
            begun.append(statement)

    ledger = GroupCommit(engine)
    callers = _Callers(ledger)
    blocker = sqlite3.connect(tmp_path / "crtool.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        # A write transaction of this process that has not touched the database yet holds
        # the engine's writer turn: the first caller leads a batch of its own and waits for
        # that turn while the others queue behind it.
        with transaction(engine):
            callers.start("first", _logged("first@remote.test"))
            wait_until(lambda: ledger.waiting == 0, "the first caller to lead")
            for n in range(CALLERS):
                callers.start(f"s{n}", _logged(f"s{n}@remote.test"))
            wait_until(lambda: ledger.waiting == CALLERS, "every caller to queue")
        outcomes = callers.join()
    finally:
        blocker.rollback()
        blocker.close()
    assert len(outcomes) == CALLERS + 1
    assert all(isinstance(error, OperationalError) for error in outcomes.values()), outcomes
    assert len(begun) == 2  # the first caller's batch, then everyone else's
    ledger.write(_logged("later@remote.test"))
    assert _senders(engine) == ["later@remote.test"]
    engine.dispose()


def test_the_plain_ledger_commits_each_job_alone(engine: Engine) -> None:
    commits = _commits(engine)
    ledger = Ledger(engine)
    for n in range(3):
        ledger.write(_logged(f"s{n}@remote.test"))

    def broken(session: Session) -> None:
        _logged("broken@remote.test")(session)
        raise ValueError("not this one")

    with pytest.raises(ValueError):
        ledger.write(broken)
    assert len(commits) == 3
    assert _senders(engine) == [f"s{n}@remote.test" for n in range(3)]


def test_the_hubs_owners_on_one_database_share_its_group_commit(
        tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Concurrent deliveries of whitelisted mail to two owners, in the hub's own code: each
    # answered 250 with its log line written, through the one group commit of the database.
    if database_url.startswith("sqlite"):
        database_url = f"sqlite:///{tmp_path / 'hub' / 'hub.db'}"
    hub = Hub(tmp_path / "hub", database_url)
    hub.init()
    carol = "carol@example.test"
    for owner in (OWNER, carol):
        hub.add_owner(owner, tmp_path / "mail" / owner.split("@")[0])
        hub.ok("whitelist", "add", FRIEND, "--owner", owner)
    monkeypatch.setenv("CRTOOL_TEST_OUTBOX", str(hub.outbox.path))
    system = owners.load_system(hub.config)
    lmtp_hub = LmtpHub(system)
    settings = {owner: lmtp_hub.owner_for(owner) for owner in (OWNER, carol)}
    boxes = [_OwnerResources(lmtp_hub, s).mailbox(s) for s in settings.values() if s]
    assert len(boxes) == 2 and boxes[0].ledger is boxes[1].ledger
    assert isinstance(boxes[0].ledger, GroupCommit)
    replies: list[str] = []

    def deliver(owner: str, n: int) -> None:
        found = settings[owner]
        assert found is not None
        done = lmtp_hub.deliver(found, FRIEND, owner, message(FRIEND, f"Hello {n}"))
        replies.append(done.reply)

    threads = [threading.Thread(target=deliver, args=(owner, n))
               for n in range(CALLERS // 2) for owner in (OWNER, carol)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    lmtp_hub.engine().dispose()
    assert len(replies) == CALLERS
    assert all(r.startswith("250 ") and "not logged" not in r for r in replies), replies
    for owner in (OWNER, carol):
        new = tmp_path / "mail" / owner.split("@")[0] / "new"
        assert len(list(new.iterdir())) == CALLERS // 2
        stats = json.loads(hub.ok("stats", "--json", "--owner", owner))
        assert stats["counts"]["delivered"] == CALLERS // 2
