"""`[lmtp] processes`: several server processes on one socket, supervised by their parent.

One process delivers under one interpreter lock, so a hub uses one core however many worker
threads it has; the parent binds the socket, forks the servers, starts again one that dies,
passes SIGTERM on and removes the socket file, and its servers die with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.hub import Hub, Server, client, hub_with_alice, transaction, wait_until
from tests.support import message

ALICE = "alice@example.test"
FRIEND = "friend@remote.test"
STRANGER = "bob@remote.test"


@pytest.fixture
def hub(tmp_path: Path, database_url: str) -> Hub:
    hub = hub_with_alice(tmp_path, database_url, processes=2, workers=2)
    hub.ok("whitelist", "add", FRIEND, "--owner", ALICE)
    return hub


def delivered(hub: Hub) -> list[bytes]:
    new = hub.root.parent / "mail" / "alice" / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


def listening(server: Server) -> set[int]:
    return {int(r["pid"]) for r in server.records()  # type: ignore[call-overload]
            if r.get("event") == "listening"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: it only waits for its parent to read its status.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def start(hub: Hub, count: int = 2) -> Server:
    running = hub.start()
    wait_until(lambda: len(listening(running)) >= count, "every server process to listen")
    return running


def deliver_concurrently(hub: Hub, senders: list[str]) -> list[int]:
    """One connection and one message per sender, all at once; the DATA reply codes."""
    codes: list[int] = []
    lock = threading.Lock()

    def one(index: int, sender: str) -> None:
        with client(hub.socket_path) as lmtp:
            _, [(code, _)] = transaction(lmtp, sender, [ALICE],
                                         message(sender=sender, body=f"number {index}\n"))
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=one, args=(i, s)) for i, s in enumerate(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes


def test_two_processes_share_the_socket_and_stop_together(hub: Hub) -> None:
    running = start(hub)
    parent = running.process.pid
    pids = listening(running)
    assert len(pids) == 2 and parent not in pids, running.log()
    codes = deliver_concurrently(hub, [FRIEND] * 8 + [STRANGER] * 2)
    assert codes == [250] * 10, running.log()
    assert len(delivered(hub)) == 8
    # Both of the stranger's messages are held, and he is challenged once, whichever
    # processes held them: the owner's row lock serialises the count across processes.
    assert len(hub.held(ALICE)) == 2
    hub.outbox.drain(1)
    # Every recipient is logged once, by the server process that delivered it.
    records = running.deliveries()
    assert len(records) == 10
    assert {r["pid"] for r in records} <= pids, records
    assert running.stop() == 0, running.log()
    assert not any(alive(pid) for pid in pids)
    assert not hub.socket_path.exists()
    events = [r.get("event") for r in running.records() if "event" in r]
    assert events.count("stopped") == 2 and events[-1] == "processes_stopped", events


def test_a_server_process_that_dies_is_started_again(hub: Hub) -> None:
    running = start(hub)
    first, second = sorted(listening(running))
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: len(listening(running)) == 3, "the parent to start another process")
    died = [r for r in running.records() if r.get("event") == "process_died"]
    assert [(r["pid"], r["status"]) for r in died] == [(first, -signal.SIGKILL)]
    assert deliver_concurrently(hub, [FRIEND] * 4) == [250] * 4
    assert len(delivered(hub)) == 4
    assert running.stop() == 0, running.log()
    assert not any(alive(pid) for pid in listening(running))


def test_the_server_processes_die_with_their_parent(hub: Hub) -> None:
    # A parent killed outright (no SIGTERM to pass on) still takes its servers with it:
    # each is told by the kernel and stops as on SIGTERM, so nothing answers on a socket
    # that nobody supervises.
    running = start(hub)
    pids = listening(running)
    os.kill(running.process.pid, signal.SIGKILL)
    running.process.wait(timeout=30)
    wait_until(lambda: not any(alive(pid) for pid in pids), "the server processes to stop")
    stopped = [r for r in running.records() if r.get("event") == "stopped"]
    assert len(stopped) == 2, running.log()


def test_a_server_process_stopped_alone_leaves_the_socket_to_the_others(hub: Hub) -> None:
    # SIGTERM to one server process (an admin's kill, the OOM killer's cousin): it stops as
    # a lone server does but must not take the shared socket file with it.
    running = start(hub)
    first = min(listening(running))
    os.kill(first, signal.SIGTERM)
    wait_until(lambda: len(listening(running)) == 3, "the parent to start another process")
    died = [r for r in running.records() if r.get("event") == "process_died"]
    assert [(r["pid"], r["status"]) for r in died] == [(first, 0)]
    assert hub.socket_path.is_socket()
    assert deliver_concurrently(hub, [FRIEND] * 3) == [250] * 3
    assert running.stop() == 0, running.log()


FAILING = """
import sys
from pathlib import Path
from crtool import lmtp, owners

async def broken(*args, **kwargs):
    raise RuntimeError("this server process cannot start")

lmtp.serve = broken
system = owners.load_system(Path(sys.argv[1]))
sys.exit(lmtp.run(system, system.lmtp.listen))
"""


def test_a_parent_whose_servers_cannot_start_gives_up(hub: Hub) -> None:
    # Servers that die as they start are started again a few times, then the parent exits 1
    # (systemd's Restart=on-failure takes over) and the socket goes: clients are refused,
    # not left in a queue that nobody reads.
    done = subprocess.run([sys.executable, "-c", FAILING, str(hub.config)], env=hub.env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    events = [line for line in done.stderr.splitlines() if line.startswith("{")]
    assert sum('"process_died"' in line for line in events) == 5, done.stderr
    assert '"processes_failed"' in events[-2] and '"processes_stopped"' in events[-1]
    # Each said why on stderr (the one started last may have said it too before the stop).
    assert done.stderr.count("this server process cannot start") >= 5
    assert not hub.socket_path.exists()
