"""`crtool doctor` names each broken part of an installation in one line and exits non-zero;
a healthy one passes. Each fault is made real in a fresh home."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.common import make_home, set_config
from tests.support import Mailbox


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
