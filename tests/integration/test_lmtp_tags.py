"""Tagged addresses on a hub: `crtool lmtp` takes mail for an owner's dated and keyword
addresses at RCPT, delivers what they let in and drops a revoked keyword's mail with a 250,
never a 5xx (a bounce) or a 4xx (a retry)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hub import Hub, Server, client, hub_with_alice, transaction
from tests.support import message

ALICE = "alice@example.test"
STRANGER = "shop@remote.test"


@pytest.fixture
def hub(tmp_path: Path, database_url: str) -> Hub:
    return hub_with_alice(tmp_path, database_url)


@pytest.fixture
def server(hub: Hub) -> Iterator[Server]:
    running = hub.start()
    yield running
    assert running.stop() == 0, running.log()


def delivered(hub: Hub, marker: bytes) -> int:
    new = hub.root.parent / "mail" / "alice" / "new"
    return sum(marker in p.read_bytes() for p in new.iterdir()) if new.exists() else 0


def test_dated_and_keyword_addresses_over_lmtp(hub: Hub, server: Server) -> None:
    dated = hub.ok("address", "dated", "--valid", "2h", "--owner", ALICE).strip()
    keyword = hub.ok("address", "keyword", "shop", "--owner", ALICE).strip()
    with client(hub.socket_path) as lmtp:
        for to, subject in ((dated.upper(), "Welcome"), (keyword, "Receipt")):
            rcpt, [(code, said)] = transaction(
                lmtp, STRANGER, [to], message(STRANGER, subject, to=to,
                                              headers={"Auto-Submitted": "auto-generated"}))
            assert [c for c, _ in rcpt] == [250] and code == 250, said
        assert delivered(hub, b"Subject: Welcome") == 1
        assert delivered(hub, b"Subject: Receipt") == 1
        hub.ok("address", "revoke", "keyword", "shop", "--owner", ALICE)
        _, [(code, said)] = transaction(lmtp, STRANGER, [keyword],
                                        message(STRANGER, "Spam", to=keyword))
        assert code == 250 and b"keyword_revoked" in said, said
    assert delivered(hub, b"Subject: Spam") == 0
    hub.outbox.drain(0)
