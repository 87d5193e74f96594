"""A broken environment is a temporary failure (contract §3): exit 111 with one clear line on
stderr, nothing half-written, and the same delivery succeeds once the fault is gone.

Each fault is made real: the database file moved away, overwritten, mounted read-only or locked
by another connection, a full tmpfs, the key ring and config removed or loosened, and sendmail
missing, failing or hanging. The read-only and disk-full cases mount file systems, which CI can
do because it runs as root.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.faults.common import (
    TEMPFAIL,
    Run,
    deliver,
    held,
    integrity,
    maildir_files,
    make_home,
    sent,
    set_config,
)
from tests.support import Mailbox

STRANGER = "bob@remote.test"
FRIEND = "friend@friends.test"
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="mounting a file system needs root (CI is)")


def letter(tag: str, size: int = 0) -> bytes:
    return (f"From: {STRANGER}\nSubject: {tag}\nMessage-ID: <{tag}@remote.test>\n\n"
            f"Hello.\n{'x' * size}\n").encode()


def assert_tempfail(run: Run, *words: str) -> None:
    """Exit 111 and exactly one line, naming the fault, never a traceback."""
    assert run.returncode == TEMPFAIL, (run.returncode, run.stderr)
    text = run.stderr.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert text.startswith("crtool: ") and "Traceback" not in text, text
    for word in words:
        assert word in text, (word, text)


def assert_nothing_written(box: Mailbox) -> None:
    assert held(box) == []
    assert maildir_files(box) == []
    assert list((box.maildir / "tmp").iterdir()) == []
    assert sent(box) == []


def assert_retry_holds_once(box: Mailbox, data: bytes) -> None:
    """The retry qmail makes once the fault is gone: held once, challenged once."""
    retry = deliver(box, data, STRANGER)
    assert retry.returncode == 99, retry.stderr
    assert [item["subject"] for item in held(box)] == [data.split(b"\n")[1][9:].decode()]
    assert [str(m["To"]) for m in sent(box)] == [STRANGER]
    assert integrity(box) == "ok"


@contextmanager
def mounted_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                    str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


# The database ---------------------------------------------------------------------------------

def database_files(box: Mailbox) -> list[Path]:
    db = box.home / "crtool.db"
    return [p for p in (db, db.with_name("crtool.db-wal"), db.with_name("crtool.db-shm"))
            if p.exists()]


def test_missing_database_is_a_tempfail_and_never_recreated(tmp_path: Path) -> None:
    box = make_home(tmp_path)
    aside = tmp_path / "aside"
    aside.mkdir()
    for path in database_files(box):
        path.rename(aside / path.name)
    data = letter("missing")
    assert_tempfail(deliver(box, data, STRANGER), "database", "missing")
    assert not (box.home / "crtool.db").exists(), "deliver must never create the database"
    for path in aside.iterdir():
        path.rename(box.home / path.name)
    assert_nothing_written(box)
    assert_retry_holds_once(box, data)


@needs_root
def test_read_only_database_is_a_tempfail(tmp_path: Path) -> None:
    box = make_home(tmp_path)
    data = letter("readonly")
    subprocess.run(["mount", "--bind", str(box.home), str(box.home)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(box.home)], check=True)
        assert_tempfail(deliver(box, data, STRANGER), "database")
    finally:
        subprocess.run(["umount", str(box.home)], check=True)
    assert_nothing_written(box)
    assert_retry_holds_once(box, data)


def test_corrupt_database_is_a_tempfail(tmp_path: Path) -> None:
    box = make_home(tmp_path)
    db = box.home / "crtool.db"
    good = db.read_bytes()
    db.write_bytes(bytes(range(256)) * (len(good) // 256 + 1))
    data = letter("corrupt")
    assert_tempfail(deliver(box, data, STRANGER), "database", "not a database")
    db.write_bytes(good)
    assert_nothing_written(box)
    assert_retry_holds_once(box, data)


def test_database_locked_past_the_timeout_is_a_tempfail(tmp_path: Path) -> None:
    box = make_home(tmp_path, database_timeout="1s")
    blocker = sqlite3.connect(box.home / "crtool.db", isolation_level=None)
    data = letter("locked")
    try:
        blocker.execute("BEGIN IMMEDIATE")
        assert_tempfail(deliver(box, data, STRANGER), "database is locked")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert_nothing_written(box)
    assert_retry_holds_once(box, data)


# The disk -------------------------------------------------------------------------------------

def fill(directory: Path) -> Path:
    """Write zeros until the file system is full; returns the filler file."""
    filler = directory / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


@needs_root
def test_full_disk_under_the_database_is_a_tempfail(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "alice", "8m"):
        box = make_home(tmp_path)
        data = letter("full", 300_000)
        message = tmp_path / "message"
        message.write_bytes(data)
        filler = fill(box.user_home)
        assert_tempfail(deliver(box, message, STRANGER), "disk", "full")
        filler.unlink()
        assert_nothing_written(box)
        retry = deliver(box, message, STRANGER)
        assert retry.returncode == 99, retry.stderr
        assert [m["subject"] for m in held(box)] == ["full"]
        assert integrity(box) == "ok"


@needs_root
def test_full_disk_under_the_maildir_is_a_tempfail_and_leaves_no_part(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "mail", "1m") as mail:
        box = make_home(tmp_path, delivery="maildir", maildir=str(mail / "Maildir"))
        box.ok("whitelist", "add", FRIEND)
        data = letter("friendly", 2_000_000)
        message = tmp_path / "message"
        message.write_bytes(data)
        run = deliver(box, message, FRIEND)
        assert_tempfail(run, "No space left on device")
        assert list((mail / "Maildir" / "tmp").iterdir()) == []
        assert list((mail / "Maildir" / "new").iterdir()) == []
        set_config(box, maildir=str(tmp_path / "Maildir"))  # the owner makes room elsewhere
        assert deliver(box, message, FRIEND).returncode == 99
        assert [p.read_bytes().split(b"\n", 2)[2] for p in
                (tmp_path / "Maildir" / "new").iterdir()] == [data]


# Keys and config ------------------------------------------------------------------------------

def test_missing_key_ring_is_a_tempfail(tmp_path: Path) -> None:
    box = make_home(tmp_path)
    keys = box.home / "keys"
    keys.rename(tmp_path / "keys")
    data = letter("nokeys")
    assert_tempfail(deliver(box, data, STRANGER), "key ring", "missing")
    (tmp_path / "keys").rename(keys)
    assert_nothing_written(box)
    assert_retry_holds_once(box, data)


def test_key_ring_readable_by_others_is_a_tempfail(tmp_path: Path) -> None:
    box = make_home(tmp_path)
    keys = box.home / "keys"
    keys.chmod(0o644)
    data = letter("loosekeys")
    assert_tempfail(deliver(box, data, STRANGER), "key ring", "readable by others")
    keys.chmod(0o600)
    assert_nothing_written(box)
    assert_retry_holds_once(box, data)


def test_unreadable_config_is_a_tempfail(tmp_path: Path) -> None:
    box = make_home(tmp_path)
    config = box.home / "config.toml"
    config.rename(tmp_path / "config.toml")
    if ROOT:
        config.mkdir()  # root reads any file, but not a directory as a file
    else:
        config.write_text("address = 'alice@example.test'\n")
        config.chmod(0)
    data = letter("noconfig")
    assert_tempfail(deliver(box, data, STRANGER), "config", "unreadable")
    if config.is_dir():
        config.rmdir()
    else:
        config.unlink()
    (tmp_path / "config.toml").rename(config)
    assert_nothing_written(box)
    assert_retry_holds_once(box, data)


@pytest.mark.parametrize(("text", "words"), [
    ("address = [\n", ("not valid TOML",)),
    ('address = "alice@example.test"\nmta = "smtp"\n', ("'mta'", "must be one of")),
    ('address = "alice@example.test"\nconfirm_ttl = "soon"\n', ("not a duration",)),
    ('maildir = "/tmp"\n', ("'address' is missing",)),
])
def test_invalid_config_is_a_tempfail(tmp_path: Path, text: str, words: tuple[str, ...]) -> None:
    box = make_home(tmp_path)
    config = box.home / "config.toml"
    good = config.read_text()
    config.write_text(text)
    data = letter("badconfig")
    assert_tempfail(deliver(box, data, STRANGER), "config", *words)
    config.write_text(good)
    assert_nothing_written(box)
    assert_retry_holds_once(box, data)


# sendmail -------------------------------------------------------------------------------------

def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def sendmail_fault_then_retry(box: Mailbox, data: bytes, *words: str) -> None:
    """The hold is committed before sendmail runs, so the fault leaves it held once with its
    challenge queued; the retry sends that challenge and holds nothing new."""
    assert_tempfail(deliver(box, data, STRANGER), "sendmail", *words)
    assert len(held(box)) == 1
    assert sent(box) == []
    set_config(box, sendmail=str(Path(__file__).parent / "sendmail_standin.py"))
    assert_retry_holds_once(box, data)


def test_missing_sendmail_is_a_tempfail(tmp_path: Path) -> None:
    box = make_home(tmp_path, sendmail=str(tmp_path / "no" / "sendmail"))
    sendmail_fault_then_retry(box, letter("nosendmail"), "not found")


def test_failing_sendmail_is_a_tempfail(tmp_path: Path) -> None:
    failing = script(tmp_path / "sendmail", "cat >/dev/null\necho 'queue is full' >&2\nexit 75\n")
    box = make_home(tmp_path, sendmail=str(failing))
    sendmail_fault_then_retry(box, letter("failing"), "exited 75", "queue is full")


def test_hanging_sendmail_is_cut_off_by_its_own_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    hanging = script(tmp_path / "sendmail", f"echo $$ > {pidfile}\nexec sleep 600\n")
    box = make_home(tmp_path, sendmail=str(hanging), sendmail_timeout="2s")
    sendmail_fault_then_retry(box, letter("hanging"), "did not finish within 2 s")
    # The hanging sendmail was killed, not left behind.
    assert not Path(f"/proc/{pidfile.read_text().strip()}").exists()


def test_default_sendmail_timeout_is_well_under_postfix_command_limit(tmp_path: Path) -> None:
    """Postfix kills a pipe command after 1,000 s (command_time_limit); crtool gives up on
    sendmail, and on the database lock, long before, so its own one-line tempfail is what the
    MTA logs."""
    from crtool.config import load_settings

    box = make_home(tmp_path)
    settings = load_settings(box.home)
    assert settings.sendmail_timeout + settings.database_timeout <= 120
