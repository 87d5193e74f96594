"""Several hosts, one PostgreSQL: two mail hosts made of network namespaces (`ip netns`, a veth
pair each), each running its own `crtool lmtp`, sharing the PostgreSQL server of this machine
and passing mail on to one downstream LMTP server (tests/bin/lmtp-sink, where Dovecot would
stand). What one host held, the other releases; concurrent confirmations deliver once; a host
killed in the middle of a release loses nothing and delivers nothing twice.

The PostgreSQL server listens on 127.0.0.1 only, which no other namespace can reach. So, as a
database server on the network would be, it is reached through the root namespace's address on
each veth: a TCP relay there (tests/bin/tcp-relay) forwards to 127.0.0.1:5432. When a host dies,
the kernel closes its connection, the relay closes the upstream one, and PostgreSQL rolls the
host's transaction back and frees its locks, as it would for a host on the network.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PG_URL, _pg_schema_url
from tests.hub import Hub, Server, client, transaction, wait_until
from tests.support import REPO, confirm_address_of, message

pytestmark = pytest.mark.e2e

ALICE = "alice@example.test"
STRANGER = "bob@remote.test"
LMTP_PORT = 2424
PG_RELAY_PORT = 15432
SINK_PORT = 2525


def why_not_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root to make network namespaces; run .ci/run"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is missing; .ci/hub.sh installs it"
    if not PG_URL:
        return "CRTOOL_TEST_DATABASE_URL is not set: the hosts share PostgreSQL"
    return None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    hub: Hub
    server: Server | None = None

    def start(self) -> None:
        self.server = self.hub.start(listen=f"{self.address}:{LMTP_PORT}",
                                     argv_prefix=["ip", "netns", "exec", self.namespace])

    def lmtp_target(self) -> str:
        return f"{self.address}:{LMTP_PORT}"


@dataclass
class Network:
    root: Path
    gateway: str
    hosts: dict[str, Host]
    sink: Path
    processes: list[subprocess.Popen[bytes]]

    def stored(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.sink.glob("*.eml"))]


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as handle:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=handle)
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n", log.read_text()
    return process


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    reason = why_not_available()
    if reason is not None:
        pytest.skip(f"cannot make hosts: {reason}")
    from sqlalchemy import create_engine, text

    root = tmp_path_factory.mktemp("hosts")
    root.chmod(0o755)
    tag = secrets.token_hex(3)
    net = 200 + os.getpid() % 50
    gateway = f"10.{net}.1.1"
    schema = "hosts_" + tag
    admin = create_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    made: list[str] = []
    processes: list[subprocess.Popen[bytes]] = []
    hosts: dict[str, Host] = {}
    try:
        for index, name in enumerate(("a", "b"), 1):
            namespace, outside, inside = f"crt{name}{tag}", f"vo{name}{tag}", f"vi{name}{tag}"
            ip("netns", "add", namespace)
            made.append(namespace)
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            ip("link", "set", inside, "netns", namespace)
            ip("addr", "add", f"10.{net}.{index}.1/30", "dev", outside)
            ip("link", "set", outside, "up")
            inner = ["netns", "exec", namespace, "ip"]
            ip(*inner, "addr", "add", f"10.{net}.{index}.2/30", "dev", inside)
            ip(*inner, "link", "set", inside, "up")
            ip(*inner, "link", "set", "lo", "up")
            # Everything beyond the veth (the database relay, the mailbox server) is reached
            # through the root namespace, as through a router.
            ip(*inner, "route", "add", "default", "via", f"10.{net}.{index}.1")
        processes.append(_start([sys.executable, str(REPO / "tests/bin/tcp-relay"), gateway,
                                 str(PG_RELAY_PORT), "127.0.0.1", "5432"], root / "relay.log"))
        sink = root / "sink"
        processes.append(_start([sys.executable, str(REPO / "tests/bin/lmtp-sink"), gateway,
                                 str(SINK_PORT), str(sink)], root / "sink.log"))
        from sqlalchemy import make_url

        url = make_url(_pg_schema_url(schema)).set(host=gateway, port=PG_RELAY_PORT)
        for index, name in enumerate(("a", "b"), 1):
            hub = Hub(root / name, url.render_as_string(hide_password=False),
                      lmtp={"timeout": "60s"})
            hub.root.mkdir()
            hub.write_config()
            hosts[name] = Host(name, f"crt{name}{tag}", f"10.{net}.{index}.2", hub)
        # One database and one key ring for both hosts (an admin copies the keys file).
        hosts["a"].hub.ok("init")
        shutil.copy2(hosts["a"].hub.root / "keys", hosts["b"].hub.root / "keys")
        hosts["a"].hub.ok("owner", "add", ALICE, "--lmtp-next", f"{gateway}:{SINK_PORT}")
        for host in hosts.values():
            host.start()
        yield Network(root, gateway, hosts, sink, processes)
    finally:
        for host in hosts.values():
            if host.server is not None:
                host.server.kill()
        for process in processes:
            process.kill()
            process.wait(timeout=30)
            if process.stdout is not None:
                process.stdout.close()
        for namespace in made:
            subprocess.run(["ip", "netns", "delete", namespace], check=False, timeout=30)
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def _send(host: Host, sender: str, recipient: str, data: bytes) -> tuple[int, bytes]:
    with client(host.lmtp_target()) as lmtp:
        _, [reply] = transaction(lmtp, sender, [recipient], data)
    return reply


def test_held_on_host_a_released_by_a_confirmation_at_host_b(network: Network) -> None:
    a, b = network.hosts["a"], network.hosts["b"]
    before = len(network.stored())
    code, said = _send(a, "carol@remote.test", ALICE,
                       message(sender="carol@remote.test", subject="From A", body="via A\n"))
    assert code == 250 and b"held as" in said
    [(_, challenge)] = a.hub.outbox.drain(1)
    confirm = confirm_address_of(challenge)
    code, said = _send(b, "carol@remote.test", confirm,
                       message(sender="carol@remote.test", to=confirm, subject="Re"))
    assert code == 250 and b"confirmed; released 1" in said, said
    stored = network.stored()[before:]
    assert len(stored) == 1 and b"via A" in stored[0]
    assert b.server is not None and a.server is not None
    assert [r["outcome"] for r in b.server.deliveries()][-1] == "confirmed"


def test_concurrent_confirmations_on_both_hosts_deliver_once(network: Network) -> None:
    # Two messages held from one sender; his confirmation reaches both hosts at the same
    # moment (a retry crossing the original). Each held message reaches the mailbox once.
    a, b = network.hosts["a"], network.hosts["b"]
    sender = "dave@remote.test"
    for number in (1, 2):
        _send(a if number == 1 else b, sender, ALICE,
              message(sender=sender, subject=f"held {number}", body=f"dave {number}\n",
                      headers={"Message-ID": f"<dave-{number}@remote.test>"}))
    [(_, challenge)] = a.hub.outbox.drain(1)
    confirm = confirm_address_of(challenge)
    before = len(network.stored())
    replies: list[tuple[int, bytes]] = []
    start = threading.Barrier(2)

    def confirm_at(host: Host) -> None:
        start.wait()
        replies.append(_send(host, sender, confirm, message(sender=sender, to=confirm)))

    threads = [threading.Thread(target=confirm_at, args=(h,)) for h in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(code for code, _ in replies) == [250, 250]
    # One releases both; the other finds nothing left (token_used, or "released 0" when it
    # read the token's row before the first committed).
    released = [int(m.group(1)) for _, said in replies
                for m in [re.search(rb"released (\d+)", said)] if m]
    assert sum(released) == 2 and 2 in released, replies
    stored = network.stored()[before:]
    assert sorted(body.count(b"dave 1") + 2 * body.count(b"dave 2") for body in stored) == [1, 2]


def test_a_host_killed_mid_release_loses_nothing_and_delivers_once(network: Network) -> None:
    # Host A dies while the mailbox server has the released message half taken: A never
    # answered the confirmation, so the MTA retries it at host B, which releases it; the
    # message reaches the mailbox exactly once and the database says released.
    a, b = network.hosts["a"], network.hosts["b"]
    sender = "erin@remote.test"
    code, said = _send(b, sender, ALICE, message(sender=sender, subject="stall",
                       body="erin's\n", headers={"X-Test-Stall": "once",
                                                  "Message-ID": "<erin@remote.test>"}))
    assert code == 250
    [(_, challenge)] = b.hub.outbox.drain(1)
    confirm = confirm_address_of(challenge)
    before = len(network.stored())
    stalled = len(list(network.sink.glob("stalled-*")))
    failed: list[BaseException] = []

    def confirm_at_a() -> None:
        try:
            _send(a, sender, confirm, message(sender=sender, to=confirm))
        except BaseException as error:  # noqa: BLE001 - the connection dies with host A
            failed.append(error)

    thread = threading.Thread(target=confirm_at_a)
    thread.start()
    wait_until(lambda: len(list(network.sink.glob("stalled-*"))) > stalled,
               "host A's release to reach the mailbox server")
    assert a.server is not None
    a.server.kill()
    thread.join(timeout=60)
    assert failed, "host A answered although it was killed"
    code, said = _send(b, sender, confirm, message(sender=sender, to=confirm))
    assert code == 250 and b"released 1" in said, said
    stored = network.stored()[before:]
    assert len(stored) == 1 and b"erin's" in stored[0]
    [row] = [r for r in b.hub.held(ALICE) if r["sender"] == sender]
    assert row["status"] == "released"
    a.start()
    code, said = _send(a, sender, confirm, message(sender=sender, to=confirm))
    assert code == 250 and b"(token_used)" in said
    assert len(network.stored()) == before + 1
