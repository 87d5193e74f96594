"""The owner's commands: lists, the pending queue, keys, schema and stats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import Mailbox, confirm_address_of, crtool_executable, message


def test_whitelist_add_list_check_remove(mailbox: Mailbox) -> None:
    out = mailbox.ok("whitelist", "add", "Bob@Example.com", "@example.org", "*@*.corp.test",
                     "--note", "friends")
    assert out.splitlines() == ["added: bob@example.com", "added: @example.org",
                                "added: *@*.corp.test"]
    assert mailbox.ok("whitelist", "add", "bob@example.com") == "already listed: bob@example.com\n"
    listed = json.loads(mailbox.ok("whitelist", "list", "--json"))
    assert [(e["pattern"], e["kind"], e["note"]) for e in listed] == [
        ("*@*.corp.test", "subdomains", "friends"), ("@example.org", "domain", "friends"),
        ("bob@example.com", "exact", "friends")]
    check = mailbox.run("whitelist", "check", "x@mail.corp.test")
    assert check.returncode == 0 and b"*@*.corp.test" in check.stdout
    assert mailbox.run("whitelist", "check", "x@corp.test").returncode == 1
    assert mailbox.run("blacklist", "check", "bob@example.com").returncode == 1
    assert mailbox.ok("whitelist", "remove", "BOB@example.com") == "removed: bob@example.com\n"
    missing = mailbox.run("whitelist", "remove", "bob@example.com")
    assert missing.returncode == 3 and missing.stderr.count(b"\n") == 1


def test_bad_pattern_is_one_line_and_exit_2(mailbox: Mailbox) -> None:
    result = mailbox.run("whitelist", "add", "not a pattern")
    assert result.returncode == 2
    assert result.stderr.startswith(b"crtool: error: not a pattern")
    assert result.stderr.count(b"\n") == 1 and b"Traceback" not in result.stderr


def test_import_export_round_trip_from_stdin(mailbox: Mailbox) -> None:
    text = b"# friends\nbob@example.com\n\n@example.org  # the whole domain\nBOB@example.com\n"
    assert mailbox.ok("whitelist", "import", "-", input=text) == "imported: 2 new entries\n"
    assert mailbox.ok("whitelist", "export").splitlines() == ["@example.org", "bob@example.com"]


def test_import_with_a_bad_line_keeps_nothing(mailbox: Mailbox, tmp_path: Path) -> None:
    source = tmp_path / "list.txt"
    source.write_text("ok@example.com\nbad line here\n")
    result = mailbox.run("whitelist", "import", str(source))
    assert result.returncode == 2 and b"line 2" in result.stderr
    assert mailbox.ok("whitelist", "export") == ""


def test_million_line_import_in_bounded_memory(tmp_path: Path) -> None:
    """A million patterns in one transaction; the process stays small because it streams.
    Measured once, on the embedded default; PostgreSQL runs the same batched code."""
    box = Mailbox(user_home=tmp_path / "alice",
                  database_url=f"sqlite:///{tmp_path / 'alice' / '.crtool' / 'crtool.db'}")
    box.user_home.mkdir()
    box.init()
    source = tmp_path / "million.txt"
    with open(source, "w") as handle:
        for i in range(1_000_000):
            handle.write(f"user{i}@domain{i % 5000}.example\n")
    probe = ("import resource, subprocess, sys;"
             "r = subprocess.run(sys.argv[1:], capture_output=True);"
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
             " r.stdout.decode().strip())")
    out = subprocess.run([sys.executable, "-c", probe, crtool_executable(), "--home",
                          str(box.home), "whitelist", "import", str(source)],
                         capture_output=True, text=True, check=True, env=box.base_env())
    code, max_rss_kib, said = out.stdout.split(" ", 2)
    assert code == "0" and said.strip() == "imported: 1000000 new entries"
    assert int(max_rss_kib) < 150 * 1024, f"peak RSS {int(max_rss_kib) // 1024} MiB"
    assert box.run("whitelist", "check", "user999999@domain4999.example").returncode == 0


def test_pending_show_release_delete(mailbox: Mailbox) -> None:
    first = message("one@remote.test", subject="first")
    mailbox.deliver(first, "one@remote.test")
    mailbox.deliver(message("two@remote.test", subject="second"), "two@remote.test")
    mailbox.outbox.drain(2)
    held = {m["subject"]: m for m in json.loads(mailbox.ok("pending", "list", "--json"))}
    assert set(held) == {"first", "second"}
    table = mailbox.ok("pending", "list")
    assert "first" in table and "one@remote.test" in table
    assert mailbox.run("pending", "show", held["first"]["id"]).stdout == first
    assert mailbox.ok("pending", "release", held["first"]["id"].upper(), "--whitelist") == (
        f"released: {held['first']['id']}\n")
    assert len(mailbox.maildir_messages()) == 1
    assert mailbox.run("whitelist", "check", "one@remote.test").returncode == 0
    assert mailbox.ok("pending", "delete", held["second"]["id"]).startswith("deleted:")
    assert json.loads(mailbox.ok("pending", "list", "--json")) == []
    everything = json.loads(mailbox.ok("pending", "list", "--all", "--json"))
    assert sorted(m["status"] for m in everything) == ["deleted", "released"]
    gone = mailbox.run("pending", "show", held["second"]["id"])
    assert gone.returncode == 3 and b"no longer held" in gone.stderr
    assert mailbox.run("pending", "release", "zzzzzzzz").returncode == 3


def test_deleted_message_cannot_be_confirmed(mailbox: Mailbox) -> None:
    mailbox.deliver(message(), "bob@remote.test")
    [(_, challenge)] = mailbox.outbox.drain(1)
    [held] = json.loads(mailbox.ok("pending", "list", "--json"))
    mailbox.ok("pending", "delete", held["id"])
    address = confirm_address_of(challenge)
    result = mailbox.deliver(message(to=address), "bob@remote.test", recipient=address)
    assert result.returncode == 99 and b"deleted" in result.stderr
    assert mailbox.maildir_messages() == []
    assert mailbox.run("whitelist", "check", "bob@remote.test").returncode == 1


def test_purge_removes_only_old_messages(mailbox: Mailbox) -> None:
    mailbox.deliver(message(), "bob@remote.test")
    assert mailbox.ok("pending", "purge", "--older-than", "1d").startswith("purged: 0")
    assert len(json.loads(mailbox.ok("pending", "list", "--json"))) == 1
    assert mailbox.ok("pending", "purge", "--older-than", "0s").startswith("purged: 1")
    assert json.loads(mailbox.ok("pending", "list", "--all", "--json")) == []
    assert mailbox.run("pending", "purge", "--older-than", "soon").returncode == 2


def test_keys_rotate_keeps_sent_challenges_valid(mailbox: Mailbox) -> None:
    mailbox.deliver(message(), "bob@remote.test")
    [(_, challenge)] = mailbox.outbox.drain(1)
    assert "2 keys" in mailbox.ok("keys", "rotate")
    assert (mailbox.home / "keys").stat().st_mode & 0o777 == 0o600
    address = confirm_address_of(challenge)
    assert mailbox.deliver(message(to=address), "bob@remote.test",
                           recipient=address).returncode == 99
    assert len(mailbox.maildir_messages()) == 1


def test_init_is_idempotent_and_never_touches_a_key(mailbox: Mailbox) -> None:
    keys = (mailbox.home / "keys").read_bytes()
    mailbox.ok("whitelist", "add", "bob@example.com")
    out = mailbox.ok("init", "--sendmail", "/usr/sbin/sendmail")
    assert "deliver" in out and ".qmail-default" in out
    assert (mailbox.home / "keys").read_bytes() == keys
    assert 'sendmail = "/usr/sbin/sendmail"' in (mailbox.home / "config.toml").read_text()
    assert mailbox.run("whitelist", "check", "bob@example.com").returncode == 0
    assert mailbox.home.stat().st_mode & 0o777 == 0o700


def test_init_prints_absolute_qmail_lines(tmp_path: Path) -> None:
    user_home = tmp_path / "carol"
    user_home.mkdir()
    env = {"HOME": str(user_home), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([crtool_executable(), "init", "--address", "carol@example.test"],
                         capture_output=True, text=True, env=env, check=True).stdout
    assert f"|{crtool_executable()} deliver" in out
    assert "./Maildir/" in out
    assert (user_home / ".crtool" / "crtool.db").exists()


def test_db_current_and_upgrade(mailbox: Mailbox) -> None:
    assert "(up to date)" in mailbox.ok("db", "current")
    assert mailbox.ok("db", "upgrade").startswith("database at revision")


def test_commands_without_a_database_say_so_in_one_line(tmp_path: Path) -> None:
    box = Mailbox(user_home=tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}")
    box.init()
    (tmp_path / "x.db").unlink()
    result = box.run("whitelist", "list")
    assert result.returncode == 4
    assert result.stderr.decode().count("\n") == 1 and "missing" in result.stderr.decode()
    assert not (tmp_path / "x.db").exists()


def test_help_documents_exit_codes() -> None:
    out = subprocess.run([crtool_executable(), "deliver", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for code in ("99", "100", "111", "75", "77"):
        assert code in out
