"""The resident mode: `crtool serve` delivers what `crtool deliver` hands it, with the same
outcomes as the in-process path, and a server that is stopped, stuck or killed loses nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import Mailbox, confirm_address_of, crtool_executable, message, qmail_env

STRANGER = "bob@remote.test"
_ID = re.compile(rb"\b[a-z2-7]{8}\b")
_SERVED = re.compile(r"^crtool serve: (continue|delivered|held|dropped|confirmed|bounced|"
                     r"tempfail): ", re.MULTILINE)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    log_path: Path
    socket_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def served(self) -> int:
        """How many deliveries the server answered, from its log."""
        return len(_SERVED.findall(self.log()))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def _wait_for(predicate: object, what: str) -> None:
    """Poll until `predicate()` holds; a bound only so that a broken server fails the test
    instead of hanging it."""
    deadline = time.monotonic() + 60
    while not callable(predicate) or not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def start_server(box: Mailbox) -> Server:
    log_path = box.user_home / "serve.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([crtool_executable(), "--home", str(box.home), "serve"],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   env=box.base_env())
    server = Server(process, log_path, box.home / "crtool.sock")
    _wait_for(lambda: "listening on" in server.log() or process.poll() is not None,
              "the server to listen")
    assert process.poll() is None, server.log()
    return server


@pytest.fixture
def server(mailbox: Mailbox) -> Iterator[Server]:
    running = start_server(mailbox)
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait(timeout=60)


def deliver_file(box: Mailbox, data: bytes, sender: str, recipient: str | None = None,
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 ) -> subprocess.CompletedProcess[bytes]:
    """`crtool deliver` with the message on stdin as a seekable file, as qmail-local gives it."""
    path = box.user_home / "incoming.eml"
    path.write_bytes(data)
    environ = env if env is not None else qmail_env(sender, recipient or box.address,
                                                    box.user_home)
    environ["CRTOOL_TEST_OUTBOX"] = str(box.outbox.path)
    with open(path, "rb") as stdin:
        return subprocess.run([crtool_executable(), "deliver", *args], stdin=stdin,
                              capture_output=True, env=environ, cwd=box.user_home,
                              timeout=120, check=False)


def other_mailbox(tmp_path: Path, name: str) -> Mailbox:
    user_home = tmp_path / name
    user_home.mkdir(mode=0o755)
    box = Mailbox(user_home=user_home,
                  database_url=f"sqlite:///{user_home / '.crtool' / 'crtool.db'}")
    box.init()
    return box


def _script(box: Mailbox) -> list[tuple[int, bytes]]:
    """Every kind of delivery, each through a file or a pipe; (exit code, stderr) for each."""
    box.ok("whitelist", "add", "friend@example.org", "@corp.test")
    box.ok("blacklist", "add", "spam@remote.test")
    seen = []

    def record(result: subprocess.CompletedProcess[bytes]) -> None:
        seen.append((result.returncode, _ID.sub(b"ID", result.stderr)))

    record(deliver_file(box, message("friend@example.org"), "Friend@Example.org"))
    record(box.deliver(message("x@corp.test"), "x@corp.test"))
    record(deliver_file(box, message("spam@remote.test"), "spam@remote.test"))
    record(deliver_file(box, message(STRANGER, subject="Lunch?"), STRANGER))
    record(box.deliver(message(STRANGER, subject="Lunch?"), STRANGER))
    record(deliver_file(box, message("MAILER-DAEMON@remote.test"), ""))
    [(_, challenge)] = box.outbox.drain(1)
    reply = message(STRANGER, subject="Re: Please confirm", to=confirm_address_of(challenge))
    record(deliver_file(box, reply, STRANGER, confirm_address_of(challenge)))
    record(box.deliver(message(STRANGER, subject="Again"), STRANGER))
    postfix = b"From friend@example.org Sun Nov 29 10:00:00 2026\n" + message("friend@example.org")
    record(box.deliver(postfix, "friend@example.org",
                       args=("--mta", "postfix", "--sender", "friend@example.org")))
    broken = qmail_env(STRANGER, box.address, box.user_home)
    del broken["SENDER"]
    record(deliver_file(box, message(), STRANGER, env=broken))
    return seen


def _state(box: Mailbox) -> dict[str, object]:
    held = json.loads(box.ok("pending", "list", "--all", "--json"))
    return {
        "held": sorted((m["sender"], m["reason"], m["status"]) for m in held),
        "stats": json.loads(box.ok("stats", "--json")),
        "maildir": sorted(box.maildir_messages()),
        "sent": len(box.outbox.drain(0)),
    }


def test_both_paths_give_the_same_outcomes(mailbox: Mailbox, server: Server,
                                           tmp_path: Path) -> None:
    # The same deliveries, served by `crtool serve` and handled in-process, end the same way:
    # exit codes, stderr lines, what is held, what is sent, what is delivered, what is counted.
    in_process = other_mailbox(tmp_path, "carol")
    served = _script(mailbox)
    assert served == _script(in_process)
    assert _state(mailbox) == _state(in_process)
    # Every delivery went through the server (the missing envelope too: it answers tempfail).
    assert server.served() == len(served)
    assert not (in_process.home / "crtool.sock").exists()


def test_the_socket_is_the_owners_alone_and_one_server_runs(mailbox: Mailbox,
                                                            server: Server) -> None:
    mode = server.socket_path.lstat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    log_before = server.log()
    second = mailbox.run("serve")
    assert second.returncode == 4
    assert second.stderr.startswith(b"crtool: error: another server is listening on ")
    assert second.stderr.count(b"\n") == 1
    assert server.process.poll() is None
    # The second one's probe is no request: the first has nothing to log about it, and
    # doctor's probe neither.
    assert mailbox.run("doctor").stdout.count(b"crtool.sock") == 0
    assert deliver_file(mailbox, message(STRANGER), STRANGER).returncode == 99
    _wait_for(lambda: server.served() == 1, "the delivery to be logged")
    assert server.log()[len(log_before):].splitlines() == [
        line for line in server.log()[len(log_before):].splitlines() if _SERVED.match(line)]
    mailbox.outbox.drain(1)


def test_an_unknown_mta_profile_on_the_socket_is_refused(mailbox: Mailbox,
                                                         server: Server) -> None:
    """Only the command line's own profiles cross the socket; a 40-character name from
    another client is refused, never stored."""
    from crtool import client

    path = mailbox.user_home / "incoming.eml"
    path.write_bytes(message(STRANGER))
    request = client.Request(mta="x" * 40, sender=STRANGER, recipient=mailbox.address)
    with open(path, "rb") as stdin:
        connection = client.connect(str(server.socket_path))
        assert connection is not None
        with connection:
            answer = client._exchange(connection, request, stdin.fileno(), 0)
    assert answer is None
    _wait_for(lambda: "refused a malformed request: unknown MTA profile" in server.log(),
              "the refusal to be logged")
    assert server.served() == 0
    assert json.loads(mailbox.ok("pending", "list", "--json")) == []


def test_sigterm_removes_the_socket_and_deliver_carries_on_in_process(
        mailbox: Mailbox, server: Server) -> None:
    assert server.stop() == 0
    assert not server.socket_path.exists()
    result = deliver_file(mailbox, message(STRANGER), STRANGER)
    assert result.returncode == 99 and result.stderr.startswith(b"crtool: held as ")
    mailbox.outbox.drain(1)


def test_a_stale_socket_is_no_reason_to_retry(mailbox: Mailbox) -> None:
    # A server that died left its socket behind: connections are refused, deliver goes on.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(mailbox.home / "crtool.sock"))
    stale.close()
    mailbox.ok("whitelist", "add", "friend@example.org")
    assert deliver_file(mailbox, message(), "friend@example.org").returncode == 0
    assert mailbox.deliver(message(STRANGER), STRANGER).returncode == 99
    mailbox.outbox.drain(1)
    # A new server replaces the stale socket.
    fresh = start_server(mailbox)
    try:
        assert deliver_file(mailbox, message(), "friend@example.org").returncode == 0
        assert fresh.served() == 1
    finally:
        assert fresh.stop() == 0


def test_a_stuck_server_is_passed_by(mailbox: Mailbox, server: Server) -> None:
    # A stopped (SIGSTOP) server accepts connections into its backlog but never answers:
    # deliver gives up on it and delivers in-process; continued, it does not deliver again.
    server.process.send_signal(signal.SIGSTOP)
    try:
        result = deliver_file(mailbox, message(STRANGER), STRANGER)
    finally:
        server.process.send_signal(signal.SIGCONT)
    assert result.returncode == 99 and result.stderr.startswith(b"crtool: held as ")
    mailbox.outbox.drain(1)
    assert server.stop() == 0, server.log()
    assert server.served() == 0
    assert len(json.loads(mailbox.ok("pending", "list", "--json"))) == 1


def test_killing_the_server_mid_delivery_loses_nothing(mailbox: Mailbox, server: Server,
                                                       tmp_path: Path) -> None:
    # The server is killed while its sendmail runs: after the hold was committed, before the
    # challenge was marked sent. The client delivers in-process, finds the hold by its digest
    # and sends the challenge the server never finished sending: one hold, one challenge.
    gate = tmp_path / "gate"
    sendmail = tmp_path / "stalling-sendmail"
    sendmail.write_text(
        "#!/bin/sh\n"
        f"if mkdir '{gate}' 2>/dev/null; then echo $$ > '{gate}/pid'; exec sleep 600; fi\n"
        f"exec '{sys.executable}' '{Path(__file__).parents[1] / 'bin' / 'capture-sendmail'}'"
        ' "$@"\n')
    sendmail.chmod(0o755)
    config = mailbox.home / "config.toml"
    config.write_text(re.sub(r'(?m)^sendmail = .*$', f'sendmail = "{sendmail}"',
                             config.read_text()))
    path = mailbox.user_home / "incoming.eml"
    path.write_bytes(message(STRANGER, subject="Lunch?"))
    env = qmail_env(STRANGER, mailbox.address, mailbox.user_home)
    env["CRTOOL_TEST_OUTBOX"] = str(mailbox.outbox.path)
    with open(path, "rb") as stdin:
        delivery = subprocess.Popen([crtool_executable(), "deliver"], stdin=stdin,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                    cwd=mailbox.user_home)
    try:
        _wait_for(lambda: (gate / "pid").exists() and (gate / "pid").read_text().strip(),
                  "the server's sendmail to start")
        server.process.kill()
        server.process.wait(timeout=60)
        _, stderr = delivery.communicate(timeout=120)
    finally:
        os.kill(int((gate / "pid").read_text()), signal.SIGKILL)
    assert delivery.returncode == 99, stderr
    assert stderr.startswith(b"crtool: already held as ")
    [(_, challenge)] = mailbox.outbox.drain(1)
    assert "Lunch?" in str(challenge["Subject"])
    [held] = json.loads(mailbox.ok("pending", "list", "--json"))
    assert held["reason"] == "challenged"
    # The killed server's socket is stale now; the next delivery goes on in-process.
    assert deliver_file(mailbox, message("x@else.test"), "x@else.test").returncode == 99
    mailbox.outbox.drain(1)


def _imports(box: Mailbox, sender: str) -> str:
    path = box.user_home / "incoming.eml"
    path.write_bytes(message(sender))
    env = qmail_env(sender, box.address, box.user_home)
    env["CRTOOL_TEST_OUTBOX"] = str(box.outbox.path)
    with open(path, "rb") as stdin:
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "crtool", "deliver"],
                                stdin=stdin, capture_output=True, env=env, cwd=box.user_home,
                                check=False, timeout=120)
    assert result.returncode in (0, 99), result.stderr[-2000:]
    return result.stderr.decode()


HEAVY = re.compile(r"\| +(sqlalchemy|jinja2|itsdangerous|alembic)\b", re.MULTILINE)


def test_whitelisted_mail_never_imports_sqlalchemy(tmp_path: Path) -> None:
    # The fast read path (contract §10) is for SQLite; on PostgreSQL the server is the lean way.
    mailbox = other_mailbox(tmp_path, "alice")
    mailbox.ok("whitelist", "add", "friend@example.org")
    assert HEAVY.findall(_imports(mailbox, "friend@example.org")) == []
    # An unknown sender does need them in-process.
    assert "sqlalchemy" in HEAVY.findall(_imports(mailbox, STRANGER))
    mailbox.outbox.drain(1)


def test_a_client_of_the_server_imports_only_the_standard_library(
        mailbox: Mailbox, server: Server) -> None:
    imported = _imports(mailbox, STRANGER)
    assert HEAVY.findall(imported) == []
    # Not even the standard library's slower modules: the client starts about as fast as a
    # bare interpreter.
    assert re.findall(r"\| +(argparse|dataclasses|typing|pathlib)$", imported, re.MULTILINE) == []
    mailbox.outbox.drain(1)
    assert server.served() == 1


def test_serve_mails_the_digest_every_digest_every(mailbox: Mailbox) -> None:
    """No cron needed: the resident server mails the digest once `digest_every` has passed,
    and nothing while nothing is new."""
    config = mailbox.home / "config.toml"
    config.write_text(config.read_text().replace('digest_every = "1d"', 'digest_every = "2s"'))
    held = mailbox.deliver(message("news@list.test", headers={"List-Id": "<n.list.test>"}),
                           "news@list.test")
    assert held.returncode == 99
    running = start_server(mailbox)
    try:
        _wait_for(lambda: "digest " in running.log(), "the scheduled digest")
        ((_, digest),) = mailbox.outbox.drain(1)
        assert digest["Auto-Submitted"] == "auto-generated"
        time.sleep(5)
        mailbox.outbox.drain(0)
    finally:
        assert running.stop() == 0
