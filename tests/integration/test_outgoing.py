"""`crtool sendmail`, replies and tagged addresses end to end through the command line, on
SQLite and PostgreSQL: the owner writes, the MTA stand-in takes it, the answer arrives."""

from __future__ import annotations

import json
import re
import stat
import time
from pathlib import Path

from sqlalchemy import select

from crtool import tags, tokens
from crtool.store.engine import make_engine
from crtool.store.models import SentMessage
from tests.support import CAPTURE_SENDMAIL, Mailbox, crtool_executable, message

REPLY = re.compile(rb"^Message-ID: (<[^>]+>)", re.MULTILINE)


def sent(box: Mailbox, argv: tuple[str, ...], data: bytes,
         extra_env: dict[str, str] | None = None) -> tuple[int, bytes]:
    result = box.run("sendmail", *argv, input=data, extra_env=extra_env)
    return result.returncode, result.stderr


def outgoing(to: str = "Bob <bob@remote.test>", extra: str = "") -> bytes:
    return (f"From: Alice <alice@example.test>\nTo: {to}\n{extra}Subject: Lunch\n\n"
            "Shall we?\n.\nA line of one dot above.\n").encode()


def whitelist(box: Mailbox) -> list[dict[str, str]]:
    entries: list[dict[str, str]] = json.loads(box.ok("whitelist", "list", "--json"))
    return entries


def events(box: Mailbox, sender: str) -> list[dict[str, str]]:
    found: list[dict[str, str]] = json.loads(box.ok("history", sender, "--json"))["events"]
    return found


def test_sendmail_passes_everything_on_and_whitelists_after_the_mta_took_it(
        mailbox: Mailbox) -> None:
    data = outgoing("Bob <bob@remote.test>, carol@remote.test", "Cc: alice@example.test\n"
                    "Bcc: dave+x@remote.test\n")
    code, said = sent(mailbox, ("-oem", "-oi", "-t", "-f", "alice@example.test"), data)
    assert (code, said) == (0, b"")
    [(args, _)] = mailbox.outbox.drain(1)
    assert args == ["-oem", "-oi", "-t", "-f", "alice@example.test"]
    out = (mailbox.outbox.path / "0000.eml").read_bytes()
    minted = REPLY.match(out)
    assert minted is not None and out[minted.end() + 1:] == data
    listed = {e["pattern"]: e for e in whitelist(mailbox)}
    # Never the owner's own address; a sub-address lists the person.
    assert set(listed) == {"bob@remote.test", "carol@remote.test", "dave@remote.test"}
    assert {e["note"] for e in listed.values()} == {"sent"}


def test_a_message_id_the_mail_program_set_is_kept_and_recorded(mailbox: Mailbox) -> None:
    data = outgoing(extra="Message-ID: <own.1@laptop.example.test>\n")
    assert sent(mailbox, ("--", "bob@remote.test"), data) == (0, b"")
    [(args, message_out)] = mailbox.outbox.drain(1)
    assert args == ["--", "bob@remote.test"]
    assert (mailbox.outbox.path / "0000.eml").read_bytes() == data
    reply = message("erin@else.test", "Re: Lunch",
                    headers={"In-Reply-To": "<own.1@laptop.example.test>"})
    result = mailbox.deliver(reply, "erin@else.test")
    assert result.returncode == 0, result.stderr
    mailbox.outbox.drain(0)
    assert "erin@else.test" in {e["pattern"] for e in whitelist(mailbox)}
    [entry] = [e for e in whitelist(mailbox) if e["pattern"] == "erin@else.test"]
    assert entry["note"] == "reply"


def test_a_reply_to_a_signed_message_id_arrives_and_a_guessed_one_is_challenged(
        mailbox: Mailbox) -> None:
    assert sent(mailbox, ("bob@remote.test",), outgoing())[0] == 0
    out = (mailbox.outbox.path / "0000.eml").read_bytes()
    mailbox.outbox.drain(1)
    minted = REPLY.match(out)
    assert minted is not None
    message_id = minted.group(1).decode()
    # Someone else in the thread, whom the owner never wrote to, answers: delivered.
    reply = message("frank@else.test", "Re: Lunch",
                    headers={"References": f"<root@x.test> {message_id.upper()}"})
    assert mailbox.deliver(reply, "frank@else.test").returncode == 0
    # A forger who changes one character of the signature is challenged.
    forged = message_id[:-20] + ("a" if message_id[-20] != "a" else "b") + message_id[-19:]
    guess = message("mallory@else.test", "Re: Lunch", headers={"In-Reply-To": forged})
    assert mailbox.deliver(guess, "mallory@else.test").returncode == 99
    [(args, _)] = mailbox.outbox.drain(1)
    assert args[-1] == "mallory@else.test"


def test_a_reply_after_the_window_or_from_the_blacklist_is_not_let_through(
        mailbox: Mailbox, database_url: str) -> None:
    data = outgoing(extra="Message-ID: <old@laptop.example.test>\n")
    assert sent(mailbox, ("bob@remote.test",), data)[0] == 0
    mailbox.outbox.drain(1)
    mailbox.ok("blacklist", "add", "spam@else.test")
    reply = message("spam@else.test", "Re", headers={"In-Reply-To": "<old@laptop.example.test>"})
    result = mailbox.deliver(reply, "spam@else.test")
    assert result.returncode == 99 and b"blacklisted" in result.stderr
    config = mailbox.home / "config.toml"
    config.write_text(config.read_text().replace('reply_window = "180d"',
                                                 'reply_window = "0s"'))
    late = message("gina@else.test", "Re", headers={"In-Reply-To": "<old@laptop.example.test>"})
    time.sleep(1.1)
    assert mailbox.deliver(late, "gina@else.test").returncode == 99
    mailbox.outbox.drain(1)
    # The next mail sent forgets the Message-IDs past the window: they let nothing in.
    assert sent(mailbox, ("bob@remote.test",), outgoing())[0] == 0
    mailbox.outbox.drain(1)
    engine = make_engine(database_url)
    with engine.connect() as connection:
        ids = connection.execute(select(SentMessage.message_id)).scalars().all()
    engine.dispose()
    assert "<old@laptop.example.test>" not in ids and len(ids) == 1


def test_an_automated_reply_is_delivered_and_nobody_whitelisted(mailbox: Mailbox) -> None:
    data = outgoing(extra="Message-ID: <v@laptop.example.test>\n")
    assert sent(mailbox, ("bob@remote.test",), data)[0] == 0
    mailbox.outbox.drain(1)
    vacation = message("bob@remote.test", "Out of office", headers={
        "In-Reply-To": "<v@laptop.example.test>", "Auto-Submitted": "auto-replied"})
    mailbox.ok("whitelist", "remove", "bob@remote.test")
    assert mailbox.deliver(vacation, "bob@remote.test").returncode == 0
    assert "bob@remote.test" not in {e["pattern"] for e in whitelist(mailbox)}
    mailbox.outbox.drain(0)


def test_nothing_is_recorded_when_the_real_sendmail_fails(mailbox: Mailbox) -> None:
    code, said = sent(mailbox, ("bob@remote.test",), outgoing(),
                      {"CRTOOL_TEST_SENDMAIL_EXIT": "75"})
    assert (code, said) == (75, b"")
    assert whitelist(mailbox) == []


def test_a_broken_database_or_key_ring_never_stops_the_mail(mailbox: Mailbox,
                                                           database_url: str) -> None:
    keys = mailbox.home / "keys"
    keys.chmod(0o644)  # readable by others: a broken key ring
    code, said = sent(mailbox, ("bob@remote.test",), outgoing())
    assert code == 0 and said.count(b"\n") == 1 and b"key ring" in said, said
    out = (mailbox.outbox.path / "0000.eml").read_bytes()
    assert out == outgoing()  # no Message-ID of crtool's: the MTA gives one
    keys.chmod(0o600)
    config = mailbox.home / "config.toml"
    database = mailbox.home / "gone.db"
    config.write_text(config.read_text().replace(database_url, f"sqlite:///{database}"))
    code, said = sent(mailbox, ("carol@remote.test",), outgoing())
    assert code == 0 and said.count(b"\n") == 1 and b"not recorded" in said, said
    assert not database.exists()  # never created by sendmail
    mailbox.outbox.drain(2)
    config.write_text("not toml [")
    code, said = sent(mailbox, ("dave@remote.test",), outgoing())
    assert code == 0 and said.count(b"\n") == 1, said
    # Without a config the system's sendmail is all it knows; here the stand-in is not it,
    # so only the one line is checked above and nothing reached the stand-in.


def test_a_sendmail_setting_that_runs_crtool_sendmail_is_refused(mailbox: Mailbox,
                                                                 tmp_path: Path) -> None:
    loop = tmp_path / "loop-sendmail"
    loop.write_text(f"#!/bin/sh\nexec {crtool_executable()} --home {mailbox.home} "
                    "sendmail \"$@\"\n")
    loop.chmod(loop.stat().st_mode | stat.S_IXUSR)
    config = mailbox.home / "config.toml"
    config.write_text(config.read_text().replace(str(CAPTURE_SENDMAIL), str(loop)))
    code, said = sent(mailbox, ("bob@remote.test",), outgoing())
    assert code == 75 and b"runs crtool sendmail itself" in said
    assert whitelist(mailbox) == []


def test_a_command_line_that_sends_nothing_is_handed_over_untouched(mailbox: Mailbox) -> None:
    code, said = sent(mailbox, ("-bp",), b"")
    assert (code, said) == (0, b"")
    [(args, _)] = mailbox.outbox.drain(1)
    assert args == ["-bp"]
    assert whitelist(mailbox) == []


def test_a_large_message_streams_through_unchanged(mailbox: Mailbox) -> None:
    body = b"".join(b"line %08d of a long message\n" % n for n in range(400_000))
    data = outgoing(extra="Message-ID: <big@laptop.example.test>\n") + body
    assert sent(mailbox, ("bob@remote.test",), data) == (0, b"")
    mailbox.outbox.drain(1)
    assert (mailbox.outbox.path / "0000.eml").read_bytes() == data


def test_dated_sender_and_keyword_addresses_let_strangers_through(mailbox: Mailbox) -> None:
    dated = mailbox.ok("address", "dated", "--valid", "1d").strip()
    shop = mailbox.ok("address", "keyword", "shop").strip()
    bob_only = mailbox.ok("address", "sender", "bob@remote.test").strip()
    signup = message("noreply@shop.test", "Welcome", headers={"Auto-Submitted": "auto-generated"})
    assert mailbox.deliver(signup, "noreply@shop.test", dated.upper()).returncode == 0
    assert mailbox.deliver(signup, "noreply@shop.test", shop).returncode == 0
    assert mailbox.deliver(message(), "bob@remote.test", bob_only).returncode == 0
    # Anyone else at the sender address is treated as mail to the bare address.
    result = mailbox.deliver(message("carol@remote.test"), "carol@remote.test", bob_only)
    assert result.returncode == 99
    mailbox.outbox.drain(1)
    assert any(e["kind"] == "tagged" and e["reason"] == "sender_mismatch"
               for e in events(mailbox, "carol@remote.test"))
    assert whitelist(mailbox) == []  # a tagged address whitelists nobody
    checked = json.loads(mailbox.ok("address", "check", bob_only, "--json"))
    assert (checked["kind"], checked["verifies"], checked["for"]) == (
        "sender", True, "bob@remote.test")
    checked = json.loads(mailbox.ok("address", "check", dated, "--json"))
    assert (checked["kind"], checked["status"]) == ("dated", "valid") and checked["until"]


def test_a_revoked_keyword_is_dropped_never_bounced_or_deferred(mailbox: Mailbox) -> None:
    config = mailbox.home / "config.toml"
    config.write_text(config.read_text().replace('blacklist_action = "drop"',
                                                 'blacklist_action = "bounce"'))
    shop = mailbox.ok("address", "keyword", "shop").strip()
    verdict = json.loads(mailbox.ok("check", "spam@shop.test", "--recipient", shop, "--json"))
    assert (verdict["verdict"], verdict["reason"]) == ("deliver", "tagged_keyword")
    assert mailbox.ok("address", "revoke", "keyword", "shop").startswith("revoked: ")
    verdict = json.loads(mailbox.ok("check", "spam@shop.test", "--recipient", shop, "--json"))
    assert (verdict["verdict"], verdict["reason"]) == ("drop", "keyword_revoked")
    assert mailbox.ok("address", "revoke", "keyword", "shop").startswith("already revoked")
    result = mailbox.deliver(message("spam@shop.test"), "spam@shop.test", shop)
    assert result.returncode == 99 and b"keyword_revoked" in result.stderr
    mailbox.outbox.drain(0)
    assert json.loads(mailbox.ok("pending", "list", "--json")) == []
    check = mailbox.run("address", "check", shop)
    assert check.returncode == 1 and b"revoked" in check.stdout


def test_an_expired_or_forged_tag_is_mail_to_the_bare_address(mailbox: Mailbox) -> None:
    # Expired beyond the clock skew allowed between hosts (300 s), signed by alice's own ring.
    ring = tokens.secrets_of(tokens.load_keys(mailbox.home / "keys"))
    dated = tags.dated_address(ring, mailbox.address, "-", int(time.time()) - 400)
    bogus = "alice-dated-" + "a" * 24 + "@example.test"
    for sender, recipient in (("old@else.test", dated), ("odd@else.test", bogus),
                              ("x@else.test", "alice-keyword-shop-" + "b" * 16
                               + "@example.test")):
        result = mailbox.deliver(message(sender), sender, recipient)
        assert result.returncode == 99, result.stderr
    mailbox.outbox.drain(3)
    reasons = {e["reason"] for s in ("odd@else.test", "x@else.test")
               for e in events(mailbox, s) if e["kind"] == "tagged"}
    assert reasons == {"tag_forged"}
    assert [e["reason"] for e in events(mailbox, "old@else.test")
            if e["kind"] == "tagged"] == ["dated_expired"]
    check = mailbox.run("address", "check", bogus)
    assert check.returncode == 1 and b"does not verify" in check.stdout
