"""The qmail profile as qmail-local drives it: the .qmail file chosen for the address, each line
run in turn with qmail's environment, in $HOME, on the same seekable stdin without
Return-Path/Delivered-To, and the exit codes read as qmail reads them (dot-qmail(5),
qmail-command(8)). No qmail runs on this machine, so `QmailLocal` below does what qmail-local
does for a program line and a maildir line and nothing more; crtool itself runs for real.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import (
    REPO,
    Mailbox,
    confirm_address_of,
    crtool_executable,
    message,
    qmail_env,
)

BOB = "bob@remote.test"
RECIPES = REPO / "etc" / "qmail"
# qmail-command(8): these program exit codes are hard errors; 0 and 99 are success and every
# other code (111, 75 and a crash included) is a soft error that qmail retries.
HARD = {64, 65, 70, 76, 77, 78, 100, 112}


@dataclass
class Result:
    """What qmail-local made of one delivery: "delivered", "bounced" or "deferred"."""

    status: str
    dot_qmail: str
    codes: list[int] = field(default_factory=list)
    output: list[bytes] = field(default_factory=list)


class QmailLocal:
    """qmail-local for one user: picks the .qmail file, runs its lines, reads the exit codes."""

    def __init__(self, box: Mailbox) -> None:
        self.box = box
        self.home = box.user_home

    def install(self, name: str, *lines: str) -> None:
        path = self.home / name
        path.write_text("".join(line + "\n" for line in lines))
        path.chmod(0o644)

    def dot_qmail(self, ext: str) -> tuple[Path, str | None]:
        """The file governing `ext` and the default prefix it matched: `.qmail` for the bare
        address; else `.qmail-EXT`, then `.qmail-<each shorter prefix ending in ->default`
        (lowercased, `.` read as `:`), as dot-qmail(5) looks them up."""
        if not ext:
            return self.home / ".qmail", None
        name = ext.lower().replace(".", ":")
        exact = self.home / f".qmail-{name}"
        if exact.exists():
            return exact, None
        cut = len(name)
        while True:
            cut = name.rfind("-", 0, cut)
            prefix = name[:cut + 1] if cut >= 0 else ""
            candidate = self.home / f".qmail-{prefix}default"
            if candidate.exists():
                return candidate, prefix
            if cut < 0:
                raise AssertionError(f"no .qmail file for extension {ext!r}")

    def deliver(self, data: bytes, sender: str,
                recipient: str = "alice@example.test") -> Result:
        local = recipient.rpartition("@")[0]
        ext = local[len("alice-"):] if local.lower().startswith("alice-") else ""
        path, prefix = self.dot_qmail(ext)
        env = qmail_env(sender, recipient, self.home, default_file=prefix is not None,
                        default_prefix=prefix or "")
        env["CRTOOL_TEST_OUTBOX"] = str(self.box.outbox.path)
        result = Result("delivered", path.name)
        # stdin is the queue file itself: seekable, rewound for every line.
        with tempfile.TemporaryFile() as stdin:
            stdin.write(data)
            for line in path.read_text().splitlines():
                stdin.seek(0)
                if line.startswith("#") or not line:
                    continue
                if line.startswith("|"):
                    run = subprocess.run(["/bin/sh", "-c", line[1:]], stdin=stdin, env=env,
                                         cwd=self.home, capture_output=True, timeout=120,
                                         check=False)
                    result.codes.append(run.returncode)
                    result.output.append(run.stdout + run.stderr)
                    if run.returncode == 99:
                        return result
                    if run.returncode in HARD:
                        result.status = "bounced"
                        return result
                    if run.returncode != 0:
                        result.status = "deferred"
                        return result
                elif line.endswith("/"):
                    self._maildir(self.home / line, env, stdin.read())
        return result

    @staticmethod
    def _maildir(maildir: Path, env: dict[str, str], data: bytes) -> None:
        # qmail's own maildir delivery puts Return-Path and Delivered-To first.
        name = f"{time.time_ns()}.qmail-local"
        tmp = maildir / "tmp" / name
        tmp.write_bytes(env["RPLINE"].encode() + env["DTLINE"].encode() + data)
        tmp.rename(maildir / "new" / name)


def recipe(name: str) -> list[str]:
    """A .qmail file of etc/qmail/ as an owner installs it, naming this environment's crtool."""
    text = (RECIPES / name).read_text().replace("/usr/local/bin/crtool", crtool_executable())
    return text.splitlines()


def install_qmail(box: Mailbox, dedicated_confirm: bool = False) -> QmailLocal:
    """The recipe of etc/qmail/: ~/.qmail and ~/.qmail-default run crtool, then the Maildir
    line; with `dedicated_confirm`, ~/.qmail-confirm-default runs crtool alone."""
    qmail = QmailLocal(box)
    for sub in ("tmp", "new", "cur"):
        (box.maildir / sub).mkdir(parents=True, exist_ok=True)
    for name in (".qmail", ".qmail-default"):
        qmail.install(name, *recipe("dot-qmail-default"))
    if dedicated_confirm:
        qmail.install(".qmail-confirm-default", *recipe("dot-qmail-confirm-default"))
    return qmail


def test_whitelisted_mail_is_delivered_by_the_next_qmail_line(mailbox: Mailbox) -> None:
    # Exit 0 and not a word: the ./Maildir/ line delivers, with qmail's own trace lines.
    qmail = install_qmail(mailbox)
    mailbox.ok("whitelist", "add", "friend@example.org")
    result = qmail.deliver(message("friend@example.org"), "friend@example.org")
    assert (result.status, result.codes, result.output) == ("delivered", [0], [b""])
    [delivered] = mailbox.maildir_messages()
    assert delivered == (b"Return-Path: <friend@example.org>\nDelivered-To: alice@example.test\n"
                         + message("friend@example.org"))
    mailbox.outbox.drain(0)


def test_bare_address_is_governed_by_dot_qmail_without_default(mailbox: Mailbox) -> None:
    # ~/.qmail gets no DEFAULT and no EXT; crtool still knows the owner by RECIPIENT.
    qmail = install_qmail(mailbox)
    mailbox.ok("whitelist", "add", "friend@example.org")
    result = qmail.deliver(message("friend@example.org"), "friend@example.org",
                           "Alice@Example.TEST")
    assert (result.dot_qmail, result.status, result.codes) == (".qmail", "delivered", [0])
    assert len(mailbox.maildir_messages()) == 1


def test_maildir_delivery_mode_exits_99_so_the_next_line_never_runs(mailbox: Mailbox) -> None:
    # With delivery = "maildir" crtool writes the Maildir itself; 99 keeps qmail from a copy.
    config = mailbox.home / "config.toml"
    config.write_text(config.read_text().replace('delivery = "continue"',
                                                 'delivery = "maildir"'))
    qmail = install_qmail(mailbox)
    mailbox.ok("whitelist", "add", "friend@example.org")
    result = qmail.deliver(message("friend@example.org"), "friend@example.org")
    assert (result.status, result.codes) == ("delivered", [99])
    [delivered] = mailbox.maildir_messages()
    assert delivered.startswith(b"Return-Path: <friend@example.org>\n"
                                b"Delivered-To: alice@example.test\nFrom: friend@example.org\n")


def test_unknown_sender_is_held_with_99_and_the_maildir_line_skipped(mailbox: Mailbox) -> None:
    qmail = install_qmail(mailbox)
    result = qmail.deliver(message(BOB), BOB)
    assert (result.status, result.codes) == ("delivered", [99])
    assert result.output[0].startswith(b"crtool: held as ")
    assert mailbox.maildir_messages() == []
    [(args, _)] = mailbox.outbox.drain(1)
    assert args[-1] == BOB


def test_confirm_reply_through_qmail_default_releases_with_qmail_trace_lines(
        mailbox: Mailbox) -> None:
    # DEFAULT is "confirm-<token>" here; the release is written as qmail would have written it.
    qmail = install_qmail(mailbox)
    original = message(BOB, subject="Lunch?")
    assert qmail.deliver(original, BOB).codes == [99]
    [(_, challenge)] = mailbox.outbox.drain(1)
    confirm = confirm_address_of(challenge)
    result = qmail.deliver(message(BOB, subject="Re: confirm", to=confirm), BOB, confirm)
    assert (result.dot_qmail, result.status, result.codes) == (".qmail-default", "delivered",
                                                               [99])
    [released] = mailbox.maildir_messages()
    assert released == (b"Return-Path: <bob@remote.test>\nDelivered-To: alice@example.test\n"
                        + original)
    mailbox.outbox.drain(0)
    # Bob is whitelisted now: his next mail goes on to the Maildir line.
    assert qmail.deliver(message(BOB, subject="Again"), BOB).codes == [0]
    assert len(mailbox.maildir_messages()) == 2


def test_dedicated_confirm_file_gets_only_the_token_as_default(mailbox: Mailbox) -> None:
    # .qmail-confirm-default wins over .qmail-default for confirm addresses; qmail sets
    # DEFAULT to the token alone and EXT to confirm-<token>, in the case the sender typed.
    qmail = install_qmail(mailbox, dedicated_confirm=True)
    assert qmail.deliver(message(BOB), BOB).codes == [99]
    [(_, challenge)] = mailbox.outbox.drain(1)
    confirm = confirm_address_of(challenge)
    shouted = confirm.upper()
    token = confirm.split("@")[0].removeprefix("alice-confirm-")
    env = qmail_env(BOB, shouted, mailbox.user_home, default_prefix="confirm-")
    assert (env["EXT"], env["DEFAULT"]) == (f"CONFIRM-{token.upper()}", token.upper())
    result = qmail.deliver(message(BOB, to=shouted), BOB, shouted)
    assert (result.dot_qmail, result.status, result.codes) == (".qmail-confirm-default",
                                                               "delivered", [99])
    assert len(mailbox.maildir_messages()) == 1


def test_forged_confirm_reply_is_dropped_with_99(mailbox: Mailbox) -> None:
    qmail = install_qmail(mailbox, dedicated_confirm=True)
    assert qmail.deliver(message(BOB), BOB).codes == [99]
    mailbox.outbox.drain(1)
    forged = "alice-confirm-aaaaaaaaaaaaaaaaaaaaaaaa@example.test"
    result = qmail.deliver(message(BOB, to=forged), BOB, forged)
    assert (result.status, result.codes) == ("delivered", [99])
    assert mailbox.maildir_messages() == []
    mailbox.outbox.drain(0)


def test_double_bounce_sender_is_held_silently(mailbox: Mailbox) -> None:
    # qmail's double bounce arrives from "#@[]"; no challenge may answer it.
    qmail = install_qmail(mailbox)
    result = qmail.deliver(message("MAILER-DAEMON@remote.test"), "#@[]")
    assert (result.status, result.codes) == ("delivered", [99])
    assert b"without challenge" in result.output[0]
    mailbox.outbox.drain(0)


def test_blacklisted_sender_bounces_with_100_when_asked(mailbox: Mailbox) -> None:
    # The one line on stderr is what qmail puts into the bounce.
    config = mailbox.home / "config.toml"
    config.write_text(config.read_text().replace('blacklist_action = "drop"',
                                                 'blacklist_action = "bounce"'))
    qmail = install_qmail(mailbox)
    mailbox.ok("blacklist", "add", "spam@remote.test")
    result = qmail.deliver(message("spam@remote.test"), "spam@remote.test")
    assert (result.status, result.codes) == ("bounced", [100])
    assert result.output[0].startswith(b"crtool: ") and result.output[0].count(b"\n") == 1
    assert mailbox.maildir_messages() == []


def test_broken_key_ring_defers_with_111_and_the_retry_delivers(mailbox: Mailbox) -> None:
    # A world-readable key ring is a broken installation: 111, nothing held, nothing sent;
    # qmail retries the whole file later, and once it is fixed the retry holds and challenges.
    qmail = install_qmail(mailbox)
    (mailbox.home / "keys").chmod(0o644)
    result = qmail.deliver(message(BOB), BOB)
    assert (result.status, result.codes) == ("deferred", [111])
    assert b"readable by others" in result.output[0] and result.output[0].count(b"\n") == 1
    assert mailbox.ok("pending", "list") == "nothing held\n"
    mailbox.outbox.drain(0)
    (mailbox.home / "keys").chmod(0o600)
    assert qmail.deliver(message(BOB), BOB).codes == [99]
    mailbox.outbox.drain(1)


def test_missing_config_defers_with_111_not_a_sysexits_code(mailbox: Mailbox) -> None:
    # Before the config is read the profile comes from the environment: qmail's has DTLINE.
    qmail = install_qmail(mailbox)
    (mailbox.home / "config.toml").rename(mailbox.home / "config.toml.away")
    result = qmail.deliver(message("friend@example.org"), "friend@example.org")
    assert (result.status, result.codes) == ("deferred", [111])
    assert b"config" in result.output[0]
    assert mailbox.maildir_messages() == []

