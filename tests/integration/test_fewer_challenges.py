"""Asking fewer people to confirm, through `crtool` as the MTA and the owner run it, on SQLite
and PostgreSQL: the richer entries in delivery, `learn`, `simulate`, observe mode and its
report, `expect` windows, and the owner's own spam filter's verdict (a real SpamAssassin)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import Mailbox, message

QMAIL_CONTINUE, QMAIL_DONE = 0, 99


def _set(box: Mailbox, name: str, value: str) -> None:
    """One setting of config.toml, as the owner would edit it."""
    path = box.home / "config.toml"
    lines = [line for line in path.read_text().splitlines()
             if not line.startswith(f"{name} =")]
    path.write_text("\n".join(lines + [f"{name} = {json.dumps(value)}"]) + "\n")


def _pending(box: Mailbox) -> list[dict[str, str]]:
    return json.loads(box.ok("pending", "list", "--json", "--all"))  # type: ignore[no-any-return]


def _whitelist(box: Mailbox) -> list[str]:
    return box.ok("whitelist", "export").split()


def test_wildcard_list_and_from_entries_deliver(mailbox: Mailbox) -> None:
    mailbox.ok("whitelist", "add", "bob-*@remote.test", "list:<announce.lists.test>",
               "from:carol@friends.test")
    mailbox.ok("blacklist", "add", "bob-spam?@remote.test")
    assert mailbox.deliver(message("bob-news@remote.test"), "bob-news@remote.test"
                           ).returncode == QMAIL_CONTINUE
    assert mailbox.deliver(message("bob-spam1@remote.test"), "bob-spam1@remote.test"
                           ).returncode == QMAIL_DONE  # dropped: the closer blacklist entry
    post = message("dave@anywhere.test", headers={"List-Id": "Announce <announce.lists.test>",
                                                  "Precedence": "list"})
    assert mailbox.deliver(post, "announce-bounces@lists.test").returncode == QMAIL_CONTINUE
    forwarded = message("Carol <carol@friends.test>")
    assert mailbox.deliver(forwarded, "srs0=xx=yy=friends.test=carol@fwd.test"
                           ).returncode == QMAIL_CONTINUE
    # A stranger of the same domain as the wildcard is still a stranger.
    assert mailbox.deliver(message("bob@remote.test"), "bob@remote.test").returncode == \
        QMAIL_DONE
    assert [p["reason"] for p in _pending(mailbox)] == ["challenged"]
    mailbox.outbox.drain(1)
    assert mailbox.run("whitelist", "check", "bob-x@remote.test").returncode == 0
    assert mailbox.run("blacklist", "check", "bob-spam2@remote.test").returncode == 0


def test_a_from_entry_is_not_trusted_when_dmarc_failed(mailbox: Mailbox) -> None:
    _set(mailbox, "authserv_id", "mx.example.test")
    mailbox.ok("whitelist", "add", "from:carol@friends.test")
    forged = message("carol@friends.test", headers={
        "Authentication-Results": "mx.example.test; dmarc=fail header.from=friends.test"})
    assert mailbox.deliver(forged, "someone@lists.test").returncode == QMAIL_DONE
    passed = forged.replace(b"dmarc=fail", b"dmarc=pass")
    assert mailbox.deliver(passed, "someone@lists.test").returncode == QMAIL_CONTINUE


def _maildir(root: Path, messages: list[bytes]) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for number, data in enumerate(messages):
        (root / "cur" / f"{number}.host:2,S").write_bytes(data)
    return root


def test_learn_reads_every_source_once_and_counts_what_it_skipped(mailbox: Mailbox,
                                                                   tmp_path: Path) -> None:
    mailbox.ok("blacklist", "add", "@spam.test")
    inbox = _maildir(tmp_path / "Maildir", [
        message("Bob <bob@remote.test>"),
        message("carol@x.test", headers={"List-Id": "<announce.lists.test>"}),
        message("pitch@spam.test"),
        b"garbage without a head\n",
    ])
    sent = tmp_path / "sent.mbox"
    sent.write_bytes(b"From alice@example.test Sat Jan  3 01:05:34 2026\n"
                     + message("alice@example.test", to="Dan <dan@y.test>, alice@example.test")
                     + b"\nFrom broken\n\n")
    cards = tmp_path / "friends.vcf"
    cards.write_text("BEGIN:VCARD\nVERSION:3.0\nEMAIL:erin@z.test\nEND:VCARD\n"
                     "BEGIN:VCARD\nVERSION:3.0\nFN:Nobody\nEND:VCARD\n")
    tmda = tmp_path / "whitelist"
    tmda.write_text("frank@w.test\n*@=family.test\nfoe@v.test bounce\nto x@y.test ok\n")

    dry = mailbox.ok("learn", "--dry-run", str(inbox), str(cards), str(tmda))
    assert "whitelist: 5 would be added" in dry, dry
    assert _whitelist(mailbox) == []

    out = mailbox.ok("learn", "--verbose", str(inbox), str(cards), str(tmda))
    assert "whitelist: 5 added, 0 already listed, 1 not added (blacklisted)" in out, out
    assert "blacklist: 1 added" in out
    assert "automated (list_headers): From: not learned" in out
    assert "vcard without an address" in out
    assert "TMDA source 'to' has no crtool equivalent" in out
    assert out.count("skipped: ") >= 4  # one line per skipped item
    sent_out = mailbox.ok("learn", "--sent", str(sent))
    assert "whitelist: 1 added" in sent_out and "no header block" in sent_out
    lists_out = mailbox.ok("learn", "--lists", str(inbox))
    assert "whitelist: 1 added" in lists_out
    assert sorted(_whitelist(mailbox)) == sorted([
        "bob@remote.test", "erin@z.test", "frank@w.test", "@family.test", "*@*.family.test",
        "dan@y.test", "list:announce.lists.test"])
    assert "foe@v.test" in mailbox.ok("blacklist", "export")
    # Idempotent: a second run adds nothing.
    again = mailbox.ok("learn", str(inbox), str(cards), str(tmda))
    assert "whitelist: 0 added, 5 already listed" in again, again
    entry = [e for e in json.loads(mailbox.ok("whitelist", "list", "--json"))
             if e["pattern"] == "bob@remote.test"]
    assert entry and entry[0]["kind"] == "exact"
    # What it learnt decides delivery.
    assert mailbox.deliver(message("dan@y.test"), "dan@y.test").returncode == QMAIL_CONTINUE


def test_learn_fails_only_when_nothing_could_be_read(mailbox: Mailbox, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    result = mailbox.run("learn", str(tmp_path / "missing"), str(tmp_path / "plain"))
    assert result.returncode == 1
    assert b"nothing could be read" in result.stderr
    empty = tmp_path / "empty.vcf"
    empty.write_text("BEGIN:VCARD\nFN:x\nEND:VCARD\n")
    result = mailbox.run("learn", str(empty), str(tmp_path / "missing"))
    assert result.returncode == 0, result.stderr  # one card was read, though it had no address


def test_simulate_counts_and_changes_nothing(mailbox: Mailbox, tmp_path: Path) -> None:
    mailbox.ok("whitelist", "add", "bob@remote.test")
    mailbox.ok("blacklist", "add", "@spam.test")
    box = _maildir(tmp_path / "Maildir", [
        b"Return-Path: <bob@remote.test>\n" + message("bob@remote.test"),
        message("stranger@else.test"), message("stranger@else.test", "again"),
        message("news@l.test", headers={"List-Id": "<l.test>"}),
        message("pitch@spam.test"),
    ])
    before = (_whitelist(mailbox), _pending(mailbox), mailbox.ok("stats", "--json"))
    found = json.loads(mailbox.ok("simulate", "--json", str(box)))
    assert found["messages"] == 5
    assert found["delivered"] == 1 and found["dropped"] == 1
    assert found["challenged"] == 2 and found["challenged_senders"] == 1
    assert found["held_by_reason"] == {"list_headers": 1}
    assert (_whitelist(mailbox), _pending(mailbox), mailbox.ok("stats", "--json")) == before
    mailbox.outbox.drain(0)


def test_simulate_judges_a_reply_to_the_owners_mail_as_delivery_does(
        mailbox: Mailbox, tmp_path: Path) -> None:
    """simulate asks the judgement delivery asks (service.judge), replies included."""
    import time

    from crtool.store import sent
    from crtool.store.engine import make_engine, transaction

    engine = make_engine(mailbox.database_url)
    with transaction(engine) as session:
        sent.record(session, mailbox.address, ["<out.1@example.test>"], int(time.time()))
    engine.dispose()
    box = _maildir(tmp_path / "Maildir", [
        message("carol@else.test", "Re: lunch", headers={"In-Reply-To": "<out.1@example.test>"}),
        message("dave@else.test", "Re: lunch", headers={"In-Reply-To": "<other@x.test>"})])
    found = json.loads(mailbox.ok("simulate", "--json", str(box)))
    assert (found["delivered_by"], found["challenged"]) == ({"reply": 1}, 1), found
    mailbox.outbox.drain(0)


def test_observe_mode_challenges_nobody_and_reports_who_would_be(mailbox: Mailbox) -> None:
    assert mailbox.ok("mode").strip() == "enforce"
    mailbox.ok("mode", "observe")
    assert mailbox.ok("mode").strip() == "observe"
    assert mailbox.deliver(message("stranger@else.test"), "stranger@else.test"
                           ).returncode == QMAIL_CONTINUE
    listed = message("news@l.test", headers={"List-Id": "<l.test>"})
    assert mailbox.deliver(listed, "news@l.test").returncode == QMAIL_CONTINUE
    mailbox.ok("blacklist", "add", "@spam.test")
    assert mailbox.deliver(message("x@spam.test"), "x@spam.test").returncode == QMAIL_CONTINUE
    mailbox.outbox.drain(0)
    assert _pending(mailbox) == []
    report = json.loads(mailbox.ok("report", "--json"))
    assert report["by_reason"] == {"challenged": 1, "list_headers": 1, "blacklisted": 1}
    assert [s["sender"] for s in report["would_challenge"]] == ["stranger@else.test"]
    # Whitelisted since: no longer among those a switch would challenge.
    mailbox.ok("whitelist", "add", "stranger@else.test")
    assert json.loads(mailbox.ok("report", "--json"))["would_challenge"] == []
    check = json.loads(mailbox.ok("check", "--json", "other@else.test"))
    assert check["verdict"] == "deliver (observe mode; enforce would hold and challenge)"
    mailbox.ok("mode", "enforce")
    assert mailbox.deliver(message("other@else.test"), "other@else.test"
                           ).returncode == QMAIL_DONE
    mailbox.outbox.drain(1)


def test_an_expect_window_lets_automated_mail_from_its_domain_through(mailbox: Mailbox) -> None:
    reset = message("noreply@accounts.shop.test", "Reset your password",
                    headers={"Auto-Submitted": "auto-generated"})
    assert mailbox.deliver(reset, "bounce-7@mail.shop.test").returncode == QMAIL_DONE
    out = mailbox.ok("expect", "shop.test", "--for", "2h")
    assert "shop.test" in out
    assert "shop.test" in mailbox.ok("expect")
    assert mailbox.deliver(reset, "bounce-8@mail.shop.test").returncode == QMAIL_CONTINUE
    # Through a bulk sender's envelope, by the From: domain.
    assert mailbox.deliver(reset, "0100abc@amazonses.test").returncode == QMAIL_CONTINUE
    assert mailbox.deliver(message("x@other.test"), "x@other.test").returncode == QMAIL_DONE
    check = json.loads(mailbox.ok("check", "--json", "someone@mail.shop.test"))
    assert (check["verdict"], check["reason"]) == ("deliver", "expected")
    mailbox.ok("expect", "shop.test", "--close")
    assert mailbox.deliver(reset, "bounce-9@mail.shop.test").returncode == QMAIL_DONE
    assert mailbox.run("expect", "shop.test", "--for", "40d").returncode == 2
    assert mailbox.run("expect", "not a domain").returncode == 2


def _spamassassin(data: bytes) -> bytes:
    return subprocess.run(["spamassassin", "-L"], input=data, capture_output=True,
                          check=True, timeout=120).stdout


GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\n"
RECEIVED = (b"Received: from mx.remote.test (mx.remote.test [192.0.2.7])\n"
            b"\tby mail.example.test (Postfix) with ESMTP id 4AB12;\n"
            b"\tTue, 1 Dec 2026 00:00:00 +0000\n")


@pytest.mark.skipif(shutil.which("spamassassin") is None, reason="needs Debian's spamassassin")
def test_a_message_spamassassin_flags_gets_no_challenge(mailbox: Mailbox) -> None:
    _set(mailbox, "spam_header", "X-Spam-Flag: YES")
    spam = _spamassassin(RECEIVED + message("spammer@remote.test", "Offer", body=GTUBE))
    assert b"X-Spam-Flag: YES" in spam
    assert mailbox.deliver(spam, "spammer@remote.test").returncode == QMAIL_DONE
    mailbox.outbox.drain(0)
    ham = _spamassassin(RECEIVED + message("friend@remote.test", "Lunch",
                                           body="Lunch tomorrow at noon?\n"))
    assert b"X-Spam-Status: No" in ham
    assert mailbox.deliver(ham, "friend@remote.test").returncode == QMAIL_DONE
    mailbox.outbox.drain(1)
    # The sender's own "X-Spam-Flag: YES", below the owner's MTA's Received line, is his word.
    lying = RECEIVED + message("liar@remote.test", headers={"X-Spam-Flag": "YES"})
    assert mailbox.deliver(lying, "liar@remote.test").returncode == QMAIL_DONE
    mailbox.outbox.drain(1)
    reasons = {p["sender"]: p["reason"] for p in _pending(mailbox)}
    assert reasons == {"spammer@remote.test": "spam_flagged", "friend@remote.test": "challenged",
                       "liar@remote.test": "challenged"}
