"""Maildir delivery is durable: the system calls themselves, observed with strace(1).

A message counts as delivered (qmail deletes its copy on exit 99) only once it is on disk, so
the order of the system calls is the contract: the file is created in tmp/ under a unique name
with O_CREAT|O_EXCL (never an existing file, never in new/ directly), every byte is written,
the file is fsync'ed, then linked (or renamed) into new/, then new/ itself is fsync'ed so the
directory entry survives a power cut, all before `deliver` returns. None of this shows in the
files afterwards (the page cache hides a missing fsync until the power goes), so the tests
watch the kernel interface with strace, from Debian's `strace` package (.ci/run installs it;
without it the test skips, which fails under CRTOOL_REQUIRE_E2E=1). The code under test is the
installed crtool, unchanged: a small harness process calls it, or the real `crtool deliver`
runs. Name uniqueness is checked with the clock held still, the one way two deliveries can
fall in the same microsecond on demand.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import Mailbox, message, qmail_env

STRACE = shutil.which("strace")
needs_strace = pytest.mark.skipif(STRACE is None, reason="strace is not installed "
                                  "(Debian package strace; .ci/run installs it)")
TRACED = ("openat,open,creat,write,pwrite64,writev,pwritev,pwritev2,fsync,fdatasync,"
          "link,linkat,rename,renameat,renameat2,close,access,faccessat,faccessat2")
BEFORE, AFTER = "/crtool-trace-mark-before", "/crtool-trace-mark-after"

HARNESS = f"""
import os, sys, time
from pathlib import Path
from crtool import maildir

target, count = Path(sys.argv[1]), int(sys.argv[2])
if len(sys.argv) > 3:
    frozen = float(sys.argv[3])
    time.time = lambda: frozen  # every delivery of this process in the same microsecond
maildir.ensure(target)
for n in range(count):
    os.access({BEFORE!r}, os.F_OK)
    maildir.deliver(target, [b"a" * 70000, b"%d" % n], b"Return-Path: <x@remote.test>\\n")
    os.access({AFTER!r}, os.F_OK)
"""


def harness_content(n: int) -> bytes:
    return b"Return-Path: <x@remote.test>\n" + b"a" * 70000 + b"%d" % n


@dataclass(frozen=True)
class Call:
    name: str
    args: str
    result: str

    def fd_path(self) -> str:
        """The path strace -y shows for the first argument's descriptor."""
        found = re.match(r"\d+<(.*?)>", self.args)
        return found.group(1) if found else ""

    def strings(self) -> list[str]:
        return re.findall(r'"((?:[^"\\]|\\.)*)"', self.args)


_LINE = re.compile(r"^(?:\d+\s+)?(\w+)\((.*)\)\s+=\s+(.*)$")


def trace(argv: list[str], out: Path, env: dict[str, str] | None = None,
          stdin: bytes | None = None, cwd: Path | None = None) -> tuple[
        subprocess.CompletedProcess[bytes], list[Call]]:
    assert STRACE is not None
    log = out / "strace.log"
    result = subprocess.run([STRACE, "-f", "-qq", "-y", "-s", "0", "-e", f"trace={TRACED}",
                             "-o", str(log), *argv], input=stdin, capture_output=True,
                            env=env, cwd=cwd, timeout=120, check=False)
    calls = []
    for line in log.read_text().splitlines():
        found = _LINE.match(line)
        if found:
            calls.append(Call(*found.groups()))
    return result, calls


def assert_durable(calls: list[Call], maildir: Path, content: bytes, end: int) -> str:
    """The durable sequence for one message among `calls[:end]`; returns its file name."""
    tmp, new = str(maildir / "tmp") + "/", str(maildir / "new")
    opened = [i for i, c in enumerate(calls[:end]) if c.name in ("openat", "open", "creat")
              and any(s.startswith(tmp) for s in c.strings())]
    assert len(opened) == 1, [calls[i] for i in opened]
    create = calls[opened[0]]
    flags = create.args.split(", ")
    assert "O_CREAT" in create.args and "O_EXCL" in create.args, create
    assert flags[-1] == "0600", create
    path = next(s for s in create.strings() if s.startswith(tmp))
    name = path[len(tmp):]
    fd = re.match(r"(\d+)", create.result)
    assert fd is not None, create
    # No file is ever opened for writing in new/ or cur/: it arrives there whole or not at all.
    for c in calls[:end]:
        if c.name in ("openat", "open", "creat") and any(
                s.startswith((new + "/", str(maildir / "cur") + "/")) for s in c.strings()):
            raise AssertionError(f"opened in place: {c}")
    mine = [(i, c) for i, c in enumerate(calls[:end]) if c.fd_path() == path]
    writes = [(i, c) for i, c in mine if c.name.startswith(("write", "pwrite"))]
    assert sum(int(c.result.split()[0]) for _, c in writes) == len(content)
    syncs = [i for i, c in mine if c.name in ("fsync", "fdatasync") and c.result == "0"]
    closes = [i for i, c in mine if c.name == "close"]
    assert syncs, "the message file is never fsync'ed"
    assert writes[-1][0] < syncs[-1] < closes[-1], "fsync must follow the last write"
    moved = [i for i, c in enumerate(calls[:end])
             if c.name in ("link", "linkat", "rename", "renameat", "renameat2")
             and c.result == "0" and c.strings()[:2] == [path, f"{new}/{name}"]]
    assert len(moved) == 1, "never linked or renamed from tmp/ into new/"
    assert moved[0] > syncs[-1], "linked into new/ before the file was on disk"
    dir_syncs = [i for i, c in enumerate(calls[:end]) if c.name in ("fsync", "fdatasync")
                 and c.fd_path() == new and c.result == "0"]
    assert any(i > moved[0] for i in dir_syncs), "new/ is not fsync'ed after the link"
    assert (maildir / "new" / name).read_bytes() == content
    return name


def marks(calls: list[Call], mark: str) -> list[int]:
    return [i for i, c in enumerate(calls) if c.name.endswith("access") and mark in c.args]


@needs_strace
def test_each_delivery_is_fsynced_linked_and_its_directory_fsynced(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    result, calls = trace([sys.executable, "-c", HARNESS, str(maildir), "2"], tmp_path)
    assert result.returncode == 0, result.stderr
    starts, ends = marks(calls, BEFORE), marks(calls, AFTER)
    assert len(starts) == len(ends) == 2
    names = []
    for n, (start, end) in enumerate(zip(starts, ends, strict=True)):
        names.append(assert_durable(calls[start:], maildir, harness_content(n), end - start))
    assert len(set(names)) == 2
    assert list((maildir / "tmp").iterdir()) == []


@needs_strace
def test_crtool_deliver_writes_the_maildir_durably(mailbox: Mailbox, tmp_path: Path) -> None:
    """The real `crtool deliver` (whitelisted sender, crtool writing the Maildir itself)."""
    config = mailbox.home / "config.toml"
    config.write_text(config.read_text().replace('delivery = "continue"',
                                                 'delivery = "maildir"'))
    mailbox.ok("whitelist", "add", "friend@remote.test")
    data = message("friend@remote.test")
    env = qmail_env("friend@remote.test", mailbox.address, mailbox.user_home)
    crtool = str(Path(sys.executable).parent / "crtool")
    result, calls = trace([crtool, "deliver"], tmp_path, env=env, stdin=data,
                          cwd=mailbox.user_home)
    assert result.returncode == 99, result.stderr
    [delivered] = mailbox.maildir_messages()
    assert delivered.endswith(data)
    assert_durable(calls, mailbox.maildir, delivered, len(calls))


def test_names_are_unique_within_one_instant(tmp_path: Path) -> None:
    """Two processes, two deliveries each, all with the clock held at one instant: four
    distinct messages (the name carries the pid and a per-process counter besides the time;
    a repeated name would fail O_EXCL or the link, never overwrite)."""
    maildir = tmp_path / "Maildir"
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", HARNESS, str(maildir), "2",
                                 "1800000000.25"], capture_output=True, timeout=120,
                                check=False)
        assert result.returncode == 0, result.stderr.decode()
    delivered = sorted(p.read_bytes() for p in (maildir / "new").iterdir())
    assert delivered == sorted([harness_content(0), harness_content(1)] * 2)
    assert list((maildir / "tmp").iterdir()) == []
