"""Hub mode behind a real Postfix, in front of a real Dovecot: Postfix hands mail for hub.test
over LMTP (transport_maps) to `crtool lmtp`, which runs as the virtual-mail user vmail and
passes accepted and released mail on to Dovecot's LMTP server (alice) or writes a Maildir
itself (carol). Set up by .ci/postfix.sh and .ci/hub.sh; crtool lmtp is started here.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import host
from tests.e2e.host import bob

pytestmark = pytest.mark.e2e

HUB = Path("/srv/crtool-e2e/hub")
MAIL = Path("/srv/crtool-e2e/mail")
SOCKET = Path("/run/crtool-e2e/lmtp.sock")
DOVECOT = "unix:/run/crtool-e2e-dovecot/lmtp"
DOVECOT_LOG = Path("/var/log/crtool-e2e-dovecot.log")
ALICE = "alice@hub.test"
CAROL = "carol@hub.test"
CONFIRM = re.compile(rb"^Reply-To: (alice-confirm-[a-z2-7]+@hub\.test)$", re.MULTILINE)


def why_not_available() -> str | None:
    reason = host.why_not_available()
    if reason is not None:
        return reason
    try:
        pwd.getpwnam("vmail")
    except KeyError:
        return "user vmail does not exist; .ci/hub.sh creates it"
    if not Path(DOVECOT[len("unix:"):]).is_socket():
        return "Dovecot's LMTP socket is missing; .ci/hub.sh starts Dovecot"
    if "hub.test" not in host.run(["postconf", "-h", "transport_maps"]).stdout + \
            Path("/etc/postfix/crtool-transport").read_text():
        return "Postfix does not route hub.test to crtool; run .ci/hub.sh"
    return None


def as_vmail(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = ["env", "-i", "HOME=/srv/crtool-e2e", "PATH=/usr/bin:/bin"]
    return host.run(["runuser", "-u", "vmail", "--", *env, *argv], check=check)


def crtool(*args: str) -> str:
    return as_vmail(str(host.CRTOOL), "--config", str(HUB / "crtool.toml"), *args).stdout


def messages(owner: str, marker: str) -> list[bytes]:
    found = []
    for sub in ("new", "cur"):
        folder = MAIL / owner.split("@")[0] / "Maildir" / sub
        if folder.is_dir():
            found += [p.read_bytes() for p in sorted(folder.iterdir())
                      if marker.encode() in p.read_bytes()]
    return found


@pytest.fixture(scope="module")
def hub() -> Iterator[subprocess.Popen[bytes]]:
    """A fresh hub (SQLite, owned by vmail) and its crtool lmtp, for this module's tests."""
    reason = why_not_available()
    if reason is not None:
        pytest.skip(f"no Postfix + Dovecot hub to test against: {reason}")
    host.prepare_once()
    with host.locked(fcntl.LOCK_SH):
        for path in (HUB, MAIL / "alice", MAIL / "carol"):
            shutil.rmtree(path, ignore_errors=True)
        HUB.mkdir(mode=0o700)
        shutil.chown(HUB, "vmail", "vmail")
        (HUB / "crtool.toml").write_text(
            f'database_url = "sqlite:///{HUB}/hub.db"\nsendmail = "{host.SENDMAIL}"\n'
            f'[lmtp]\nlisten = "unix:{SOCKET}"\nsocket_mode = 0o666\n')
        crtool("init")
        crtool("owner", "add", ALICE, "--lmtp-next", DOVECOT)
        crtool("owner", "add", CAROL, "--maildir", str(MAIL / "carol" / "Maildir"))
        log = open(HUB / "lmtp.log", "ab")  # noqa: SIM115 - closed at teardown
        vmail = pwd.getpwnam("vmail")
        process = subprocess.Popen(
            [str(host.CRTOOL), "--config", str(HUB / "crtool.toml"), "lmtp"],
            stdout=log, stderr=log, start_new_session=True, user=vmail.pw_uid,
            group=vmail.pw_gid, extra_groups=[], cwd="/",
            env={"PATH": "/usr/bin:/bin", "HOME": "/srv/crtool-e2e"})
        host.wait_for("crtool lmtp to listen", lambda: SOCKET.is_socket() and
                      "listening" in (HUB / "lmtp.log").read_text())
        try:
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
            log.close()
            assert code == 0, (HUB / "lmtp.log").read_text()


def test_whitelisted_mail_goes_through_crtool_to_dovecot(hub: object) -> None:
    # Postfix -> crtool lmtp (whitelisted) -> Dovecot LMTP, which stores it in alice's INBOX
    # with its own Return-Path and Delivered-To.
    word = host.marker()
    crtool("whitelist", "add", f"dave-{word}@remote.test", "--owner", ALICE)
    bob.send(f"dave-{word}@remote.test", ALICE,
             host.mail(f"dave-{word}@remote.test", ALICE, f"Notes {word}", f"{word}@remote.test"))
    [stored] = host.wait_for("the message in alice's Dovecot Maildir",
                             lambda: messages(ALICE, word))
    assert stored.startswith(f"Return-Path: <dave-{word}@remote.test>\n".encode())
    assert b"Delivered-To: alice@hub.test\n" in stored
    assert "saved mail to INBOX" in DOVECOT_LOG.read_text(errors="replace")


def test_a_stranger_is_challenged_confirms_and_dovecot_gets_it_once(hub: object) -> None:
    word = host.marker()
    log = host.MailLog()
    bob.send("bob@remote.test", ALICE,
             host.mail("bob@remote.test", ALICE, f"Lunch {word}", f"first-{word}@remote.test"))
    [challenge] = host.wait_for("the challenge in bob's Maildir", lambda: bob.messages(word))
    assert challenge.startswith(b"Return-Path: <>\n")
    queue_id = host.wait_for("the queue id", lambda: log.queue_id(f"first-{word}@remote.test"))
    host.wait_for("Postfix to log crtool's answer", lambda: [
        line for line in log.lines(queue_id) if "[/run/crtool-e2e/lmtp.sock]" in line
        and "status=sent (250 2.0.0 held as" in line])
    assert messages(ALICE, word) == []
    confirm = CONFIRM.search(challenge)
    assert confirm is not None, challenge.decode()
    bob.send("bob@remote.test", confirm.group(1).decode(),
             host.mail("bob@remote.test", confirm.group(1).decode(), f"Re: Lunch {word}",
                       f"reply-{word}@remote.test", extra=f"In-Reply-To: <x-{word}@hub.test>\n"))
    [released] = host.wait_for("the released message at Dovecot", lambda: messages(ALICE, word))
    assert f"Subject: Lunch {word}".encode() in released
    assert crtool("whitelist", "check", "bob@remote.test", "--owner", ALICE).startswith("listed")


def test_an_unknown_hub_address_bounces_with_5_1_1(hub: object) -> None:
    word = host.marker()
    log = host.MailLog()
    bob.send("bob@remote.test", "nobody@hub.test",
             host.mail("bob@remote.test", "nobody@hub.test", f"Hi {word}", f"n-{word}@remote.test"))
    queue_id = host.wait_for("the queue id", lambda: log.queue_id(f"n-{word}@remote.test"))
    host.wait_for("the bounce", lambda: [line for line in log.lines(queue_id)
                                         if "status=bounced" in line and "5.1.1" in line])


def test_a_maildir_owner_gets_trace_lines_written_by_crtool(hub: object) -> None:
    word = host.marker()
    crtool("whitelist", "add", "@remote.test", "--owner", CAROL)
    bob.send("bob@remote.test", CAROL,
             host.mail("bob@remote.test", CAROL, f"Hi {word}", f"c-{word}@remote.test"))
    [stored] = host.wait_for("the message in carol's Maildir", lambda: messages(CAROL, word))
    assert stored.startswith(b"Return-Path: <bob@remote.test>\nDelivered-To: carol@hub.test\n")
    assert os.stat(MAIL / "carol" / "Maildir" / "new").st_uid == pwd.getpwnam("vmail").pw_uid
