"""maildir.deliver in-process: the order of its system calls (each one the real call, watched
on the way through), the clean-up when a write fails, and the idempotent name.

tests/integration/test_maildir_durability.py watches the same order with strace on a separate
process; this one runs in the test's own process, so a change to maildir.py shows here too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crtool import maildir


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(call, path) for each fsync, link and unlink maildir makes, in order; each call is
    carried out by the real function."""
    seen: list[tuple[str, str]] = []

    def watch(name: str, describe: Callable[..., str]) -> None:
        real = getattr(os, name)

        def watched(*args: Any, **kwargs: Any) -> Any:
            seen.append((name, describe(*args)))
            return real(*args, **kwargs)
        monkeypatch.setattr(maildir.os, name, watched)

    watch("fsync", lambda fd: os.readlink(f"/proc/self/fd/{fd}"))
    watch("link", lambda source, target: f"{source} -> {target}")
    monkeypatch.setattr(Path, "unlink", _watched_unlink(Path.unlink, seen))
    return seen


def _watched_unlink(real: Callable[..., None], seen: list[tuple[str, str]]) -> Any:
    def unlink(self: Path, missing_ok: bool = False) -> None:
        seen.append(("unlink", str(self)))
        real(self, missing_ok=missing_ok)
    return unlink


def test_the_file_is_on_disk_before_it_is_linked_and_new_is_synced_after(
        tmp_path: Path, calls: list[tuple[str, str]]) -> None:
    box = tmp_path / "Maildir"
    path = maildir.deliver(box, [b"Subject: x\n\n", b"body\n"], b"Return-Path: <a@b.test>\n")
    assert path.parent == box / "new"
    assert path.read_bytes() == b"Return-Path: <a@b.test>\nSubject: x\n\nbody\n"
    assert path.stat().st_mode & 0o777 == 0o600
    tmp = str(box / "tmp" / path.name)
    assert calls == [("fsync", tmp), ("link", f"{tmp} -> {path}"), ("unlink", tmp),
                     ("fsync", str(box / "new"))]
    assert list((box / "tmp").iterdir()) == []
    for sub in ("tmp", "new", "cur"):
        assert (box / sub).stat().st_mode & 0o777 == 0o700


def test_a_failed_write_leaves_nothing_behind_and_propagates(
        tmp_path: Path, calls: list[tuple[str, str]]) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"Subject: x\n\n"
        raise OSError(28, "No space left on device")

    box = tmp_path / "Maildir"
    with pytest.raises(OSError, match="No space left"):
        maildir.deliver(box, chunks())
    assert list((box / "tmp").iterdir()) == [] and list((box / "new").iterdir()) == []
    assert [call for call, _ in calls] == ["unlink"]


def test_a_failed_link_removes_the_tmp_file(tmp_path: Path) -> None:
    box = tmp_path / "Maildir"
    with pytest.raises(FileNotFoundError):  # new/missing/ does not exist: the link fails
        maildir.deliver(box, [b"x"], name="missing/m1")
    assert list((box / "tmp").iterdir()) == [] and list((box / "new").iterdir()) == []


def test_a_long_message_is_written_whole(tmp_path: Path) -> None:
    # Larger than one pipe-sized write: every byte of every chunk arrives.
    chunks = [bytes([65 + n % 26]) * (3 * 1024 * 1024 + n) for n in range(3)]
    path = maildir.deliver(tmp_path / "Maildir", chunks, b"P\n")
    assert path.read_bytes() == b"P\n" + b"".join(chunks)


def test_a_named_delivery_happens_once_whether_new_or_read(tmp_path: Path) -> None:
    box = tmp_path / "Maildir"
    first = maildir.deliver(box, [b"one"], name="crtool.m1")
    assert first == box / "new" / "crtool.m1"
    assert maildir.deliver(box, [b"two"], name="crtool.m1") == first
    assert first.read_bytes() == b"one"
    # A mail reader moved it to cur/ and flagged it seen: still delivered.
    read = box / "cur" / "crtool.m1:2,S"
    first.rename(read)
    assert maildir.delivered(box, "crtool.m1") == read
    assert maildir.deliver(box, [b"three"], name="crtool.m1") == read
    assert list((box / "new").iterdir()) == []
    # A name that only starts like it is another message.
    assert maildir.delivered(box, "crtool.m") is None
    assert maildir.delivered(box, "crtool.m1:2") is None
    assert maildir.delivered(tmp_path / "Missing", "crtool.m1") is None


def test_unnamed_deliveries_get_distinct_names_in_one_instant(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maildir.time, "time", lambda: 1_800_000_001.999999)
    monkeypatch.setattr(maildir.socket, "gethostname", lambda: "mx/1:2")
    box = tmp_path / "Maildir"
    paths = [maildir.deliver(box, [b"%d" % n]) for n in range(3)]
    assert len({p.name for p in paths}) == 3
    for path in paths:
        seconds, rest = path.name.split(".", 1)
        assert seconds == "1800000001"  # the microseconds of the same second follow
        assert rest.startswith(f"M999999P{os.getpid()}Q")
        assert path.name.endswith(".mx\\0571\\0722")


def test_a_maildir_whose_parents_are_missing_is_made(tmp_path: Path) -> None:
    box = tmp_path / "home" / "mail" / "Maildir"
    path = maildir.deliver(box, [b"x"])
    assert path.parent == box / "new" and path.read_bytes() == b"x"
    assert sorted(p.name for p in box.iterdir()) == ["cur", "new", "tmp"]
