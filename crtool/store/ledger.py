"""Where the records written after a delivery go: the log line of a message already in the
Maildir (and the reply's whitelist entry), written once the mail is safe.

`Ledger` writes each in a write transaction of its own, as a single delivery (`crtool deliver`,
`crtool serve`) wants. `GroupCommit` is the hub's: its threads that have such a record to write
at the same moment share one transaction and one commit. On SQLite every write transaction
queues for the one write lock and fsyncs its commit; ten LMTP sessions each logging alone spent
most of their time in that queue, one commit at a time.

A caller returns only once its own record is committed (the hub answers 250 after that, as
before) or with the error that kept it out. One job that cannot be written does not cost the
others of its batch their record: a failed batch is written again, one transaction per job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from crtool.store.engine import transaction

# What a caller writes: it adds its rows to the session it is given and never commits.
Job = Callable[[Session], None]


class Ledger:
    """Each job in its own write transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def write(self, job: Job) -> None:
        """Run `job` in a write transaction and commit it; raises what kept it out."""
        with transaction(self.engine) as session:
            job(session)


class _NotBegun(Exception):
    """The transaction could not start (the write lock was not had in time, the database is
    away): no job is to blame, and writing them one by one would wait as long for each."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class _Waiter:
    """One caller's job and what became of it; `done` is set under the condition's lock."""

    job: Job
    committed: bool = False
    error: BaseException | None = None
    done: bool = False


class GroupCommit(Ledger):
    """Jobs of concurrent callers written together: one transaction, one commit per batch.

    A caller queues its job and waits. When no batch is being written it leads: it takes
    everything queued, writes it in one transaction and wakes the others; who came while a
    batch was written is in the next one. One per engine, shared by every owner on it.
    """

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._turn = threading.Condition()
        self._queue: list[_Waiter] = []
        self._writing = False

    @property
    def waiting(self) -> int:
        """How many jobs are queued for the next batch."""
        with self._turn:
            return len(self._queue)

    def write(self, job: Job) -> None:
        """Write `job` with whatever else is queued; returns once it is committed, or raises
        the error that kept it out."""
        waiter = _Waiter(job)
        batch: list[_Waiter] = []
        with self._turn:
            self._queue.append(waiter)
            while self._writing and not waiter.done:
                self._turn.wait()
            # Not done and no batch under way: this caller's job is still queued (a leader
            # marks every job it took done before it lets the next one lead), so it leads.
            if not waiter.done:
                self._writing = True
                batch, self._queue = self._queue, []
        if batch:
            self._lead(batch)
        if waiter.error is not None:
            raise waiter.error

    def _lead(self, batch: list[_Waiter]) -> None:
        try:
            self._write_batch(batch)
        except BaseException as error:
            for waiter in batch:
                if not waiter.committed and waiter.error is None:
                    waiter.error = error
            raise
        finally:
            with self._turn:
                for waiter in batch:
                    waiter.done = True
                self._writing = False
                self._turn.notify_all()

    def _write_batch(self, batch: list[_Waiter]) -> None:
        """All in one transaction; if that fails in a job or at the commit, each job alone,
        so that only the one to blame fails. A transaction that cannot even start fails every
        job it was for, once."""
        try:
            self._commit(batch)
            return
        except _NotBegun as failed:
            _fail(batch, failed.error)
            return
        except Exception as error:  # noqa: BLE001 - one job's fault must not fail the others
            if len(batch) == 1:
                _fail(batch, error)
                return
        for index, waiter in enumerate(batch):
            try:
                self._commit([waiter])
            except _NotBegun as failed:
                _fail(batch[index:], failed.error)
                return
            except Exception as error:  # noqa: BLE001 - this job's own: told to its caller
                _fail([waiter], error)

    def _commit(self, waiters: Sequence[_Waiter]) -> None:
        with transaction(self.engine) as session:
            try:
                # Connecting begins the transaction (BEGIN IMMEDIATE on SQLite): a failure
                # here is the database's, before any job ran.
                session.connection()
            except Exception as error:
                raise _NotBegun(error) from error
            for waiter in waiters:
                waiter.job(session)
        for waiter in waiters:
            waiter.committed = True


def _fail(waiters: Sequence[_Waiter], error: BaseException) -> None:
    for waiter in waiters:
        waiter.error = error
