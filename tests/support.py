"""Helpers shared by the tests: a protected mailbox in a temporary home, qmail-local's exact
environment for `crtool deliver` run as a subprocess, and the outbox the sendmail stand-in fills.
"""

from __future__ import annotations

import atexit
import email
import email.policy
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CAPTURE_SENDMAIL = REPO / "tests" / "bin" / "capture-sendmail"
QMAIL_PATH = "/var/qmail/bin:/usr/local/bin:/usr/bin:/bin"


def no_autostart(home: Path) -> None:
    """serve_idle = 0 in HOME's config.toml: a test's deliveries run in-process and leave no
    `crtool serve` behind, unless the test is about the server started on demand."""
    path = home / "config.toml"
    text = re.sub(r'(?m)^serve_idle = .*$', 'serve_idle = "0s"', path.read_text())
    if not re.search(r"(?m)^serve_idle = ", text):
        text = 'serve_idle = "0s"\n' + text
    path.write_text(text)


def stop_autostarted(root: Path) -> list[int]:
    """SIGKILL every server started on demand for a HOME under `root` (its pid is in
    HOME/serve.lock while it holds the lock); the pids killed."""
    from crtool import autostart

    killed = []
    for lock in root.rglob(autostart.LOCK_NAME):
        pid = autostart.running(str(lock.parent))
        if pid is not None and pid > 0:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                continue
            killed.append(pid)
    return killed


def crtool_executable() -> str:
    """The crtool console script of the environment running the tests, by absolute path,
    as a .qmail line names it."""
    script = Path(sys.executable).parent / "crtool"
    if script.exists():
        return str(script)
    found = shutil.which("crtool")
    if not found:
        raise RuntimeError("crtool is not installed in this environment")
    return found


def qmail_env(sender: str, recipient: str, user_home: Path, user: str = "alice",
              default_file: bool = True, default_prefix: str = "") -> dict[str, str]:
    """The environment qmail-local gives a program delivery (qmail-command(8)), for `user`'s
    `.qmail-default` (or `.qmail` when `default_file` is False for the bare address).

    `default_prefix` names a narrower default file: "confirm-" for `.qmail-confirm-default`,
    where DEFAULT is only the part of the extension that `default` matched (the token)."""
    local, _, host = recipient.rpartition("@")
    ext = ""
    if local.lower().startswith(user.lower() + "-"):
        ext = local[len(user) + 1:]
    env = {
        "PATH": QMAIL_PATH,
        "SENDER": sender,
        "NEWSENDER": sender,
        "RECIPIENT": recipient,
        "USER": user,
        "HOME": str(user_home),
        "HOST": host,
        "LOCAL": local,
        "EXT": ext,
        "DTLINE": f"Delivered-To: {recipient}\n",
        "RPLINE": f"Return-Path: <{sender}>\n",
        "UFLINE": f"From {sender or 'MAILER-DAEMON'} Thu Jan  1 00:00:00 2026\n",
    }
    parts = ext.split("-")
    for n in range(2, 5):
        env[f"EXT{n}"] = "-".join(parts[n - 1:]) if len(parts) >= n else ""
    host_parts = host.split(".")
    for n in range(2, 5):
        env[f"HOST{n}"] = ".".join(host_parts[: len(host_parts) - n + 1]) if host_parts else ""
    if default_file and ext:
        assert ext.lower().startswith(default_prefix.lower()), (ext, default_prefix)
        env["DEFAULT"] = ext[len(default_prefix):]
    return env


@dataclass
class Outbox:
    """The directory the sendmail stand-in writes each sent message into."""

    path: Path
    seen: set[str] = field(default_factory=set)

    def _new(self) -> list[Path]:
        if not self.path.exists():
            return []
        return sorted(p for p in self.path.glob("*.eml") if p.name not in self.seen)

    def drain(self, expected_count: int) -> list[tuple[list[str], EmailMessage]]:
        """The messages sent since the last drain; fails unless exactly `expected_count`."""
        new = self._new()
        assert len(new) == expected_count, (
            f"expected {expected_count} sent messages, found {len(new)}: "
            f"{[p.name for p in new]}")
        out = []
        for path in new:
            self.seen.add(path.name)
            args = path.with_suffix(".args").read_text().splitlines()
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            out.append((args, message))  # type: ignore[arg-type]
        return out


_CONFIRM = re.compile(r"[A-Za-z0-9.+_-]+-confirm-[a-z2-7]+@[A-Za-z0-9.-]+")


def confirm_address_of(challenge: EmailMessage) -> str:
    """The confirm address a challenge asks the sender to reply to (its Reply-To)."""
    address = str(challenge["Reply-To"])
    assert _CONFIRM.fullmatch(address), address
    return address


# The home `crtool init` made, per owner address, for Mailbox.init to copy.
_TEMPLATES: dict[str, Path] = {}


def _remove_if_mine(root: Path, pid: int) -> None:
    """At exit, the process that made a template removes it; a forked child (a mutation
    run's) must not take it from under its parent."""
    if os.getpid() == pid:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Mailbox:
    """alice@example.test protected by crtool in a temporary home."""

    user_home: Path
    database_url: str
    address: str = "alice@example.test"
    mta: str = "qmail"

    @property
    def home(self) -> Path:
        return self.user_home / ".crtool"

    @property
    def maildir(self) -> Path:
        return self.user_home / "Maildir"

    @property
    def outbox(self) -> Outbox:
        if not hasattr(self, "_outbox"):
            self._outbox = Outbox(self.user_home / "outbox")
        return self._outbox

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRTOOL_")}
        env["HOME"] = str(self.user_home)
        env["CRTOOL_TEST_OUTBOX"] = str(self.outbox.path)
        return env

    def run(self, *args: str, input: bytes | None = None,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        """`crtool --home HOME ARGS…` as a separate process."""
        env = self.base_env()
        env.update(extra_env or {})
        return subprocess.run([crtool_executable(), "--home", str(self.home), *args],
                              input=input, capture_output=True, env=env, timeout=120,
                              check=False)

    def ok(self, *args: str, input: bytes | None = None) -> str:
        result = self.run(*args, input=input)
        assert result.returncode == 0, (result.returncode, result.stderr.decode())
        return result.stdout.decode()

    def init(self, *extra: str) -> None:
        """`crtool init`. A plain SQLite home (most tests') is made once per test process
        and copied after that, with its paths rewritten: a process start and the migrations
        cost half a second a test, and copied it is the very home `init` makes. The homes
        of one test process so share a key ring, which no test compares across homes."""
        if extra or self.database_url != f"sqlite:///{self.home / 'crtool.db'}":
            self._init(*extra)
            return
        template = _TEMPLATES.get(self.address)
        if template is None or not template.is_dir():
            root = Path(tempfile.mkdtemp(prefix="crtool-test-home-"))
            atexit.register(_remove_if_mine, root, os.getpid())
            template = root / "user"
            template.mkdir(mode=0o755)
            Mailbox(template, f"sqlite:///{template / '.crtool' / 'crtool.db'}",
                    self.address)._init()
            _TEMPLATES[self.address] = template
        shutil.copytree(template / ".crtool", self.home)
        shutil.copytree(template / "Maildir", self.maildir)
        config = self.home / "config.toml"
        config.write_text(config.read_text().replace(str(template), str(self.user_home)))

    def _init(self, *extra: str) -> None:
        self.ok("init", "--address", self.address, "--maildir", str(self.maildir),
                "--sendmail", str(CAPTURE_SENDMAIL), "--database-url", self.database_url,
                *extra)
        no_autostart(self.home)

    def deliver(self, message: bytes, sender: str, recipient: str | None = None,
                extra_env: dict[str, str] | None = None,
                args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[bytes]:
        """`crtool deliver` exactly as qmail-local runs it from ~/.qmail-default: by absolute
        path, in $HOME, with qmail's environment and PATH, no --home."""
        recipient = recipient or self.address
        env = qmail_env(sender, recipient, self.user_home)
        env["CRTOOL_TEST_OUTBOX"] = str(self.outbox.path)
        env.update(extra_env or {})
        return subprocess.run([crtool_executable(), "deliver", *args], input=message,
                              capture_output=True, env=env, cwd=self.user_home, timeout=120,
                              check=False)

    def maildir_messages(self) -> list[bytes]:
        new = self.maildir / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


def message(sender: str = "bob@remote.test", subject: str = "Hello", body: str = "Hi Alice\n",
            headers: dict[str, str] | None = None, to: str = "alice@example.test") -> bytes:
    """A small RFC 5322 message as an MTA hands it over (LF line ends)."""
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}",
             "Message-ID: <m1@remote.test>", "Date: Sun, 29 Nov 2026 10:00:00 +0000"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\n".join(lines) + "\n\n" + body).encode("utf-8")
