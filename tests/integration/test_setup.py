"""Setting up crtool must neither hand another user root's pen nor bounce mail: `init` refuses a
HOME that is a link or someone else's and never writes through a planted link, files that hold
mail or secrets are 0600, config values cannot add settings, the owner's address is a plain
address, the dot-qmail lines are printed and installed as qmail reads them, and a database that
is gone is restored, never silently replaced by an empty one."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import CAPTURE_SENDMAIL, Mailbox, crtool_executable, message

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="handing files to another uid needs root")
MALLORY = 12345
STRANGER = "bob@remote.test"


def crtool(home: Path, *args: str, user_home: Path) -> subprocess.CompletedProcess[bytes]:
    env = {"HOME": str(user_home), "PATH": "/usr/bin:/bin"}
    return subprocess.run([crtool_executable(), "--home", str(home), *args],
                          capture_output=True, env=env, timeout=120, check=False)


def initialised(tmp_path: Path, user: str) -> tuple[Path, Path]:
    """A user's home directory and a crtool HOME in it made by `init`, as that user would."""
    user_home = tmp_path / user
    user_home.mkdir()
    home = user_home / ".crtool"
    result = crtool(home, "init", "--address", f"{user}@example.test",
                    "--maildir", str(user_home / "Maildir"), user_home=user_home)
    assert result.returncode == 0, result.stderr
    return user_home, home


def snapshot(*roots: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every entry under `roots` (not following links): its mode and content or link target."""
    found: dict[str, tuple[int, bytes | str]] = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                found[str(path)] = (info.st_mode, os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                found[str(path)] = (info.st_mode, path.read_bytes())
            else:
                found[str(path)] = (info.st_mode, "")
    return found


def chown_tree(root: Path, uid: int) -> None:
    for path in [root, *root.rglob("*")]:
        os.lchown(path, uid, uid)


@pytest.fixture
def roots_file(tmp_path: Path) -> Path:
    """A file of root's that a planted link points at."""
    secret = tmp_path / "root-owned" / "authorized_keys"
    secret.parent.mkdir(mode=0o700)
    secret.write_text("root's own line\n")
    return secret


# HOME that is not ours, links planted in it ----------------------------------------------

@needs_root
def test_root_init_refuses_a_home_of_another_user_and_writes_nothing(
        tmp_path: Path, roots_file: Path) -> None:
    user_home = tmp_path / "mallory"
    home = user_home / ".crtool"
    home.mkdir(parents=True)
    for name in ("config.toml.tmp", "keys.tmp", "keys", "crtool.db", "crtool.db-wal"):
        (home / name).symlink_to(roots_file)
    chown_tree(user_home, MALLORY)
    before = snapshot(tmp_path)
    result = crtool(home, "init", "--address", "mallory@example.test",
                    "--maildir", str(user_home / "Maildir"), user_home=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"crtool: error: HOME {home} belongs to uid {MALLORY}, not to "
                             f"this user (0): run crtool as its owner\n").encode()
    assert snapshot(tmp_path) == before


@needs_root
def test_root_keys_rotate_in_another_users_home_writes_nothing(
        tmp_path: Path, roots_file: Path) -> None:
    user_home, home = initialised(tmp_path, "mallory")
    for name in ("keys.tmp", ".keys.tmp"):
        (home / name).symlink_to(roots_file)
    chown_tree(user_home, MALLORY)
    before = snapshot(tmp_path)
    result = crtool(home, "keys", "rotate", user_home=tmp_path)
    assert result.returncode == 2 and b"belongs to uid 12345" in result.stderr, result.stderr
    assert snapshot(tmp_path) == before


def test_init_refuses_a_home_that_is_a_link(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    user_home = tmp_path / "alice"
    user_home.mkdir()
    (user_home / ".crtool").symlink_to(elsewhere)
    before = snapshot(tmp_path)
    result = crtool(user_home / ".crtool", "init", "--address", "alice@example.test",
                    user_home=user_home)
    assert result.returncode == 2
    assert b"is a symbolic link" in result.stderr and result.stderr.count(b"\n") == 1
    assert snapshot(tmp_path) == before


def test_init_never_reads_or_writes_through_a_linked_config(tmp_path: Path,
                                                           roots_file: Path) -> None:
    user_home = tmp_path / "alice"
    home = user_home / ".crtool"
    home.mkdir(parents=True, mode=0o700)
    (home / "config.toml").symlink_to(roots_file)
    before = snapshot(tmp_path)
    result = crtool(home, "init", "--address", "alice@example.test", user_home=user_home)
    assert result.returncode == 2 and b"config.toml is a symbolic link" in result.stderr
    assert snapshot(tmp_path) == before


def test_keys_rotate_replaces_the_ring_and_leaves_planted_links_alone(
        tmp_path: Path, roots_file: Path) -> None:
    user_home, home = initialised(tmp_path, "alice")
    (home / "keys.tmp").symlink_to(roots_file)
    assert crtool(home, "keys", "rotate", user_home=user_home).returncode == 0
    assert roots_file.read_text() == "root's own line\n"
    assert (home / "keys.tmp").is_symlink()
    ring = [line for line in (home / "keys").read_text().splitlines()
            if not line.startswith("#")]
    assert len(ring) == 2
    assert sorted(p.name for p in home.iterdir() if p.name.endswith(".tmp")) == ["keys.tmp"]


# modes ---------------------------------------------------------------------------------

def test_files_holding_mail_or_secrets_are_0600(tmp_path: Path) -> None:
    user_home = tmp_path / "alice"
    user_home.mkdir()
    box = Mailbox(user_home=user_home,
                  database_url=f"sqlite:///{user_home / '.crtool' / 'crtool.db'}")
    old_umask = os.umask(0o022)
    try:
        box.init()
        box.ok("whitelist", "add", "friend@example.org")
        assert box.deliver(message("friend@example.org"), "friend@example.org").returncode == 0
        assert box.deliver(message(STRANGER), STRANGER).returncode == 99
        # While a connection is open SQLite keeps the -wal and -shm files: it makes them
        # with the database's mode.
        connection = sqlite3.connect(box.home / "crtool.db")
        connection.execute("SELECT count(*) FROM address_entries").fetchall()
        names = ("config.toml", "keys", "crtool.db", "crtool.db-wal", "crtool.db-shm",
                 "delivered.tally")
        modes = {name: stat.S_IMODE((box.home / name).stat().st_mode) for name in names}
        connection.close()
    finally:
        os.umask(old_umask)
    assert modes == dict.fromkeys(names, 0o600)
    assert stat.S_IMODE(box.home.stat().st_mode) == 0o700
    box.outbox.drain(1)


# config values -------------------------------------------------------------------------

def test_a_line_break_in_a_value_cannot_add_a_setting(tmp_path: Path) -> None:
    user_home = tmp_path / "alice"
    user_home.mkdir()
    home = user_home / ".crtool"
    maildir = str(user_home / 'Mail"\nmta = "postfix"\ndelivery = "maildir')
    sendmail = f'{CAPTURE_SENDMAIL}\nauthserv_id = "evil"\r\x1b\\'
    result = crtool(home, "init", "--address", "alice@example.test", "--maildir", maildir,
                    "--sendmail", sendmail, user_home=user_home)
    assert result.returncode == 0, result.stderr
    with open(home / "config.toml", "rb") as handle:
        config = tomllib.load(handle)
    assert config["maildir"] == maildir and config["sendmail"] == sendmail
    assert config["mta"] == "qmail" and config["delivery"] == "continue"
    assert config["authserv_id"] == ""
    # And crtool reads it back as the same settings.
    assert crtool(home, "whitelist", "list", user_home=user_home).returncode == 0


@pytest.mark.parametrize("address", ["alice@example.test\nmta = \"postfix\"", "*@example.com",
                                     "@example.com", "*@*.example.com", "alice@", "alice",
                                     "ali ce@example.test", "a?b@example.test",
                                     "alice@exa_mple.test", "<alice@example.test>"])
def test_init_wants_a_plain_address(tmp_path: Path, address: str) -> None:
    user_home = tmp_path / "alice"
    user_home.mkdir()
    home = user_home / ".crtool"
    result = crtool(home, "init", "--address", address, user_home=user_home)
    assert result.returncode == 2
    assert result.stderr.startswith(b"crtool: error: not a plain address")
    assert not (home / "config.toml").exists() and not (home / "crtool.db").exists()


def test_init_takes_an_ordinary_address(tmp_path: Path) -> None:
    user_home = tmp_path / "alice"
    user_home.mkdir()
    home = user_home / ".crtool"
    result = crtool(home, "init", "--address", "Alice.O'Neil+x@Mail.Example-1.test",
                    user_home=user_home)
    assert result.returncode == 0, result.stderr


# the command position ------------------------------------------------------------------

def test_only_the_command_position_makes_a_delivery(mailbox: Mailbox) -> None:
    # `deliver` as a pattern is no delivery: a usage error is 2, as for any other command.
    bogus = mailbox.run("whitelist", "add", "deliver", "--bogus")
    assert bogus.returncode == 2, bogus.stderr
    assert mailbox.run("pending", "show", "deliver", "--bogus").returncode == 2
    # A delivery line crtool cannot parse is still a retry.
    assert mailbox.run("deliver", "--bogus").returncode == 75
    assert mailbox.run("--debug", "deliver", "--bogus").returncode == 75


# missing database ----------------------------------------------------------------------

def _empty_the_database(box: Mailbox) -> None:
    """The database gone: the SQLite file removed, or every table of the PostgreSQL schema."""
    if box.database_url.startswith("sqlite"):
        Path(box.database_url.removeprefix("sqlite:///")).unlink()
        return
    from sqlalchemy import MetaData, create_engine

    engine = create_engine(box.database_url)
    metadata = MetaData()
    metadata.reflect(engine)
    metadata.drop_all(engine)
    engine.dispose()


def test_init_refuses_a_home_whose_database_is_gone(mailbox: Mailbox) -> None:
    mailbox.ok("whitelist", "add", "friend@example.org")
    _empty_the_database(mailbox)
    refused = mailbox.run("init")
    assert refused.returncode == 2
    said = refused.stderr.decode()
    assert said.count("\n") == 1 and "restore the database from a backup" in said
    assert "--new-database" in said
    if mailbox.database_url.startswith("sqlite"):
        assert not (mailbox.home / "crtool.db").exists()
        gone = mailbox.run("whitelist", "list")
        assert gone.returncode == 4 and b"restore it from a backup" in gone.stderr
        assert b"crtool init" not in gone.stderr
    # The owner who means it gets an empty database.
    mailbox.ok("init", "--new-database")
    assert mailbox.ok("whitelist", "list") == ""
    assert mailbox.run("whitelist", "check", "friend@example.org").returncode == 1


def test_db_upgrade_never_makes_a_missing_database(tmp_path: Path) -> None:
    user_home, home = initialised(tmp_path, "alice")
    (home / "crtool.db").unlink()
    result = crtool(home, "db", "upgrade", user_home=user_home)
    assert result.returncode == 4 and b"restore it from a backup" in result.stderr
    assert not (home / "crtool.db").exists()


def test_a_database_that_cannot_be_opened_is_named_with_the_cause(tmp_path: Path) -> None:
    user_home = tmp_path / "alice"
    user_home.mkdir()
    box = Mailbox(user_home=user_home,
                  database_url=f"sqlite:///{user_home / '.crtool' / 'crtool.db'}")
    box.init()
    db = box.home / "crtool.db"
    db.unlink()
    db.mkdir()
    result = box.deliver(message(STRANGER), STRANGER)
    assert result.returncode == 111
    assert result.stderr == (f"crtool: database {db}: unable to open database file (it is a "
                             "directory, not a file)\n").encode()
    listing = box.run("whitelist", "list")
    assert listing.returncode == 4 and f"database {db}: ".encode() in listing.stderr


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path lies under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="crtool-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@needs_root
def test_a_database_without_permission_names_the_file_and_why(open_tmp: Path) -> None:
    """`chmod 000` on the database, as its owner (root may open anything, so the check runs
    in a child that has become another user, with everything it needs already imported)."""
    from crtool import cli, commands  # noqa: F401 - loaded before the child drops root
    from crtool.store import engine, lists, pending  # noqa: F401

    user_home = open_tmp / "alice"
    user_home.mkdir()
    box = Mailbox(user_home=user_home,
                  database_url=f"sqlite:///{user_home / '.crtool' / 'crtool.db'}")
    box.init()
    # Load the code the command runs while still root (the venv may be under /root).
    assert cli.main(["--home", str(box.home), "whitelist", "list"]) == 0
    db = box.home / "crtool.db"
    chown_tree(user_home, MALLORY)
    db.chmod(0o000)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        code = 99
        try:
            os.setgid(MALLORY)
            os.setuid(MALLORY)
            sys.stderr = os.fdopen(write_end, "w")
            code = cli.main(["--home", str(box.home), "whitelist", "list"])
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as said:
        stderr = said.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 4, stderr
    assert stderr == (f"crtool: error: database {db}: unable to open database file "
                      f"(permission denied: mode 0, owner uid {MALLORY}, and crtool runs as "
                      f"uid {MALLORY})\n").encode()


# the MTA's files -----------------------------------------------------------------------

def qmail_box(tmp_path: Path, *extra: str) -> tuple[Mailbox, subprocess.CompletedProcess[bytes]]:
    user_home = tmp_path / "alice"
    user_home.mkdir(mode=0o755, exist_ok=True)
    box = Mailbox(user_home=user_home,
                  database_url=f"sqlite:///{user_home / '.crtool' / 'crtool.db'}")
    result = box.run("init", "--address", box.address, "--maildir", str(box.maildir),
                     "--sendmail", str(CAPTURE_SENDMAIL), *extra)
    assert result.returncode == 0, result.stderr
    return box, result


def test_init_prints_the_qmail_lines_at_column_0(tmp_path: Path) -> None:
    box, result = qmail_box(tmp_path)
    printed = result.stdout.decode().splitlines()
    command = f"|{crtool_executable()} deliver"
    assert printed[-2:] == [command, "./Maildir/"]
    assert not (box.user_home / ".qmail").exists()


def test_init_install_writes_both_dot_qmail_files(tmp_path: Path) -> None:
    box, result = qmail_box(tmp_path, "--install")
    expected = f"|{crtool_executable()} deliver\n./Maildir/\n"
    for name in (".qmail", ".qmail-default"):
        path = box.user_home / name
        assert path.read_text() == expected
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert f"{path}: written".encode() in result.stdout
    assert box.ok("doctor") == "no problems found\n"
    # Once more changes nothing and makes no backup.
    again = box.ok("init", "--install")
    assert again.count(": already in place") == 2
    assert sorted(p.name for p in box.user_home.glob(".qmail*")) == [".qmail", ".qmail-default"]


def test_install_keeps_the_owners_lines_after_crtools_and_a_backup(tmp_path: Path) -> None:
    user_home = tmp_path / "alice"
    user_home.mkdir(mode=0o755)
    old = "# mine\n&alice@elsewhere.test\n./Mail/\n"
    (user_home / ".qmail").write_text(old)
    # What an older init printed, pasted with its indentation: qmail forwards to "  ./Maildir/".
    pasted = "  |/old/bin/crtool deliver\n  ./Maildir/\n"
    (user_home / ".qmail-default").write_text(pasted)
    box, _ = qmail_box(tmp_path, "--install")
    line = f"|{crtool_executable()} deliver"
    assert (user_home / ".qmail").read_text() == f"{line}\n{old}"
    assert (user_home / ".qmail-default").read_text() == f"{line}\n./Maildir/\n"
    backups = {p.name.split(".crtool-backup-")[0]: p.read_text()
               for p in user_home.glob(".qmail*.crtool-backup-*")}
    assert backups == {".qmail": old, ".qmail-default": pasted}
    assert box.ok("doctor") == "no problems found\n"


def test_install_for_postfix_writes_forward_alone(tmp_path: Path) -> None:
    user_home = tmp_path / "alice"
    user_home.mkdir(mode=0o755)
    (user_home / ".forward").write_text("alice@elsewhere.test\n")
    box, result = qmail_box(tmp_path, "--mta", "postfix", "--install")
    assert (user_home / ".forward").read_text() == (
        f'"|{crtool_executable()} deliver --mta postfix"\n')
    assert b"its lines were not kept" in result.stdout
    [backup] = user_home.glob(".forward.crtool-backup-*")
    assert backup.read_text() == "alice@elsewhere.test\n"
    assert box.ok("doctor") == "no problems found\n"


def test_install_refuses_a_home_path_no_line_can_hold(tmp_path: Path) -> None:
    user_home = tmp_path / "alice"
    user_home.mkdir()
    home = user_home / "cr\ntool"
    result = crtool(home, "init", "--address", "alice@example.test", "--install",
                    user_home=user_home)
    assert result.returncode == 2 and b"line break" in result.stderr
    assert not (user_home / ".qmail").exists()
