"""The Postfix host the end-to-end tests drive: users alice and bob on this machine, crtool
installed where alice can run it, and the ways to send, wait and look.

Postfix (set up by .ci/postfix.sh) runs alice's ~/.forward command as
alice, in /var/spool/postfix, with PATH=/usr/bin:/bin, so crtool must live where alice can read
it: a virtual environment in /opt built from this checkout (pip install of the path, not
editable, since the checkout may sit under /root). It is rebuilt only when the source changed.

pytest-xdist spreads the tests of one module over its workers, so the host is reset once per
test run (whichever worker comes first, under an exclusive lock), and each test holds a shared
lock while it runs; the test that moves alice's database away holds it exclusively, so no
other delivery sees the missing database.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.support import REPO

VENV = Path("/opt/crtool-e2e")
CRTOOL = VENV / "bin" / "crtool"
SOURCE_STAMP = VENV / ".crtool-source-sha256"
SYSTEM_PYTHON = Path("/usr/bin/python3")
LOCK = Path("/tmp/crtool-e2e.lock")
RUN_STAMP = Path("/tmp/crtool-e2e.run")
SENDMAIL = "/usr/sbin/sendmail"
POSTFIX_LOG = Path("/var/log/postfix.log")
ALICE = "alice@example.test"
WAIT = 30.0

T = TypeVar("T")


def why_not_available() -> str | None:
    """None when a configured, running Postfix and the users are here; else the reason."""
    if os.geteuid() != 0:
        return "needs root (runs commands as alice and bob, manages Postfix); run .ci/run"
    if shutil.which("postconf") is None and not Path("/usr/sbin/postconf").exists():
        return "Postfix is not installed; .ci/postfix.sh installs and starts it"
    for user in ("alice", "bob"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"user {user} does not exist; .ci/postfix.sh creates it"
    if run(["postfix", "status"], check=False).returncode != 0:
        return "Postfix is not running; .ci/postfix.sh starts it"
    settings = run(["postconf", "-h", "recipient_delimiter", "mydestination"]).stdout
    if not settings.startswith("-") or "example.test" not in settings \
            or "remote.test" not in settings:
        return "Postfix is not configured as .ci/postfix.sh leaves it; run it"
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} is missing: alice needs a Python she can run"
    return None


def run(argv: list[str], check: bool = True, input: bytes | None = None,
        cwd: str = "/") -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, input=input.decode() if input is not None else None,
                            capture_output=True, text=True, cwd=cwd, timeout=300, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} exited {result.returncode}: {result.stderr.strip()}")
    return result


def source_hash() -> str:
    """What the installed crtool was built from: every file pip puts into the wheel."""
    h = hashlib.sha256()
    paths = [REPO / "pyproject.toml"]
    for top in ("crtool", "templates", "migrations"):
        paths += (p for p in (REPO / top).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)
    for path in sorted(paths):
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def install_crtool() -> None:
    """A virtual environment alice can run, rebuilt only when the source changed."""
    wanted = source_hash()
    if CRTOOL.exists() and SOURCE_STAMP.exists() and SOURCE_STAMP.read_text() == wanted:
        return
    shutil.rmtree(VENV, ignore_errors=True)
    run([str(SYSTEM_PYTHON), "-m", "venv", str(VENV)])
    run([str(VENV / "bin" / "pip"), "install", "--quiet", f"{REPO}[hub]"])
    run(["chmod", "-R", "a+rX", str(VENV)])
    SOURCE_STAMP.write_text(wanted)


@dataclass(frozen=True)
class User:
    name: str

    @property
    def home(self) -> Path:
        return Path(pwd.getpwnam(self.name).pw_dir)

    @property
    def maildir(self) -> Path:
        return self.home / "Maildir"

    def as_user(self, argv: list[str], input: bytes | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run argv as this user, with the environment Postfix gives a .forward command."""
        env = ["env", "-i", f"HOME={self.home}", f"USER={self.name}", "PATH=/usr/bin:/bin"]
        return run(["runuser", "-u", self.name, "--", *env, *argv], check=check, input=input)

    def crtool(self, *args: str) -> str:
        return self.as_user([str(CRTOOL), *args]).stdout

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        """Submit through Postfix's sendmail, as a local user's mail program does."""
        self.as_user([SENDMAIL, "-i", "-f", sender, "--", recipient], input=message)

    def messages(self, marker: str) -> list[bytes]:
        """The messages in this user's Maildir (new/ and cur/) whose bytes contain marker."""
        found = []
        for sub in ("new", "cur"):
            folder = self.maildir / sub
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    data = path.read_bytes()
                    if marker.encode() in data:
                        found.append(data)
        return found

    def held(self) -> list[dict[str, object]]:
        items: list[dict[str, object]] = json.loads(self.crtool("pending", "list", "--json"))
        return items


alice = User("alice")
bob = User("bob")


def recipe(name: str) -> str:
    """A file of etc/ as an owner installs it, naming the crtool alice can run."""
    return (REPO / "etc" / name).read_text().replace("/usr/local/bin/crtool", str(CRTOOL))


def reset() -> None:
    """Empty the queue, alice's and bob's Maildirs and alice's crtool HOME, then set alice up:
    `crtool init` with the postfix profile, and etc/postfix/forward as her ~/.forward."""
    run(["postsuper", "-d", "ALL"], check=False)
    for path in (alice.maildir, alice.home / ".crtool", alice.home / ".forward", bob.maildir):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    alice.crtool("init", "--address", ALICE, "--maildir", str(alice.maildir),
                 "--sendmail", SENDMAIL, "--mta", "postfix")
    set_serve_idle("0s")  # each delivery alone; the test of the server on demand turns it on
    forward = alice.home / ".forward"
    forward.write_text(recipe("postfix/forward"))
    shutil.chown(forward, "alice", "alice")
    forward.chmod(0o644)


def set_serve_idle(value: str) -> None:
    """Alice's serve_idle: "0s" starts no server; the file stays hers."""
    path = alice.home / ".crtool" / "config.toml"
    path.write_text(re.sub(r"(?m)^serve_idle = .*$", f'serve_idle = "{value}"',
                           path.read_text()))


def alices_server() -> int | None:
    """The pid of the `crtool serve` running for alice (autostart's lock), or None."""
    from crtool import autostart

    return autostart.running(str(alice.home / ".crtool"))


@contextlib.contextmanager
def locked(mode: int) -> Iterator[None]:
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_once() -> None:
    """Install crtool and reset the host, once per test run however many workers ask."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"single-{os.getpid()}"
    with locked(fcntl.LOCK_EX):
        if RUN_STAMP.exists() and RUN_STAMP.read_text() == run_id:
            return
        install_crtool()
        reset()
        RUN_STAMP.write_text(run_id)


def marker() -> str:
    """A word no other message carries, to find this test's mail and log lines."""
    return "e2e" + uuid.uuid4().hex[:12]


def mail(sender: str, to: str, subject: str, message_id: str, body: str = "Hello.\n",
         extra: str = "") -> bytes:
    return (f"From: {sender}\nTo: {to}\nSubject: {subject}\nMessage-ID: <{message_id}>\n"
            f"{extra}\n{body}").encode()


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT) -> T:
    """Poll probe until it returns something truthy, flushing Postfix's queue now and then so
    a deferred message is retried at once; fail after `timeout` seconds with the mail log."""
    deadline = time.monotonic() + timeout
    next_flush = time.monotonic() + 2
    while True:
        value = probe()
        if value:
            return value
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}\n"
                                 f"queue:\n{run(['postqueue', '-p'], check=False).stdout}\n"
                                 f"log:\n{log_tail()}")
        if now > next_flush:
            run(["postqueue", "-f"], check=False)
            next_flush = now + 2
        time.sleep(0.2)


def log_tail(lines: int = 30) -> str:
    try:
        return "".join(POSTFIX_LOG.read_text(errors="replace").splitlines(True)[-lines:])
    except OSError as error:
        return f"({POSTFIX_LOG}: {error.strerror})"


class MailLog:
    """Postfix's log from the moment this object was made."""

    def __init__(self) -> None:
        self.start = POSTFIX_LOG.stat().st_size if POSTFIX_LOG.exists() else 0

    def text(self) -> str:
        with open(POSTFIX_LOG, "rb") as handle:
            handle.seek(self.start)
            return handle.read().decode("utf-8", "replace")

    def queue_id(self, message_id: str) -> str | None:
        """The queue id cleanup gave the message with this Message-ID, once it is logged."""
        found = re.search(r"\]: ([0-9A-F]+): message-id=<" + re.escape(message_id) + ">",
                          self.text())
        return found.group(1) if found else None

    def lines(self, queue_id: str) -> list[str]:
        return [line for line in self.text().splitlines() if f" {queue_id}: " in line]

    def queued(self) -> set[str]:
        """The queue ids Postfix holds now (postqueue -j, one JSON object a line)."""
        out = run(["postqueue", "-j"], check=False).stdout
        return {json.loads(line)["queue_id"] for line in out.splitlines() if line.strip()}
