"""`crtool doctor` names each broken part of an installation in one line and exits non-zero;
a healthy one passes. Each fault is made real in a fresh home."""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.common import make_home, set_config
from tests.support import Mailbox, crtool_executable


def doctor(box: Mailbox) -> tuple[int, list[str]]:
    result = box.run("doctor", "--json")
    assert result.stderr == b"", result.stderr
    return result.returncode, json.loads(result.stdout)


def test_a_fresh_installation_is_healthy(tmp_path: Path) -> None:
    box = make_home(tmp_path)
    assert doctor(box) == (0, [])
    assert box.ok("doctor") == "no problems found\n"


def corrupt(box: Mailbox) -> None:
    db = box.home / "crtool.db"
    data = bytearray(db.read_bytes())
    # Leave the header (so SQLite opens it) and damage every page after the first two.
    for offset in range(8192, len(data), 4096):
        data[offset:offset + 64] = b"\xa5" * 64
    db.write_bytes(bytes(data))


def old_schema(box: Mailbox) -> None:
    connection = sqlite3.connect(box.home / "crtool.db")
    connection.execute("UPDATE alembic_version SET version_num = 'ancient'")
    connection.commit()
    connection.close()


def bad_template(box: Mailbox) -> None:
    (box.home / "templates").mkdir()
    (box.home / "templates" / "challenge.txt").write_text("Hello {{ no_such_thing }}\n")


FAULTS: dict[str, tuple[Callable[[Mailbox], object], tuple[str, ...]]] = {
    "home_open": (lambda b: b.home.chmod(0o755), ("HOME", "mode 755", "chmod 700")),
    "keys_open": (lambda b: (b.home / "keys").chmod(0o640), ("key ring", "mode 640")),
    "keys_missing": (lambda b: (b.home / "keys").unlink(), ("key ring", "missing")),
    "keys_foreign": (lambda b: __import__("os").chown(b.home / "keys", 4321, -1),
                     ("key ring", "uid 4321")),
    "config_invalid": (lambda b: (b.home / "config.toml").write_text("address = [\n"),
                       ("config", "not valid TOML")),
    "config_value": (lambda b: set_config(b, mta="smtp"), ("'mta'", "must be one of")),
    "database_open": (lambda b: (b.home / "crtool.db").chmod(0o644),
                      ("database", "mode 644", "chmod 600")),
    "database_missing": (lambda b: (b.home / "crtool.db").unlink(), ("database", "missing")),
    "database_corrupt": (corrupt, ("database", "malformed")),
    "schema_old": (old_schema, ("schema", "ancient", "crtool db upgrade")),
    "sendmail_missing": (lambda b: set_config(b, sendmail="/no/such/sendmail -t"),
                         ("sendmail /no/such/sendmail not found",)),
    "template_broken": (bad_template, ("challenge template", "no_such_thing")),
}


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_each_problem_is_one_line_and_a_failing_exit(tmp_path: Path, name: str) -> None:
    box = make_home(tmp_path)
    breaker, words = FAULTS[name]
    breaker(box)
    code, found = doctor(box)
    assert code == 4
    assert len(found) == 1, found
    for word in words:
        assert word in found[0], (word, found)
    assert "\n" not in found[0]


def test_every_problem_is_listed_in_one_run(tmp_path: Path) -> None:
    box = make_home(tmp_path)
    box.home.chmod(0o750)
    (box.home / "keys").chmod(0o644)
    set_config(box, sendmail="/no/such/sendmail")
    old_schema(box)
    code, found = doctor(box)
    assert code == 4
    assert [line.split()[0] for line in found] == ["HOME", "key", "database", "sendmail"]
    text = box.run("doctor")
    assert text.returncode == 4 and text.stdout.decode().count("\n") == 4


def dotfile_problems(box: Mailbox, name: str, text: str) -> list[str]:
    (box.user_home / name).write_text(text)
    code, found = doctor(box)
    assert code == 4
    return found


def test_indented_dot_qmail_lines_are_reported(tmp_path: Path) -> None:
    box = make_home(tmp_path)
    # The lines as an older `init` printed them, pasted with their indentation.
    lines = (box.user_home / ".qmail-default").read_text().splitlines()
    found = dotfile_problems(box, ".qmail-default", "".join(f"  {line}\n" for line in lines))
    path = box.user_home / ".qmail-default"
    assert found == [
        f"{path} line 1 is indented: the MTA reads {lines[0]!r} as an address to forward to; "
        "start it at column 0",
        f"{path} line 2 is indented: the MTA reads './Maildir/' as an address to forward to; "
        "start it at column 0",
        f"{path} does not run crtool first (its first line is '  {lines[0]}'); run 'crtool "
        "init --install'"]


def test_missing_or_wrong_dot_qmail_files_are_reported(tmp_path: Path) -> None:
    box = make_home(tmp_path)
    (box.user_home / ".qmail").unlink()
    code, found = doctor(box)
    assert code == 4 and found == [
        f"{box.user_home / '.qmail'} is missing: qmail delivers the bare address without "
        "crtool; run 'crtool init --install'"]
    path = box.user_home / ".qmail-default"
    right = path.read_text()
    assert dotfile_problems(box, ".qmail-default", "./Maildir/\n" + right)[1:] == [
        f"{path} does not run crtool first (its first line is './Maildir/'); run 'crtool "
        "init --install'"]
    found = dotfile_problems(box, ".qmail-default", "|crtool deliver\n./Maildir/\n")[1:]
    assert len(found) == 1 and "names crtool without an absolute path" in found[0]
    found = dotfile_problems(box, ".qmail-default", "|/opt/old/bin/crtool deliver\n./Maildir/\n")
    assert found[1:] == [f"{path} line 1 runs /opt/old/bin/crtool, not this crtool "
                         f"({crtool_executable()})"]
    found = dotfile_problems(box, ".qmail-default", right.splitlines()[0] + "\n")
    assert found[1:] == [f"{path} has no line after crtool's to deliver whitelisted mail"]
    path.write_text(right)
    path.chmod(0o646)
    code, found = doctor(box)
    assert found[1:] == [f"{path} is writable by everyone: the MTA refuses it; chmod o-w it"]


def test_a_stale_serve_socket_is_reported(tmp_path: Path) -> None:
    box = make_home(tmp_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(box.home / "crtool.sock"))
    stale.close()
    code, found = doctor(box)
    assert code == 4 and found == [
        f"{box.home / 'crtool.sock'} is stale: no crtool serve answers on it; start crtool "
        "serve or remove the file"]
