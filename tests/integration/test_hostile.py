"""Hostile input is held, never a traceback and never a temporary failure (contract §3).

A tempfail makes qmail retry for a week and bounce anyway, so a strange message must not earn
one: garbage bytes, no header block, headers that make Python's email parser raise, a header of
megabytes, NUL bytes, 8-bit headers, lone CRs, a 50 MB message and hostile environment values
all end as a held message ("done") whose bytes are kept exactly as they arrived.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import Mailbox, crtool_executable, qmail_env

STRANGER = "bob@remote.test"


def held_rows(box: Mailbox) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(box.ok("pending", "list", "--json"))
    return rows


def assert_held_intact(box: Mailbox, data: bytes, sender: str = STRANGER) -> None:
    """Delivered, held with exit 99 and one line, and `pending show` gives the same bytes."""
    result = box.deliver(data, sender)
    assert result.returncode == 99, result.stderr
    assert result.stderr.count(b"\n") == 1 and b"Traceback" not in result.stderr
    assert b"held as" in result.stderr, result.stderr
    rows = held_rows(box)
    assert len(rows) == 1
    shown = box.run("pending", "show", str(rows[0]["id"]))
    assert shown.returncode == 0 and shown.stdout == data, shown.stderr


HOSTILE = {
    "arbitrary_bytes": random.Random(7).randbytes(8192),
    "no_header_block": b"just a body, no headers at all\nsecond line\n",
    "parser_raises": b"From:\x9dam@\nSubject: x\n\nbody\n",
    "nul_bytes": b"From: a\x00b@remote.test\nSubject: nul\x00here\n\nbody\x00\x00\n",
    "eight_bit_headers": "From: Jörg Müller <jörg@remote.test>\nSubject: Grüße — ☃\n\nHallo\n"
    .encode() + b"X-Latin1: caf\xe9\n",
    "lone_cr": b"From: bob@remote.test\rSubject: a\rb\r\rTo: x\n\nbody\rmore\n",
    "crlf": b"From: bob@remote.test\r\nSubject: crlf\r\n\r\nbody\r\n",
    "folded_forever": b"Subject: start\n" + b" fold\n" * 200_000 + b"\nbody\n",
    "encoded_word_junk": b"Subject: =?utf-8?b?////?= =?x-unknown?q?=FF?=\nFrom: =?utf-8?q?\n\n",
    "many_headers": b"".join(b"X-H%d: v\n" % n for n in range(20_000)) + b"\nbody\n",
    "header_without_colon_then_body": b"this is not a header\nFrom: x@y\n\nbody\n",
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_message_is_held_intact(mailbox: Mailbox, name: str) -> None:
    assert_held_intact(mailbox, HOSTILE[name])


@pytest.mark.parametrize("header", ["From", "Subject", "X-Anything"])
def test_header_of_megabytes_is_capped_before_parsing(mailbox: Mailbox, header: str) -> None:
    """A 4 MB header (a 32 KiB From: alone takes Python's parser seconds) is held whole."""
    data = f"{header}: ".encode() + b"a@" * (2 * 1024 * 1024) + b"\nSubject: big\n\nbody\n"
    assert_held_intact(mailbox, data)


def test_unknown_sender_with_valid_address_still_gets_one_challenge(mailbox: Mailbox) -> None:
    """Strange headers do not stop the challenge to a plausible envelope sender."""
    assert_held_intact(mailbox, HOSTILE["parser_raises"])
    assert len(mailbox.outbox.drain(1)) == 1


# The third column is how many challenges the delivery must send, from the rules themselves:
# one to a sender that is a plain valid address (a leading "-" is valid: sendmail gets it
# after "--"), none to an invalid one, none for mail to a confirm address (a bad token sends
# nothing), and what the MTA says about the recipient or the host changes nothing else.
@pytest.mark.parametrize(("variable", "value", "challenges"), [
    ("SENDER", "bob@remote.test\nBcc: victim@example.com", 0),
    ("SENDER", "$(touch /tmp/crtool-pwned)@remote.test", 0),
    ("SENDER", "`touch /tmp/crtool-pwned`;rm -rf /;@remote.test", 0),
    ("SENDER", "-oQ/tmp/x@remote.test", 1),
    ("SENDER", "x" * 10_240 + "@remote.test", 0),
    ("SENDER", "a@" + "b" * 10_240, 0),
    ("RECIPIENT", "alice@example.test\nX-Injected: 1", 1),
    ("RECIPIENT", "alice-confirm-" + "a" * 10_240 + "@example.test", 0),
    ("RECIPIENT", "alice-confirm-$(id)@example.test", 0),
    ("EXT", "confirm-|sh", 1),
    ("DTLINE", "Delivered-To: " + "z" * 10_240 + "\n", 1),
    ("HOST", "example.test; rm -rf /", 1),
])
def test_hostile_environment_value_is_held_or_dropped_never_a_tempfail(
        mailbox: Mailbox, variable: str, value: str, challenges: int) -> None:
    result = mailbox.deliver(b"From: x@remote.test\nSubject: env\n\nbody\n", STRANGER,
                             extra_env={variable: value})
    assert result.returncode == 99, result.stderr
    assert result.stderr.count(b"\n") == 1 and b"Traceback" not in result.stderr
    assert not Path("/tmp/crtool-pwned").exists()
    sender = value if variable == "SENDER" else STRANGER
    for args, challenge in mailbox.outbox.drain(challenges):
        # Exactly one recipient, the envelope sender, after "--"; no header taken from the
        # environment.
        assert args[-2:] == ["--", sender], args
        assert "victim@example.com" not in challenge.as_string()
        assert challenge["X-Injected"] is None


def test_invalid_utf8_in_the_environment_is_held(mailbox: Mailbox) -> None:
    env = {k.encode(): v.encode() for k, v in
           qmail_env(STRANGER, mailbox.address, mailbox.user_home).items()}
    env[b"SENDER"] = b"b\xffob@remote.test"
    env[b"RECIPIENT"] = b"alice\xfe@example.test"
    result = subprocess.run([crtool_executable(), "deliver"], input=b"Subject: x\n\nbody\n",
                            capture_output=True, env=env, cwd=mailbox.user_home, timeout=120,
                            check=False)
    assert result.returncode == 99, result.stderr
    assert len(held_rows(mailbox)) == 1
    mailbox.outbox.drain(0)  # a sender that does not even decode is not challenged


# A small parent forks and execs the delivery and reports the child's peak memory: measured
# from the big test process itself, a forked child would start with the parent's peak.
_MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _run_measured(box: Mailbox, stdin_path: Path, sender: str) -> tuple[int, bytes, int]:
    """Exit code, stderr and peak resident memory (KiB) of one delivery."""
    env = qmail_env(sender, box.address, box.user_home)
    env["CRTOOL_TEST_OUTBOX"] = str(box.outbox.path)
    with open(stdin_path, "rb") as stdin:
        result = subprocess.run(
            [sys.executable, "-c", _MEASURE, crtool_executable(), "deliver"], stdin=stdin,
            capture_output=True, env=env, cwd=box.user_home, timeout=300, check=False)
    # crtool deliver prints nothing on stdout: the last line is the measurer's.
    peak = int(result.stdout.split()[-1])
    return result.returncode, result.stderr, peak


def fifty_megabytes(path: Path) -> bytes:
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\n"
    data = b"From: big@remote.test\nSubject: fifty\n\n" + line * (50 * 1024 * 1024 // len(line))
    path.write_bytes(data)
    return data


def test_fifty_megabytes_are_held_intact(mailbox: Mailbox, tmp_path: Path) -> None:
    data = fifty_megabytes(tmp_path / "big.eml")
    code, err, _ = _run_measured(mailbox, tmp_path / "big.eml", STRANGER)
    assert code == 99, err
    (row,) = held_rows(mailbox)
    assert row["size"] == len(data)
    shown = mailbox.run("pending", "show", str(row["id"])).stdout
    assert hashlib.sha256(shown).digest() == hashlib.sha256(data).digest()


def test_fifty_megabytes_whitelisted_pass_with_bounded_memory(mailbox: Mailbox,
                                                              tmp_path: Path) -> None:
    """crtool writing a whitelisted message into the Maildir streams it: its peak memory
    grows by far less than the message's size."""
    config = mailbox.home / "config.toml"
    config.write_text(config.read_text().replace('delivery = "continue"', 'delivery = "maildir"'))
    mailbox.ok("whitelist", "add", "@friends.test")
    small = tmp_path / "small.eml"
    small.write_bytes(b"From: f@friends.test\nSubject: small\n\nhi\n")
    code, err, baseline = _run_measured(mailbox, small, "f@friends.test")
    assert code == 99, err
    data = fifty_megabytes(tmp_path / "big.eml")
    code, err, peak = _run_measured(mailbox, tmp_path / "big.eml", "f@friends.test")
    assert code == 99, err
    assert peak - baseline < 16 * 1024, (baseline, peak)
    delivered = sorted((mailbox.maildir / "new").iterdir(), key=lambda p: p.stat().st_size)
    assert delivered[-1].read_bytes().endswith(data)


def test_terminal_escapes_in_an_envelope_sender_are_shown_escaped(mailbox: Mailbox) -> None:
    """`pending list` shows what arrived, escaped: no ESC, C1 control, bidi override or line
    separator of a stranger's reaches the owner's terminal."""
    sender = "\x1b]0;owned\x07\x1b[2J\u009b31m\u202eevil\u2028x@remote.test"
    subject = "=?utf-8?q?=1B[2J=C2=9B31m=E2=80=AEabc?="
    result = mailbox.deliver(f"From: x@remote.test\nSubject: {subject}\n\nbody\n".encode(),
                             sender)
    assert result.returncode == 99, result.stderr
    text = mailbox.run("pending", "list").stdout.decode()
    assert "\\x1b]0;owned\\x07\\x1b[2J" in text
    assert all(line.isprintable() for line in text.splitlines()), text
    listed = mailbox.run("pending", "list", "--json").stdout.decode()
    assert all(line.isprintable() for line in listed.splitlines()), listed
    [row] = json.loads(listed)
    assert row["sender"] == sender


@pytest.mark.parametrize(("head", "sender"), [
    (b"Subject: =?utf-8?q?caf=E9_cr=C3=A8me?=\nMessage-ID: <m1@remote.test>\n", STRANGER),
    (b"Subject: x\nMessage-ID: <m1@remote.test>\n", "=?utf-8?q?=0d=0aX-Inj:_yes?=@remote.test"),
    (b"Subject: x\nMessage-ID: <=?utf-8?q?=0d=0aX-Inj:_yes?=@remote.test>\n", STRANGER),
    (b"Subject: =?utf-8?b?eA0KQ29udGVudC1UeXBlOiB0ZXh0L2h0bWwNCg0KPGEgaHJlZj14Pg==?=\n",
     STRANGER),
])
def test_encoded_words_are_held_and_answered_by_one_plain_challenge(
        mailbox: Mailbox, head: bytes, sender: str) -> None:
    """Each once made the challenge fail to build (a retry forever) or gave it a header of
    the sender's making; now the message is held and one sound challenge goes to the envelope
    sender, by the interpreter crtool runs on."""
    data = b"From: x@remote.test\n" + head + b"\nbody\n"
    result = mailbox.deliver(data, sender)
    assert result.returncode == 99, result.stderr
    [(args, challenge)] = mailbox.outbox.drain(1)
    assert args[-2:] == ["--", sender]
    assert challenge.get_content_type() == "text/plain" and not challenge.is_multipart()
    assert challenge["X-Inj"] is None and challenge["Content-Type"].count("text/plain") == 1
    for name, value in challenge.items():
        assert str(value).isprintable() and "=?" not in str(value), (name, value)
