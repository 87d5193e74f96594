"""Helpers of the fault tests: a SQLite home set up by `crtool init`, deliveries run the way
qmail-local runs them (optionally through the crash wrapper), the atomic sendmail stand-in's
outbox, and the figures file the lead quotes."""

from __future__ import annotations

import email
import email.policy
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from tests.support import Mailbox, crtool_executable, no_autostart, qmail_env

HERE = Path(__file__).resolve().parent
CRASHPOINT = HERE / "crashpoint.py"
SENDMAIL = HERE / "sendmail_standin.py"
TEMPFAIL = 111


def make_home(tmp_path: Path, **settings: str | int) -> Mailbox:
    """alice@example.test on SQLite with the atomic sendmail stand-in, its ~/.qmail and
    ~/.qmail-default installed; `settings` replace
    lines of config.toml (strings quoted, numbers bare). tmp_path/alice may exist already
    (a mount point)."""
    user_home = tmp_path / "alice"
    user_home.mkdir(mode=0o755, exist_ok=True)
    box = Mailbox(user_home=user_home,
                  database_url=f"sqlite:///{user_home / '.crtool' / 'crtool.db'}")
    box.ok("init", "--address", box.address, "--maildir", str(box.maildir),
           "--sendmail", str(SENDMAIL), "--install")
    no_autostart(box.home)
    if settings:
        set_config(box, **settings)
    return box


def set_config(box: Mailbox, **settings: str | int) -> None:
    """Rewrite config.toml with these settings changed (or added)."""
    path = box.home / "config.toml"
    lines = [line for line in path.read_text().splitlines()
             if line.split("=", 1)[0].strip() not in settings]
    for name, value in settings.items():
        lines.append(f"{name} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Run:
    returncode: int
    stderr: bytes


def deliver(box: Mailbox, data: bytes | Path, sender: str, recipient: str | None = None,
            *, crash_at: str = "", kill_after: float | None = None, locklog: str = "",
            extra_env: dict[str, str] | None = None, timeout: float = 300) -> Run:
    """One `crtool deliver` as qmail-local starts it (its environment, in $HOME, stdin a
    seekable file). With `crash_at` or `locklog` it runs through the crash wrapper; with
    `kill_after` the test SIGKILLs it after that many seconds if it is still running."""
    recipient = recipient or box.address
    env = qmail_env(sender, recipient, box.user_home)
    env["CRTOOL_TEST_OUTBOX"] = str(box.outbox.path)
    if crash_at:
        env["CRTOOL_TEST_CRASH_AT"] = crash_at
    if locklog:
        env["CRTOOL_TEST_LOCKLOG"] = locklog
    env.update(extra_env or {})
    if crash_at or locklog:
        argv = [sys.executable, str(CRASHPOINT), "deliver"]
    else:
        argv = [crtool_executable(), "deliver"]
    if isinstance(data, Path):
        stdin_path = data
    else:
        stdin_path = box.user_home / f".stdin-{os.getpid()}-{id(data)}-{os.urandom(4).hex()}"
        stdin_path.write_bytes(data)
    try:
        with open(stdin_path, "rb") as stdin:
            proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=env, cwd=box.user_home)
            try:
                _, err = proc.communicate(timeout=kill_after if kill_after is not None
                                          else timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
    finally:
        if not isinstance(data, Path):
            stdin_path.unlink()
    return Run(proc.returncode, err)


def sent(box: Mailbox) -> list[EmailMessage]:
    """Every message the sendmail stand-in accepted (whole files only)."""
    out = []
    for path in sorted(box.outbox.path.glob("*.eml")) if box.outbox.path.exists() else []:
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        out.append(parsed)  # type: ignore[arg-type]
    return out


def held(box: Mailbox) -> list[dict[str, object]]:
    listed: list[dict[str, object]] = json.loads(
        box.ok("pending", "list", "--json", "--limit", "100000"))
    return listed


def integrity(box: Mailbox) -> str:
    """PRAGMA integrity_check of the SQLite database: "ok" when sound."""
    connection = sqlite3.connect(box.home / "crtool.db")
    try:
        return "; ".join(row[0] for row in connection.execute("PRAGMA integrity_check"))
    finally:
        connection.close()


def maildir_files(box: Mailbox) -> list[Path]:
    new = box.maildir / "new"
    return sorted(new.iterdir()) if new.exists() else []


def write_figures(tmp_path: Path, name: str, figures: dict[str, object]) -> None:
    """Print the figures (pytest -s shows them) and keep them as JSON beside the test's
    temporary directory, for the lead to quote."""
    line = json.dumps({name: figures}, sort_keys=True)
    print(f"\nFIGURES {line}")
    target = Path(os.environ.get("CRTOOL_FIGURES_DIR", tmp_path.parent))
    target.mkdir(parents=True, exist_ok=True)
    (target / f"figures-{name}.json").write_text(json.dumps(figures, indent=2, sort_keys=True))


def seed_old_pending(box: Mailbox, count: int, age: int, batch: int = 5000,
                     now: int | None = None, prefix: str = "o") -> list[str]:
    """`count` held messages received `age` seconds before `now` (default: the real time),
    written straight into the database through crtool's own table definitions: the purge
    tests need a queue that took weeks. Returns their ids, which start with `prefix`."""
    import time

    from sqlalchemy import insert

    from crtool.store.engine import make_engine, transaction
    from crtool.store.models import Pending, PendingChunk

    engine = make_engine(box.database_url)
    received = (int(time.time()) if now is None else now) - age
    seeded: list[str] = []
    try:
        for start in range(0, count, batch):
            ids = [f"{prefix}{n:07d}" for n in range(start, min(start + batch, count))]
            seeded += ids
            with transaction(engine) as session:
                session.execute(insert(Pending), [dict(
                    id=i, owner=box.address, sender="old@remote.test",
                    sender_key="old@remote.test", recipient=box.address, from_header="",
                    subject="old", message_id="", received_at=received, size=20,
                    digest=f"{i:0>64}", mta="qmail", status="held", reason="challenged",
                    challenged_at=received, released_at=None) for i in ids])
                session.execute(insert(PendingChunk), [
                    dict(pending_id=i, seq=0, owner=box.address, data=b"Subject: old\n\nold\n")
                    for i in ids])
    finally:
        engine.dispose()
    return seeded


def lock_figures(path: Path) -> list[dict[str, object]]:
    """The lines the crash wrapper's lock recorder wrote, one per process."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
