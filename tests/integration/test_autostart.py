"""The resident server started on demand (serve_idle): the delivery that finds no server starts
one, qmail-local never waits for it, the deliveries after it are its clients, it exits when
idle, and killing it at any moment loses nothing. qmail-local is the emulation of
test_qmail_profile (it reads a program's output until every copy of the pipe is closed, as
qmail-local does); Postfix's local(8) is in tests/e2e/test_postfix.py."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from pathlib import Path

from crtool import autostart
from tests.integration.test_qmail_profile import install_qmail
from tests.support import Mailbox, message

FRIEND = "friend@example.org"


def _serve_idle(box: Mailbox, value: str) -> None:
    path = box.home / "config.toml"
    path.write_text(re.sub(r'(?m)^serve_idle = .*$', f'serve_idle = "{value}"',
                           path.read_text()))


def _wait_for(predicate: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not callable(predicate) or not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def _server(box: Mailbox) -> int | None:
    return autostart.running(str(box.home))


def _listening(box: Mailbox) -> bool:
    return _server(box) is not None and (box.home / "crtool.sock").exists()


def _tally(box: Mailbox) -> int:
    path = box.home / "delivered.tally"
    return path.stat().st_size if path.exists() else 0


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0
    except OSError:
        return True


def _stop(box: Mailbox) -> None:
    pid = _server(box)
    if pid and pid > 0:
        os.kill(pid, signal.SIGTERM)
        _wait_for(lambda: _gone(pid), "the server to exit")


def test_a_delivery_starts_a_detached_server_qmail_never_waits_for(mailbox: Mailbox) -> None:
    _serve_idle(mailbox, "10m")
    mailbox.ok("whitelist", "add", FRIEND)
    qmail = install_qmail(mailbox)
    try:
        started = time.monotonic()
        first = qmail.deliver(message(FRIEND), FRIEND)
        took = time.monotonic() - started
        # qmail-local read the program's output to its end and got the exit code: the
        # server, started by that very program, holds none of its descriptors.
        assert first.status == "delivered" and first.codes == [0], first
        assert took < 30
        _wait_for(lambda: _listening(mailbox), "the server to listen")
        pid = _server(mailbox)
        assert pid is not None and pid > 0
        assert os.getsid(pid) == pid  # a session of its own: no signal to the MTA's group
        fds = {int(n): os.readlink(f"/proc/{pid}/fd/{n}")
               for n in os.listdir(f"/proc/{pid}/fd")}
        assert fds[0] == fds[1] == fds[2] == "/dev/null"
        assert not any(target.startswith("pipe:") for target in fds.values()), fds
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        # The delivery that started it worked in-process (the fast path counted it); the
        # next ones are the server's (it records the event in the database instead).
        assert _tally(mailbox) == 1
        for _ in range(2):
            assert qmail.deliver(message(FRIEND), FRIEND).codes == [0]
        stranger = qmail.deliver(message("stranger@remote.test"), "stranger@remote.test")
        assert stranger.codes == [99] and b"held as " in stranger.output[0]
        assert _tally(mailbox) == 1
        stats = json.loads(mailbox.ok("stats", "--json"))
        assert stats["counts"]["delivered"] == 3
        assert _server(mailbox) == pid  # one server, still the same
        mailbox.outbox.drain(1)
    finally:
        _stop(mailbox)


def test_the_server_exits_when_idle_and_the_next_delivery_starts_another(
        mailbox: Mailbox) -> None:
    _serve_idle(mailbox, "2s")
    mailbox.ok("whitelist", "add", FRIEND)
    try:
        assert mailbox.deliver(message(FRIEND), FRIEND).returncode == 0
        _wait_for(lambda: _listening(mailbox), "the server to listen")
        first = _server(mailbox)
        _wait_for(lambda: _server(mailbox) is None, "the idle server to exit", 30)
        assert not (mailbox.home / "crtool.sock").exists()
        assert mailbox.deliver(message(FRIEND), FRIEND).returncode == 0
        assert _tally(mailbox) == 2  # in-process again
        _wait_for(lambda: _listening(mailbox), "a new server to listen")
        assert _server(mailbox) != first
    finally:
        _stop(mailbox)


def test_serve_idle_0_starts_no_server(mailbox: Mailbox) -> None:
    # The test homes' setting (tests/support.py): each delivery works alone.
    assert re.search(r'(?m)^serve_idle = "0s"$', (mailbox.home / "config.toml").read_text())
    assert mailbox.deliver(message("stranger@remote.test"), "stranger@remote.test"
                           ).returncode == 99
    time.sleep(1)
    assert _server(mailbox) is None
    assert not (mailbox.home / "crtool.sock").exists()
    mailbox.outbox.drain(1)


def test_a_server_killed_at_any_moment_loses_nothing(mailbox: Mailbox) -> None:
    """Deliveries one after another while the servers they start are SIGKILLed at random
    moments: every delivery ends 0 or 99 for qmail, every stranger's message is held exactly
    once and challenged, every whitelisted one accepted."""
    _serve_idle(mailbox, "10m")
    mailbox.ok("whitelist", "add", FRIEND)
    qmail = install_qmail(mailbox)
    chance = random.Random(15)  # noqa: S311 - test timing, not a secret
    strangers = []
    kills = 0
    try:
        for i in range(24):
            pid = _server(mailbox)
            if pid and pid > 0 and chance.random() < 0.5:
                # At a random moment of the coming delivery: before, during or after it.
                delay = chance.uniform(0, 0.3)
                killer = os.fork()
                if killer == 0:  # pragma: no cover - the child only sleeps and kills
                    time.sleep(delay)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    finally:
                        os._exit(0)
                kills += 1
            else:
                killer = 0
            if i % 3 == 0:
                sender = f"stranger{i}@remote.test"
                strangers.append(sender)
                result = qmail.deliver(message(sender, subject=f"s{i}"), sender)
                assert result.codes == [99], result
            else:
                result = qmail.deliver(message(FRIEND, subject=f"w{i}"), FRIEND)
                assert result.codes == [0], result
            if killer:
                os.waitpid(killer, 0)
    finally:
        _stop(mailbox)
    assert kills >= 3
    held = json.loads(mailbox.ok("pending", "list", "--json"))
    assert sorted(item["sender"] for item in held) == sorted(strangers)
    # A server killed between sendmail and recording it sent leaves the challenge to be
    # sent again by the fallback (at least once, as for any retry); nobody else gets one.
    sent = len(mailbox.outbox._new())
    assert len(strangers) <= sent <= len(strangers) + kills
    challenged = [args[-1] for args, _ in mailbox.outbox.drain(sent)]
    assert set(challenged) == set(strangers)


def test_a_second_server_for_the_same_home_refuses_to_start(mailbox: Mailbox,
                                                           tmp_path: Path) -> None:
    _serve_idle(mailbox, "10m")
    assert mailbox.deliver(message(FRIEND), FRIEND).returncode == 99
    mailbox.outbox.drain(1)
    try:
        _wait_for(lambda: _listening(mailbox), "the server to listen")
        second = mailbox.run("serve", "--idle", "1m")
        assert second.returncode == 4
        assert second.stderr.startswith(b"crtool: error: another server is listening on ")
    finally:
        _stop(mailbox)


def _servers_for(box: Mailbox) -> list[int]:
    """Every process running `crtool … serve` for this home."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and str(box.home).encode() in argv:
            found.append(int(entry.name))
    return found


def test_deliveries_at_once_leave_one_server(mailbox: Mailbox) -> None:
    # Eight deliveries that all find no server may start more than one; every one but the
    # lock's holder gives up at once, and they all deliver.
    from concurrent.futures import ThreadPoolExecutor

    _serve_idle(mailbox, "10m")
    mailbox.ok("whitelist", "add", FRIEND)
    try:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: mailbox.deliver(message(FRIEND), FRIEND).returncode,
                                  range(8)))
        assert codes == [0] * 8
        _wait_for(lambda: _listening(mailbox), "the server to listen")
        _wait_for(lambda: _servers_for(mailbox) == [_server(mailbox)], "one server alone", 30)
    finally:
        _stop(mailbox)
    left = _servers_for(mailbox)
    assert left == [], [(Path(f"/proc/{pid}/status").read_text()[:200],
                         Path(f"/proc/{pid}/cmdline").read_bytes()) for pid in left]


def test_an_idle_server_answers_who_connected_before_it_went(mailbox: Mailbox) -> None:
    # The moment an idle server goes: its socket's name goes first, so a new client finds
    # none (and delivers in-process), and a client already in the listen queue is answered.
    import socket

    from crtool import client, serve

    mailbox.ok("whitelist", "add", FRIEND)
    server = serve.Server(mailbox.home, idle=0.1)
    server.bind()
    path = mailbox.user_home / "incoming.eml"
    path.write_bytes(message(FRIEND))
    queued = client.connect(str(server.path))
    assert queued is not None
    request = client.Request(sender=FRIEND, recipient=mailbox.address,
                             environ={b"DTLINE": b"Delivered-To: alice@example.test\n"})
    try:
        with open(path, "rb") as stdin, queued:
            socket.send_fds(queued, [client.encode_request(request, 0)], [stdin.fileno()])
            server.retire()
            assert not server.path.exists()
            assert client.connect(str(server.path)) is None
            assert queued.recv(16) == client.ACK
            code, line = client.decode_reply(queued.recv(client.MAX_PACKET))
    finally:
        server.drain()
        server.unbind()
        server.warm.close()
    assert (code, line) == (0, "")
    assert json.loads(mailbox.ok("stats", "--json"))["counts"]["delivered"] == 1
