"""crtool behind a real Postfix on loopback: alice is protected through ~/.forward, bob is a
correspondent with a mailbox of his own, and every message goes through Postfix's own sendmail,
queue and local(8) delivery, so the exit codes, the environment, the `From ` line and the
deferral are Postfix's, not a stand-in's. Set up by .ci/postfix.sh; the tests
skip with the reason when it has not run, and CI (CRTOOL_REQUIRE_E2E=1) turns that into a failure.
"""

from __future__ import annotations

import fcntl
import re
import shutil
from collections.abc import Iterator

import pytest

from tests.e2e import host
from tests.e2e.host import ALICE, alice, bob

pytestmark = pytest.mark.e2e

CONFIRM = re.compile(rb"^Reply-To: (alice-confirm-[a-z2-7]+@example\.test)$", re.MULTILINE)


@pytest.fixture(scope="session")
def postfix_host() -> None:
    reason = host.why_not_available()
    if reason is not None:
        pytest.skip(f"no Postfix to test against: {reason}")
    host.prepare_once()


@pytest.fixture
def shared(postfix_host: None) -> Iterator[None]:
    """Alice's database stays in place while this test runs."""
    with host.locked(fcntl.LOCK_SH):
        yield


@pytest.fixture
def exclusive(postfix_host: None) -> Iterator[None]:
    """No other test delivers to alice while this one breaks her installation."""
    with host.locked(fcntl.LOCK_EX):
        yield


def test_whitelisted_sender_arrives_in_alices_maildir(shared: None) -> None:
    # Under the sysexits profile there is no next .forward line: crtool writes the Maildir,
    # without the `From ` line Postfix put first and without quoting `From ` in the body.
    word = host.marker()
    alice.crtool("whitelist", "add", f"carol-{word}@remote.test")
    bob.send(f"carol-{word}@remote.test", ALICE,
             host.mail(f"carol-{word}@remote.test", ALICE, f"Notes {word}", f"{word}@remote.test",
                       body="Hello Alice,\nFrom the minutes of Monday.\n"))
    [delivered] = host.wait_for("the message in alice's Maildir", lambda: alice.messages(word))
    assert delivered.startswith(f"Return-Path: <carol-{word}@remote.test>\n".encode())
    assert b"\nDelivered-To: alice@example.test\n" in delivered
    assert b"\nFrom the minutes of Monday.\n" in delivered
    assert not any(item["subject"] == f"Notes {word}" for item in alice.held())


def test_bob_is_challenged_once_confirms_and_then_passes(shared: None) -> None:
    # Bob's first mail is held and answered by one challenge from the null sender.
    word = host.marker()
    log = host.MailLog()
    bob.send("bob@remote.test", ALICE,
             host.mail("bob@remote.test", ALICE, f"Lunch {word}", f"first-{word}@remote.test"))
    [challenge] = host.wait_for("the challenge in bob's Maildir", lambda: bob.messages(word))
    assert challenge.startswith(b"Return-Path: <>\n")
    assert b"\nAuto-Submitted: auto-replied\n" in challenge
    assert f"\nIn-Reply-To: <first-{word}@remote.test>\n".encode() in challenge
    confirm = CONFIRM.search(challenge)
    assert confirm is not None, challenge.decode()
    assert alice.messages(word) == []
    [held] = [item for item in alice.held() if item["subject"] == f"Lunch {word}"]
    assert (held["sender"], held["status"], held["reason"]) == (
        "bob@remote.test", "held", "challenged")
    # What is held is what Postfix handed over, less its `From ` line.
    shown = alice.crtool("pending", "show", str(held["id"]))
    assert shown.startswith("Return-Path: <bob@remote.test>\n")

    # Bob answers the challenge with his mail program; the held mail arrives.
    bob.send("bob@remote.test", confirm.group(1).decode(),
             host.mail("bob@remote.test", confirm.group(1).decode(), f"Re: Lunch {word}",
                       f"reply-{word}@remote.test", body="Yes, that was me.\n",
                       extra=f"In-Reply-To: <first-{word}@remote.test>\n"))
    [released] = host.wait_for("the released mail in alice's Maildir",
                               lambda: alice.messages(f"first-{word}"))
    assert released.startswith(b"Return-Path: <bob@remote.test>\n")
    assert alice.messages(f"reply-{word}") == []
    assert "bob@remote.test" in alice.crtool("whitelist", "list").split()

    # His next mail passes straight through, and no second challenge is sent.
    bob.send("bob@remote.test", ALICE,
             host.mail("bob@remote.test", ALICE, f"Again {word}", f"second-{word}@remote.test"))
    host.wait_for("bob's second mail in alice's Maildir",
                  lambda: alice.messages(f"second-{word}"))
    host.wait_for("an empty queue", lambda: not log.queued() or None)
    assert len(bob.messages(word)) == 1
    assert not any(item["subject"] == f"Again {word}" for item in alice.held())


def test_null_sender_is_held_without_a_challenge(shared: None) -> None:
    # A bounce can never be answered: it is held, and nothing is sent.
    word = host.marker()
    log = host.MailLog()
    bob.send("", ALICE, host.mail("MAILER-DAEMON@remote.test", ALICE,
                                  f"Undelivered Mail {word}", f"{word}@remote.test"))

    def held() -> list[dict[str, object]]:
        return [item for item in alice.held() if item["subject"] == f"Undelivered Mail {word}"]

    [item] = host.wait_for("the bounce held in alice's database", held)
    assert (item["sender"], item["reason"], item["challenged_at"]) == ("", "null_sender", None)
    queue_id = host.wait_for("the bounce's queue id in the mail log",
                             lambda: log.queue_id(f"{word}@remote.test"))
    # Postfix logs the delivery only after crtool has exited, a moment after the row exists.
    host.wait_for("Postfix logging the delivery to crtool as sent",
                  lambda: [line for line in log.lines(queue_id)
                           if "status=sent (delivered to command" in line])
    assert alice.messages(word) == []


def test_missing_database_defers_and_a_flush_delivers_once_it_is_back(
        exclusive: None) -> None:
    # A missing database is a broken installation: Postfix must keep the message (exit 75,
    # status 4.3.0) and bounce nothing; once the database is back the queue delivers it.
    word = host.marker()
    sender = f"bob-{word}@remote.test"  # bob's mailbox, where a bounce would land
    alice.crtool("whitelist", "add", sender)
    log = host.MailLog()
    crtool_home = alice.home / ".crtool"
    away = alice.home / f".crtool-away-{word}"
    away.mkdir()
    moved = [p for p in crtool_home.iterdir() if p.name.startswith("crtool.db")]
    assert any(p.name == "crtool.db" for p in moved)
    for path in moved:
        shutil.move(path, away / path.name)
    try:
        bob.send(sender, ALICE, host.mail(sender, ALICE, f"Report {word}", f"{word}@remote.test"))
        queue_id = host.wait_for("the message id in the mail log",
                                 lambda: log.queue_id(f"{word}@remote.test"))
        [deferred] = host.wait_for(
            "the deferral in the mail log",
            lambda: [line for line in log.lines(queue_id) if "status=deferred" in line])
        assert "dsn=4.3.0" in deferred and "crtool.db" in deferred, deferred
        assert queue_id in log.queued()
        assert not any("status=bounced" in line for line in log.lines(queue_id))
        assert alice.messages(word) == []
    finally:
        for path in away.iterdir():
            shutil.move(path, crtool_home / path.name)
        away.rmdir()

    host.run(["postqueue", "-f"])
    [delivered] = host.wait_for("the message in alice's Maildir", lambda: alice.messages(word))
    assert delivered.startswith(f"Return-Path: <{sender}>\n".encode())
    host.wait_for("the message to leave the queue", lambda: queue_id not in log.queued())
    lines = log.lines(queue_id)
    assert any("status=sent (delivered to command" in line for line in lines), lines
    assert not any("status=bounced" in line or "non-delivery" in line for line in lines), lines
    assert bob.messages(word) == []



def test_the_server_a_delivery_starts_never_keeps_postfix_waiting_and_dies_harmlessly(
        exclusive: None) -> None:
    # With serve_idle on, the first delivery starts `crtool serve` as alice. local(8) reads
    # the command's output until it is closed and signals its process group on a timeout:
    # Postfix logs the delivery as sent while that server still runs, so it waited for none
    # of it. Then the server is killed at random moments between and during deliveries, and
    # every message still arrives or is held exactly once.
    import os
    import random
    import signal
    import time

    word = host.marker()
    friend = f"carol-{word}@remote.test"
    alice.crtool("whitelist", "add", friend)
    host.set_serve_idle("10m")
    log = host.MailLog()
    try:
        bob.send(friend, ALICE, host.mail(friend, ALICE, f"First {word}", f"f-{word}@remote.test"))
        queue_id = host.wait_for("the message id in the mail log",
                                 lambda: log.queue_id(f"f-{word}@remote.test"))
        [sent] = host.wait_for("the delivery logged as sent", lambda: [
            line for line in log.lines(queue_id) if "status=sent (delivered to command" in line])
        server = host.wait_for("alice's server", host.alices_server)
        assert os.getsid(server) == server
        assert alice.messages(f"f-{word}")
        delay = float(re.search(r" delay=([0-9.]+),", sent).group(1))  # type: ignore[union-attr]
        assert delay < 20, sent

        chance = random.Random(15)  # noqa: S311 - test timing, not a secret
        subjects = []
        for i in range(8):
            pid = host.alices_server()
            if pid and pid > 0 and chance.random() < 0.6:
                time.sleep(chance.uniform(0, 0.2))
                os.kill(pid, signal.SIGKILL)
            if i % 2:
                sender = f"stranger{i}-{word}@remote.test"
                subjects.append(f"Held {i} {word}")
                bob.send(sender, ALICE, host.mail(sender, ALICE, subjects[-1],
                                                  f"h{i}-{word}@remote.test"))
            else:
                bob.send(friend, ALICE, host.mail(friend, ALICE, f"Passed {i} {word}",
                                                  f"p{i}-{word}@remote.test"))
        for i in range(0, 8, 2):
            host.wait_for(f"message {i} in alice's Maildir",
                          lambda i=i: alice.messages(f"p{i}-{word}"))  # type: ignore[misc]
        host.wait_for("the held messages", lambda: len(
            [item for item in alice.held() if word in str(item["subject"])]) == len(subjects))
        host.wait_for("an empty queue", lambda: not log.queued() or None)
        assert sorted(str(item["subject"]) for item in alice.held()
                      if word in str(item["subject"])) == sorted(subjects)
        for i in range(0, 8, 2):
            assert len(alice.messages(f"p{i}-{word}")) == 1
        # (The challenges to the made-up strangers bounce; nothing to alice does.)
        assert not any("status=bounced" in line or "status=deferred" in line
                       for line in log.text().splitlines() if f"to=<{ALICE}>" in line)
    finally:
        host.set_serve_idle("0s")
        pid = host.alices_server()
        if pid and pid > 0:
            os.kill(pid, signal.SIGTERM)
            host.wait_for("alice's server to stop", lambda: host.alices_server() is None)


def test_cron_line_purges_in_crons_environment(shared: None) -> None:
    # etc/crontab as cron runs it: /bin/sh, PATH=/usr/bin:/bin, HOME set, in $HOME. It must
    # find alice's crtool HOME by itself, print nothing on success and keep what is not old.
    word = host.marker()
    bob.send("", ALICE, host.mail("MAILER-DAEMON@remote.test", ALICE, f"Fresh {word}",
                                  f"{word}@remote.test"))
    host.wait_for("the bounce held", lambda: [i for i in alice.held()
                                             if i["subject"] == f"Fresh {word}"])
    [line] = [line for line in host.recipe("crontab").splitlines()
              if line and not line.startswith("#") and " purge" in line]
    command = line.split(None, 5)[5]
    result = host.run(["runuser", "-u", "alice", "--", "env", "-i", f"HOME={alice.home}",
                       "LOGNAME=alice", "SHELL=/bin/sh", "PATH=/usr/bin:/bin",
                       "/bin/sh", "-c", f"cd && {command}"], check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert [i["subject"] for i in alice.held() if i["subject"] == f"Fresh {word}"] == [
        f"Fresh {word}"]
