"""The mailboxes the benchmarks deliver into: made by the real `crtool init`, filled through
crtool's own store code (lists.bulk_import; the models for held messages), one per list size."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

OWNER = "alice@example.test"
LISTED = "friend@example.org"
BLACKLISTED = "spam@junk.test"
BIN = Path(sys.executable).parent
CRTOOL = str(BIN / "crtool")
PYTHON = sys.executable
QMAIL_PATH = "/var/qmail/bin:/usr/local/bin:/usr/bin:/bin"


def listed_sender(i: int) -> str:
    """The i-th generated whitelist entry that is an exact address."""
    return f"user{i}@d{i % 5000}.example.net"


def _patterns(count: int) -> Iterator[str]:
    """`count` entries: nine exact addresses to one domain, as a grown whitelist looks."""
    for i in range(count):
        yield f"@d{i}.example.com" if i % 10 == 9 else listed_sender(i)


@dataclass
class Home:
    user_home: Path

    @property
    def home(self) -> Path:
        return self.user_home / ".crtool"

    @property
    def socket(self) -> Path:
        return self.home / "crtool.sock"

    def env(self, sender: str, recipient: str = OWNER) -> dict[str, str]:
        """What qmail-local gives a program delivery from ~/.qmail (qmail-command(8))."""
        return {
            "PATH": QMAIL_PATH, "HOME": str(self.user_home), "USER": "alice",
            "SENDER": sender, "NEWSENDER": sender, "RECIPIENT": recipient,
            "LOCAL": recipient.split("@")[0], "HOST": recipient.split("@")[-1], "EXT": "",
            "DTLINE": f"Delivered-To: {recipient}\n", "RPLINE": f"Return-Path: <{sender}>\n",
        }

    def command_env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", QMAIL_PATH), "HOME": str(self.user_home)}


def make_home(root: Path, name: str, entries: int, held: int = 0) -> Home:
    """A mailbox with `entries` whitelist entries (plus LISTED), BLACKLISTED blacklisted, and
    `held` messages held. Challenges go to /bin/true; the rate limits are lifted so every
    unknown sender of the benchmark costs a full challenge."""
    user_home = root / name
    user_home.mkdir(parents=True)
    home = Home(user_home)
    subprocess.run([CRTOOL, "--home", str(home.home), "init", "--address", OWNER,
                    "--maildir", str(user_home / "Maildir"), "--sendmail", "/bin/true"],
                   check=True, capture_output=True, env=home.command_env())
    config = home.home / "config.toml"
    text = re.sub(r"(?m)^challenge_global_limit = .*$", "challenge_global_limit = 1000000000",
                  config.read_text())
    config.write_text(text)

    from crtool import addresses, policy
    from crtool.store import lists
    from crtool.store.engine import make_engine, transaction

    engine = make_engine(f"sqlite:///{home.home / 'crtool.db'}")
    with transaction(engine) as session:
        patterns = (addresses.parse_pattern(p) for p in [LISTED, *_patterns(entries)])
        lists.bulk_import(session, OWNER, policy.WHITE, patterns, 0)
        lists.add(session, OWNER, policy.BLACK, addresses.parse_pattern(BLACKLISTED), "", 0)
    if held:
        _hold(engine, held)
    engine.dispose()
    return home


def _hold(engine: object, count: int) -> None:
    """`count` held messages, rows and bytes, as deliveries would have left them."""
    from sqlalchemy import insert

    from crtool.store.engine import transaction
    from crtool.store.models import Pending, PendingChunk

    now = int(time.time())
    with transaction(engine) as session:  # type: ignore[arg-type]
        for start in range(0, count, 5000):
            ids = [f"b{i:07d}" for i in range(start, min(count, start + 5000))]
            session.execute(insert(Pending), [dict(
                id=pid, owner=OWNER, sender=f"s{pid}@remote.test",
                sender_key=f"s{pid}@remote.test", recipient=OWNER, from_header=f"s{pid}",
                subject=f"message {pid}", message_id="", received_at=now - i, size=200,
                digest=f"{pid:0>64}", mta="qmail", status="held", reason="challenged",
                challenged_at=now - i) for i, pid in enumerate(ids, start)])
            session.execute(insert(PendingChunk), [
                dict(pending_id=pid, seq=0, owner=OWNER, data=b"Subject: x\n\nbody\n")
                for pid in ids])


class Server:
    """`crtool serve` for one home, started and stopped by the benchmark."""

    def __init__(self, home: Home, log: Path) -> None:
        self.home = home
        env = home.command_env()
        with open(log, "ab") as handle:
            self.process = subprocess.Popen(
                [CRTOOL, "--home", str(home.home), "serve"], stdin=subprocess.DEVNULL,
                stdout=handle, stderr=handle, env=env)
        deadline = time.monotonic() + 60
        while "listening on" not in log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"crtool serve did not start: {log.read_text()[-500:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
