"""Many held messages at once, written through crtool's own models (deliveries one by one
would take minutes): for the tests of digests and listings at scale."""

from __future__ import annotations

import time

from sqlalchemy import insert

from crtool.store.engine import make_engine, transaction
from crtool.store.models import Pending, PendingChunk
from tests.support import Mailbox


def hold_many(mailbox: Mailbox, per_reason: dict[str, int], senders: int = 500) -> None:
    """Held rows, `per_reason[reason]` of each, from `senders` different senders, received
    one second apart up to now."""
    engine = make_engine(mailbox.database_url)
    now = int(time.time())
    rows, bodies = [], []
    number = 0
    for reason, count in per_reason.items():
        for _ in range(count):
            number += 1
            sender = f"s{number % senders}@bulk{number % 7}.test"
            pending_id = f"{number:08d}".translate(str.maketrans("0189", "abcd"))
            rows.append(dict(
                id=pending_id, owner=mailbox.address, sender=sender, sender_key=sender,
                recipient=mailbox.address, from_header=sender, subject=f"message {number}",
                message_id="", received_at=now - 20_000 + number, size=100 + number,
                digest=f"{number:064d}", mta="qmail", status="held", reason=reason,
                challenged_at=None, released_at=None, digest_id=None))
            bodies.append(dict(pending_id=pending_id, seq=0, owner=mailbox.address,
                               data=f"Subject: message {number}\n\nhello\n".encode()))
    with transaction(engine) as session:
        for start in range(0, len(rows), 2000):
            session.execute(insert(Pending), rows[start:start + 2000])
            session.execute(insert(PendingChunk), bodies[start:start + 2000])
    engine.dispose()
