"""Hub mode: `crtool lmtp` serves every owner of a host over LMTP, with one reply per
recipient, the decisions of `crtool deliver`, owners and their settings from the database."""

from __future__ import annotations

import json
import os
import re
import secrets
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PG_URL
from tests.hub import (
    Hub,
    Server,
    client,
    hub_with_alice,
    raw_session,
    read_replies,
    transaction,
    wait_until,
)
from tests.support import confirm_address_of, crtool_executable, message

ALICE = "alice@example.test"
CAROL = "carol@example.test"
FRIEND = "friend@remote.test"
STRANGER = "bob@remote.test"


@pytest.fixture
def hub(tmp_path: Path, database_url: str) -> Hub:
    """A hub with two owners: alice (Maildir) and carol (Maildir, blacklisted mail bounced)."""
    hub = hub_with_alice(tmp_path, database_url)
    hub.add_owner(CAROL, tmp_path / "mail" / "carol", "", "blacklist_action=\"bounce\"")
    hub.ok("whitelist", "add", FRIEND, "--owner", ALICE)
    return hub


@pytest.fixture
def server(hub: Hub) -> Iterator[Server]:
    running = hub.start()
    yield running
    assert running.stop() == 0, running.log()


def maildir(hub: Hub, owner: str) -> list[bytes]:
    new = hub.root.parent / "mail" / owner.split("@")[0] / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


def test_one_reply_per_recipient_in_recipient_order(hub: Hub, server: Server) -> None:
    # A friend of alice's writes to alice, carol and a stranger to the host: alice's copy is
    # delivered, carol's held (with a challenge from carol), the unknown address refused at
    # RCPT, and DATA answers once for each of the two accepted recipients, in order.
    with client(hub.socket_path) as lmtp:
        rcpt, data = transaction(lmtp, FRIEND, [ALICE, "nobody@example.test", CAROL],
                                 message(sender=FRIEND, subject="Minutes"))
    assert [code for code, _ in rcpt] == [250, 550, 250]
    assert rcpt[1][1].startswith(b"5.1.1 ")
    assert [code for code, _ in data] == [250, 250]
    assert b"whitelisted" in data[0][1] and b"held as" in data[1][1]
    [delivered] = maildir(hub, ALICE)
    # Written as a delivery agent writes it: trace lines first, LF line ends.
    assert delivered.startswith(b"Return-Path: <friend@remote.test>\nDelivered-To: "
                                b"alice@example.test\nFrom: friend@remote.test\n")
    assert b"\r\n" not in delivered
    assert maildir(hub, CAROL) == []
    [(args, challenge)] = hub.outbox.drain(1)
    assert args[-1] == FRIEND
    assert confirm_address_of(challenge).startswith("carol-confirm-")
    records = server.deliveries()
    assert [(r["recipient"], r["outcome"], r["reply"]) for r in records] == [
        (ALICE, "delivered", "250"), (CAROL, "held", "250")]


def test_a_confirmation_over_lmtp_releases_and_whitelists(hub: Hub, server: Server) -> None:
    # The stranger's mail is held; his reply to the confirm address (also through LMTP)
    # releases it into alice's Maildir and whitelists him; his next mail passes at once.
    with client(hub.socket_path) as lmtp:
        _, [(code, _)] = transaction(lmtp, STRANGER, [ALICE],
                                     message(subject="Lunch", body="Lunch on Friday?\n"))
        assert code == 250
        [(_, challenge)] = hub.outbox.drain(1)
        confirm = confirm_address_of(challenge)
        _, [(code, said)] = transaction(lmtp, STRANGER, [confirm],
                                        message(subject="Re: confirm", to=confirm))
        assert (code, b"confirmed" in said) == (250, True), said
        _, [(code, said)] = transaction(lmtp, STRANGER, [ALICE], message(subject="Again"))
        assert b"whitelisted" in said
    bodies = maildir(hub, ALICE)
    assert len(bodies) == 2 and any(b"Lunch on Friday?" in body for body in bodies)
    assert hub.ok("whitelist", "check", STRANGER, "--owner", ALICE).startswith("listed")
    hub.outbox.drain(0)


def test_owner_settings_override_the_system_defaults(hub: Hub, server: Server) -> None:
    # carol bounces blacklisted mail, alice (the system default) drops it silently.
    for owner in (ALICE, CAROL):
        hub.ok("blacklist", "add", "spam@remote.test", "--owner", owner)
    with client(hub.socket_path) as lmtp:
        _, replies = transaction(lmtp, "spam@remote.test", [ALICE, CAROL], message())
    assert [code for code, _ in replies] == [250, 550]
    assert replies[1][1].startswith(b"5.7.1 ")
    assert json.loads(hub.ok("stats", "--json", "--owner", ALICE))["counts"]["dropped"] == 1


def test_owner_commands_need_an_owner_and_owner_remove_keeps_data(hub: Hub) -> None:
    # Every owner command is scoped to --owner in system mode; removing an owner stops
    # serving it (550 at RCPT) but keeps its lists for when it is added back.
    result = hub.run("whitelist", "list")
    assert result.returncode == 2 and "--owner" in result.stderr
    assert hub.run("whitelist", "list", "--owner", "nobody@example.test").returncode == 3
    owners = json.loads(hub.ok("owner", "list", "--json"))
    assert [o["address"] for o in owners] == [ALICE, CAROL]
    assert owners[1]["overrides"] == {"blacklist_action": "bounce"}
    assert hub.run("owner", "add", "x@example.test", "--maildir", "/tmp/x",
                   "--set", "nonsense=1").returncode == 2
    assert hub.run("owner", "add", "x@example.test", "--maildir", "/tmp/x",
                   "--set", "confirm_ttl=soon").returncode == 2
    hub.ok("owner", "remove", ALICE)
    assert hub.run("owner", "remove", ALICE).returncode == 3
    running = hub.start()
    try:
        with client(hub.socket_path) as lmtp:
            code, said = lmtp.mail(FRIEND)
            assert lmtp.rcpt(ALICE)[0] == 550
    finally:
        assert running.stop() == 0
    hub.add_owner(ALICE, hub.root.parent / "mail" / "alice")
    assert hub.ok("whitelist", "list", "--owner", ALICE).split() == [FRIEND]


def test_a_broken_environment_is_450_and_nothing_is_lost(hub: Hub, server: Server) -> None:
    # A key ring others can read is refused (as by deliver): the stranger's message gets
    # 450 and stays with the MTA; nothing is held. Fixed, the retry is held once.
    keys = hub.root / "keys"
    keys.chmod(0o644)
    with client(hub.socket_path) as lmtp:
        _, [(code, said)] = transaction(lmtp, STRANGER, [ALICE], message())
        assert code == 450 and said.startswith(b"4.3.0 key ring"), said
        assert hub.held(ALICE) == []
        keys.chmod(0o600)
        _, [(code, _)] = transaction(lmtp, STRANGER, [ALICE], message())
        assert code == 250
    assert len(hub.held(ALICE)) == 1
    hub.outbox.drain(1)


def test_health_says_ok_only_while_the_server_answers(hub: Hub) -> None:
    result = hub.run("health")
    assert result.returncode == 4 and result.stderr.startswith("crtool: lmtp unix:")
    running = hub.start()
    try:
        assert hub.ok("health").strip() == "ok"
    finally:
        assert running.stop() == 0


# Bad input ------------------------------------------------------------------------------------

def test_pipelined_and_malformed_commands_get_a_reply_each(hub: Hub, server: Server) -> None:
    # A client that writes everything at once (PIPELINING) gets its replies in order; garbage
    # gets 500/501 (or 550 for an address that is none) and the session goes on; HELO/EHLO
    # are not LMTP.
    with raw_session(hub.socket_path) as sock:
        read_replies(sock, 1)
        body = message(sender=FRIEND).replace(b"\n", b"\r\n")
        sock.sendall(b"LHLO client.test\r\nEHLO x\r\nMAIL FROM:<" + FRIEND.encode() +
                     b">\r\nRCPT TO:<" + ALICE.encode() + b">\r\nRCPT TO:broken\r\nRCPT alice\r\n"
                     b"\x00\xff garbage\r\nDATA\r\n" + body + b".\r\nQUIT\r\n")
        replies = read_replies(sock, 10)
    codes = [reply[:3] for reply in replies]
    assert codes == ["250", "500", "250", "250", "550", "501", "500", "354", "250", "221"], \
        replies
    assert len(maildir(hub, ALICE)) == 1


def test_a_client_that_stops_mid_data_leaves_nothing(hub: Hub, server: Server) -> None:
    # The connection drops before the final dot: nothing was answered, nothing is held or
    # delivered, and the server serves the next client.
    with raw_session(hub.socket_path) as sock:
        read_replies(sock, 1)
        sock.sendall(b"LHLO c\r\nMAIL FROM:<bob@remote.test>\r\nRCPT TO:<alice@example.test>"
                     b"\r\nDATA\r\n")
        assert [r[:3] for r in read_replies(sock, 4)] == ["250", "250", "250", "354"]
        sock.sendall(b"Subject: cut\r\n\r\nhalf a mess")
    with client(hub.socket_path) as lmtp:
        _, [(code, _)] = transaction(lmtp, FRIEND, [ALICE], message(sender=FRIEND))
        assert code == 250
    assert hub.held(ALICE) == [] and len(maildir(hub, ALICE)) == 1
    hub.outbox.drain(0)


def test_a_thousand_recipients_get_452_past_the_limit(hub: Hub, server: Server) -> None:
    # RFC 5321's 100 recipients are accepted; the rest get 452 (the client sends them in a
    # later transaction) and DATA answers exactly once per accepted recipient.
    with client(hub.socket_path) as lmtp:
        rcpt, data = transaction(lmtp, FRIEND, [ALICE] * 1000, message(sender=FRIEND))
    assert [code for code, _ in rcpt].count(250) == 100
    assert {code for code, _ in rcpt[100:]} == {452}
    assert [code for code, _ in data] == [250] * 100
    assert len(maildir(hub, ALICE)) == 100


def test_a_message_over_the_size_limit_gets_552(tmp_path: Path, hub: Hub) -> None:
    hub.lmtp = {"max_message_size": 4096}
    hub.write_config()
    running = hub.start()
    try:
        with client(hub.socket_path) as lmtp:
            lmtp.mail(STRANGER)
            lmtp.rcpt(ALICE)
            code, _ = lmtp.data(message(body=("x" * 70 + "\n") * 100).replace(b"\n", b"\r\n"))
            assert code == 552
    finally:
        assert running.stop() == 0
    assert hub.held(ALICE) == []


def test_a_message_that_never_ends_is_cut_off_at_the_timeout(hub: Hub) -> None:
    # A DATA that goes on and on (within the size limit) is disconnected after `timeout`,
    # unanswered: the client still has the message, the server holds nothing of it.
    hub.lmtp = {"timeout": "2s"}
    hub.write_config()
    running = hub.start()
    try:
        with raw_session(hub.socket_path, timeout=30) as sock:
            read_replies(sock, 1)
            sock.sendall(b"LHLO c\r\nMAIL FROM:<bob@remote.test>\r\n"
                         b"RCPT TO:<alice@example.test>\r\nDATA\r\n")
            read_replies(sock, 4)
            started = time.monotonic()
            closed = False
            while time.monotonic() - started < 20:
                try:
                    sock.sendall(b"more and more\r\n")
                    time.sleep(0.1)
                except OSError:
                    closed = True
                    break
            if not closed:
                closed = sock.recv(100) == b""
            assert closed
    finally:
        assert running.stop() == 0
    assert hub.held(ALICE) == []


def test_sessions_beyond_the_limit_get_421(hub: Hub) -> None:
    hub.lmtp = {"max_sessions": 2}
    hub.write_config()
    running = hub.start()
    try:
        first, second = client(hub.socket_path), client(hub.socket_path)
        with raw_session(hub.socket_path) as sock:
            assert read_replies(sock, 1)[0].startswith("421 4.3.2")
        first.quit()
        wait_until(lambda: _greets(hub.socket_path), "a session slot to free up")
        second.quit()
    finally:
        assert running.stop() == 0


def _greets(path: Path) -> bool:
    with raw_session(path) as sock:
        return read_replies(sock, 1)[0].startswith("220")


def test_sigterm_lets_the_transaction_under_way_finish(hub: Hub) -> None:
    # SIGTERM while a DATA is half sent: new transactions get 451, new connections are
    # refused, the one under way is answered 250 and delivered, and the server exits 0.
    running = hub.start()
    busy = raw_session(hub.socket_path)
    idle = client(hub.socket_path)
    read_replies(busy, 1)
    busy.sendall(b"LHLO c\r\nMAIL FROM:<friend@remote.test>\r\n"
                 b"RCPT TO:<alice@example.test>\r\nDATA\r\n")
    read_replies(busy, 4)
    busy.sendall(b"From: friend@remote.test\r\nSubject: slow\r\n\r\nfirst half\r\n")
    running.process.send_signal(15)
    wait_until(lambda: any(r.get("event") == "stopping" for r in running.records()),
               "the server to start stopping")
    assert idle.mail(FRIEND)[0] == 451
    idle.close()
    with pytest.raises(OSError):
        client(hub.socket_path)
    busy.sendall(b"second half\r\n.\r\n")
    [reply] = read_replies(busy, 1)
    assert reply.startswith("250 2.0.0 whitelisted"), reply
    assert running.process.wait(timeout=60) == 0
    busy.close()
    [delivered] = maildir(hub, ALICE)
    assert delivered.endswith(b"first half\nsecond half\n")
    stopped = [r for r in running.records() if r.get("event") == "stopped"]
    assert stopped == [{"at": stopped[0]["at"], "event": "stopped", "unfinished": 0}]


def test_tcp_listener_and_structured_log(hub: Hub) -> None:
    # Over TCP too; each delivery is one JSON line with its decision.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    running = hub.start(listen=f"127.0.0.1:{port}")
    try:
        with client(f"127.0.0.1:{port}") as lmtp:
            transaction(lmtp, STRANGER, [ALICE], message())
    finally:
        assert running.stop() == 0
    [record] = running.deliveries()
    assert record["owner"] == ALICE and record["sender"] == STRANGER
    assert record["outcome"] == "held" and record["reply"] == "250"
    assert re.match(r"held as [a-z2-7]{8}; challenge sent to bob@remote\.test",
                    str(record["detail"]))
    hub.outbox.drain(1)


def test_lmtp_without_config_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run([crtool_executable(), "lmtp"], capture_output=True, text=True,
                            env={**os.environ, "HOME": str(tmp_path)}, check=False)
    assert result.returncode == 2 and "--config" in result.stderr


def test_a_real_serialization_failure_is_recognised_as_retriable() -> None:
    # PostgreSQL's SQLSTATE 40001, produced for real by two SERIALIZABLE transactions that
    # each read what the other writes: the hub runs such a delivery again.
    if not PG_URL:
        pytest.skip("serialization failures are PostgreSQL's: set CRTOOL_TEST_DATABASE_URL")
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    from crtool.lmtp import retriable

    engine = create_engine(PG_URL, isolation_level="SERIALIZABLE")
    table = "tally_" + secrets.token_hex(4)
    try:
        with engine.begin() as setup:
            setup.execute(text(f"CREATE TABLE {table} (n integer)"))
        first, second = engine.connect(), engine.connect()
        try:
            for connection in (first, second):
                connection.begin()
                connection.execute(text(f"SELECT count(*) FROM {table}")).scalar()  # noqa: S608
            first.execute(text(f"INSERT INTO {table} VALUES (1)"))  # noqa: S608
            second.execute(text(f"INSERT INTO {table} VALUES (2)"))  # noqa: S608
            first.commit()
            with pytest.raises(OperationalError) as caught:
                second.commit()
        finally:
            first.close()
            second.close()
        assert retriable(caught.value)
        assert not retriable(OperationalError("SELECT 1", {}, Exception("other")))
    finally:
        with engine.begin() as cleanup:
            cleanup.execute(text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


def test_a_delivery_that_meets_a_serialization_failure_runs_again(
        tmp_path: Path, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # On a PostgreSQL run at SERIALIZABLE, another host updated the owner's row and committed
    # while this delivery waited for it: PostgreSQL refuses the delivery's transaction
    # (40001), the hub runs it again and the message is held once, answered 250.
    if not PG_URL:
        pytest.skip("serialization failures are PostgreSQL's: set CRTOOL_TEST_DATABASE_URL")
    from sqlalchemy import create_engine, make_url, text

    from crtool import owners
    from crtool.lmtp import Hub as LmtpHub

    schema = "t_" + secrets.token_hex(6)
    admin = create_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema} "
                                                  "-cdefault_transaction_isolation=serializable"})
        hub = Hub(tmp_path / "hub", url.render_as_string(hide_password=False))
        hub.init()
        hub.add_owner(ALICE, tmp_path / "mail" / "alice")
        monkeypatch.setenv("CRTOOL_TEST_OUTBOX", str(hub.outbox.path))
        system = owners.load_system(hub.config)
        settings = owners.owner_settings(system, ALICE, str(tmp_path / "mail" / "alice"), None,
                                         "")
        lmtp_hub = LmtpHub(system)
        other = create_engine(url, isolation_level="READ COMMITTED")
        with other.connect() as connection:
            connection.begin()
            connection.execute(text("UPDATE owners SET created_at = created_at + 1 "
                                    "WHERE address = :a"), {"a": ALICE})
            result: list[object] = []
            worker = threading.Thread(target=lambda: result.append(lmtp_hub.deliver(
                settings, STRANGER, ALICE, message())))
            worker.start()
            wait_until(lambda: _waiting_for_lock(admin, schema), "the delivery to wait")
            connection.commit()
            worker.join(timeout=60)
        other.dispose()
        lmtp_hub.engine().dispose()
        [done] = result
        assert done.reply.startswith("250 2.0.0 held as"), done  # type: ignore[attr-defined]
        [record] = [json.loads(line) for line in capfd.readouterr().err.splitlines()
                    if line.startswith("{") and '"outcome"' in line]
        assert record["attempts"] == 2 and record["outcome"] == "held"
        assert len(hub.held(ALICE)) == 1
        hub.outbox.drain(1)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def _waiting_for_lock(admin: object, schema: str) -> bool:
    from sqlalchemy import text

    with admin.connect() as connection:  # type: ignore[attr-defined]
        return bool(connection.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query ILIKE '%FROM owners%FOR UPDATE%'")).scalar())


def test_a_server_killed_after_writing_a_release_delivers_it_once(hub: Hub) -> None:
    # The server dies (SIGKILL) right after the released message reached alice's Maildir
    # and before the release was committed. The MTA got no answer and retries the
    # confirmation; the retry finds the copy already written: one message, released once.
    from tests.support import REPO

    first = hub.start()
    with client(hub.socket_path) as lmtp:
        transaction(lmtp, STRANGER, [ALICE], message(subject="Kept once", body="once\n"))
    assert first.stop() == 0
    [(_, challenge)] = hub.outbox.drain(1)
    confirm = confirm_address_of(challenge)
    crashing = hub.start(command=[sys.executable, str(REPO / "tests/faults/crashpoint.py")],
                         extra_env={"CRTOOL_TEST_CRASH_AT": "crtool.maildir:deliver:return"})
    with client(hub.socket_path) as lmtp, pytest.raises(smtplib.SMTPServerDisconnected):
        transaction(lmtp, STRANGER, [confirm], message(to=confirm))
    crashing.process.wait(timeout=60)
    assert len(maildir(hub, ALICE)) == 1
    assert [row["status"] for row in hub.held(ALICE)] == ["held"]
    again = hub.start()
    try:
        with client(hub.socket_path) as lmtp:
            _, [(code, said)] = transaction(lmtp, STRANGER, [confirm], message(to=confirm))
    finally:
        assert again.stop() == 0
    assert code == 250 and b"released 1" in said, said
    [delivered] = maildir(hub, ALICE)
    assert delivered.endswith(b"once\n")
    assert [row["status"] for row in hub.held(ALICE)] == ["released"]


def test_a_message_too_large_for_one_owner_is_552_for_that_owner_only(hub: Hub,
                                                                      server: Server) -> None:
    # carol's own max_message_size is smaller than the server's: her copy is refused for
    # good (552), alice's is delivered; over LMTP the size is known, no retry is needed.
    hub.add_owner(CAROL, hub.root.parent / "mail" / "carol", "", "max_message_size=2000")
    time.sleep(5.5)  # the server re-reads an owner it has cached after 5 s
    with client(hub.socket_path) as lmtp:
        _, replies = transaction(lmtp, FRIEND, [ALICE, CAROL],
                                 message(sender=FRIEND, body=("x" * 60 + "\n") * 50))
    assert [code for code, _ in replies] == [250, 552]
    assert replies[1][1].startswith(b"5.3.4 ")
    assert len(maildir(hub, ALICE)) == 1 and maildir(hub, CAROL) == []
