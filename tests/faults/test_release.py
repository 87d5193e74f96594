"""A confirmation that releases a thousand held messages: in batches, each its own short write
transaction (one transaction for 6,000 held the lock 15 s and a concurrent delivery gave up),
exactly once, and a SIGKILL between batches loses nothing: qmail's retry of the confirmation
finishes the job. The lock figures are printed (pytest -s) and written to figures-release.json.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.faults.common import (
    deliver,
    held,
    integrity,
    lock_figures,
    maildir_files,
    make_home,
    sent,
    write_figures,
)
from tests.support import Mailbox, confirm_address_of, message

SENDER = "bob@remote.test"
SEEDED = 1000
BATCH = 100  # crtool.service.RELEASE_BATCH; a batch may end sooner (RELEASE_SECONDS)
BETWEEN_BATCHES = "crtool.store.pending:held_batch:call:3"  # two batches committed


def seed_held(box: Mailbox, count: int) -> None:
    """`count` messages held from SENDER without a challenge (as the rate limit holds them),
    written through crtool's own table definitions; each body names its id."""
    from sqlalchemy import insert

    from crtool.store.engine import make_engine, transaction
    from crtool.store.models import Pending, PendingChunk

    engine = make_engine(box.database_url)
    received = int(time.time()) - 3600
    ids = [f"r{n:07d}" for n in range(count)]
    try:
        with transaction(engine) as session:
            session.execute(insert(Pending), [dict(
                id=i, owner=box.address, sender=SENDER, sender_key=SENDER,
                recipient=box.address, from_header=SENDER, subject=i, message_id="",
                received_at=received + n, size=30, digest=f"{i:0>64}", mta="qmail",
                status="held", reason="sender_rate_limit", challenged_at=None,
                released_at=None) for n, i in enumerate(ids)])
            session.execute(insert(PendingChunk), [
                dict(pending_id=i, seq=0, owner=box.address,
                     data=f"Subject: {i}\n\n{i}\n".encode())
                for i in ids])
    finally:
        engine.dispose()


def test_a_big_release_goes_in_short_batches_and_survives_a_kill_between_them(
        tmp_path: Path) -> None:
    box = make_home(tmp_path)
    seed_held(box, SEEDED)
    assert deliver(box, message(SENDER, "the challenged one"), SENDER).returncode == 99
    [challenge] = sent(box)
    address = confirm_address_of(challenge)
    reply = message(SENDER, "Re: confirm", to=address)
    locklog = tmp_path / "locks.jsonl"

    killed = deliver(box, reply, SENDER, address, crash_at=BETWEEN_BATCHES)
    assert killed.returncode == -signal.SIGKILL
    # Two batches went out and were marked; the rest, the confirmed message too, is held.
    first = len(maildir_files(box))
    assert 2 <= first <= 2 * BATCH
    still_held = held(box)
    assert len(still_held) == SEEDED + 1 - first
    assert any(m["subject"] == "the challenged one" for m in still_held)

    retry = deliver(box, reply, SENDER, address, locklog=str(locklog))
    assert retry.returncode == 99, retry.stderr
    assert held(box) == []
    files = maildir_files(box)
    assert len(files) == SEEDED + 1  # each message exactly once
    bodies = {f.read_bytes().rsplit(b"\n", 2)[-2] for f in files}
    assert {f"r{n:07d}".encode() for n in range(SEEDED)} <= bodies
    [figures] = lock_figures(locklog)
    # No write transaction released more than one batch.
    assert 1 <= figures["max_bodies_dropped"] <= BATCH  # type: ignore[operator]
    assert figures["transactions"] >= (SEEDED + 1 - first) // BATCH  # type: ignore[operator]

    replay = deliver(box, reply, SENDER, address)
    assert replay.returncode == 99 and b"token_used" in replay.stderr
    assert len(maildir_files(box)) == SEEDED + 1
    assert integrity(box) == "ok"
    write_figures(tmp_path, "release", {
        "messages_released_before_the_kill": first,
        "messages_released_by_the_retry": SEEDED + 1 - first,
        "write_transactions": figures["transactions"],
        "max_released_per_transaction": figures["max_bodies_dropped"],
        "max_lock_hold_s": round(float(figures["max_hold"]), 4),  # type: ignore[arg-type]
        "max_lock_wait_s": round(float(figures["max_wait"]), 4),  # type: ignore[arg-type]
    })
