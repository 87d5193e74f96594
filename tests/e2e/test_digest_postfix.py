"""The owner's digest through a real Postfix: `crtool digest` mails it with a null sender,
Postfix hands it back to alice's crtool (through ~/.forward, like any mail), which recognises
it and delivers it; a mail to a release address in it, sent through Postfix, releases the held
message once; the second reads as used and sends nothing. Then Debian's mutt, driven in tmux,
shows the digest as the owner reads it (the screen is kept: CRTOOL_MUTT_CAPTURE=FILE).
"""

from __future__ import annotations

import email
import email.policy
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import host
from tests.e2e.host import ALICE, alice, bob

pytestmark = pytest.mark.e2e


@pytest.fixture
def shared() -> Iterator[None]:
    reason = host.why_not_available()
    if reason is not None:
        pytest.skip(f"no Postfix to test against: {reason}")
    host.prepare_once()
    with host.locked(fcntl.LOCK_SH):
        yield


def _text_part(data: bytes) -> str:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    body = parsed.get_body(("plain",))  # type: ignore[attr-defined]
    assert body is not None
    return str(body.get_content())


def _stats() -> dict[str, dict[str, int]]:
    stats: dict[str, dict[str, int]] = json.loads(alice.crtool("stats", "--json"))
    return stats


def test_digest_round_trip_and_release_by_mail(shared: None, tmp_path: Path) -> None:
    word = host.marker()
    sender = f"news-{word}@remote.test"
    bob.send(sender, ALICE, host.mail(sender, ALICE, f"Newsletter {word}", f"{word}@remote.test",
                                      extra="List-Id: <news.remote.test>\n"))
    reset = f"noreply-{word}@remote.test"
    bob.send(reset, ALICE, host.mail(f"Shop <{reset}>", ALICE, f"Password reset {word}",
                                     f"reset-{word}@remote.test"))
    for subject in (f"Newsletter {word}", f"Password reset {word}"):
        host.wait_for(f"{subject} held silently",
                      lambda s=subject: [i for i in alice.held() if i["subject"] == s])

    # The digest goes out through Postfix's sendmail and comes back to alice's crtool.
    out = alice.crtool("digest")
    assert out.startswith("digest ") and "sent to alice@example.test" in out, out
    [digest] = host.wait_for("the digest in alice's Maildir", lambda: [
        m for m in alice.messages(word) if b"\nAuto-Submitted: auto-generated\n" in m])
    assert digest.startswith(b"Return-Path: <>\n")
    assert not any(str(i["subject"]).startswith("[crtool digest]") for i in alice.held())
    text = _text_part(digest)
    [release] = [address for address in re.findall(r"release: (\S+)", text)
                 if address in text.split(f"Newsletter {word}", 1)[1][:300]]

    # Bob (any sender will do: the token is the secret) mails the release address.
    dropped_before = _stats()["dropped_by_reason"].get("token_used", 0)
    bob.send("bob@remote.test", release, host.mail("bob@remote.test", release, "release",
                                                   f"rel-{word}@remote.test"))
    def newsletters() -> list[bytes]:
        return [m for m in alice.messages(f"{word}@remote.test") if b"Auto-Submitted" not in m]

    [released] = host.wait_for("the released newsletter in alice's Maildir", newsletters)
    assert released.startswith(f"Return-Path: <{sender}>\n".encode())
    assert not [i for i in alice.held() if i["subject"] == f"Newsletter {word}"]

    # The second use changes nothing and sends nothing.
    bob.send("bob@remote.test", release.upper(), host.mail(
        "bob@remote.test", release, "again", f"again-{word}@remote.test"))
    host.wait_for("the second use logged as token_used", lambda: _stats()[
        "dropped_by_reason"].get("token_used", 0) > dropped_before)
    assert len(newsletters()) == 1
    assert bob.messages(word) == [] and bob.messages(f"rel-{word}") == []

    _show_in_mutt(digest, tmp_path)


def _mutt() -> str:
    """Debian's mutt, installed on first use (the test host is a Debian machine)."""
    found = shutil.which("mutt")
    if found is None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-q", "mutt"], check=True, env=env,
                       capture_output=True, timeout=600)
        found = shutil.which("mutt")
    assert found is not None
    return found


def _show_in_mutt(digest: bytes, tmp_path: Path) -> None:
    """Open the digest in mutt (no muttrc, a 100x50 terminal) and read the screen."""
    mutt = _mutt()
    box = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (box / sub).mkdir(parents=True)
    (box / "new" / "1.digest").write_bytes(digest)
    (tmp_path / "Mail").mkdir()  # mutt's default folder; it would ask to create it
    session = f"crtool-digest-{os.getpid()}"
    # Debian's /etc/Muttrc (which shows From, Date, To, Cc and Subject), no user muttrc.
    command = (f"env -i HOME={tmp_path} TERM=xterm-256color LANG=C.UTF-8 TZ=UTC "
               f"{mutt} -F /dev/null -R -f {box}")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "50",
                    command], check=True)
    try:
        screen = _until(session, "[crtool digest]")
        subprocess.run(["tmux", "send-keys", "-t", session, "Enter"], check=True)
        screen = _until(session, "release:")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    assert "Subject: [crtool digest]" in screen
    assert "== list_headers:" in screen and "== noreply_sender:" in screen
    assert "release: alice-release-" in screen and "accept:  alice-accept-" in screen
    target = os.environ.get("CRTOOL_MUTT_CAPTURE")
    if target:
        Path(target).write_text(screen)


def _until(session: str, text: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                capture_output=True, text=True, check=True).stdout
        if text in screen:
            return screen
        assert time.monotonic() < deadline, f"mutt never showed {text!r}:\n{screen}"
        time.sleep(0.2)
