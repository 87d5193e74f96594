"""120 deliveries at once into one SQLite database (qmail's largest concurrencylocal), with
`whitelist import` and `pending purge` running beside them: none may fail and none may see
"database is locked" (contract §3: BEGIN IMMEDIATE with a 30 s busy timeout). The longest wait
for the write lock, measured in each process through SQLAlchemy's events, is printed and written
to figures-concurrency.json."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.faults.common import (
    CRASHPOINT,
    held,
    integrity,
    lock_figures,
    make_home,
    seed_old_pending,
    write_figures,
)
from tests.support import Mailbox, qmail_env

CONCURRENCY = 120
OLD = 30 * 86400


def start_delivery(box: Mailbox, number: int, locklog: Path) -> subprocess.Popen[bytes]:
    sender = (f"friend{number}@friends.test" if number % 2 else
              f"stranger{number // 4}@remote.test")
    env = qmail_env(sender, box.address, box.user_home)
    env["CRTOOL_TEST_OUTBOX"] = str(box.outbox.path)
    env["CRTOOL_TEST_LOCKLOG"] = str(locklog)
    stdin = box.user_home / f"msg{number}"
    stdin.write_bytes(f"From: {sender}\nSubject: n{number}\nMessage-ID: <{number}@c.test>\n\n"
                      f"body {number}\n".encode())
    with open(stdin, "rb") as handle:
        return subprocess.Popen([sys.executable, str(CRASHPOINT), "deliver"], stdin=handle,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                cwd=box.user_home)


def start_command(box: Mailbox, locklog: Path, *args: str) -> subprocess.Popen[bytes]:
    env = box.base_env()
    env["CRTOOL_TEST_LOCKLOG"] = str(locklog)
    return subprocess.Popen([sys.executable, str(CRASHPOINT), "--home", str(box.home), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def test_120_simultaneous_deliveries_beside_import_and_purge(tmp_path: Path) -> None:
    box = make_home(tmp_path, challenge_global_limit=10_000)
    box.ok("whitelist", "add", "@friends.test")
    seed_old_pending(box, 5000, OLD)
    patterns = tmp_path / "import.txt"
    patterns.write_text("".join(f"bulk{n}@bulk{n % 97}.test\n" for n in range(20_000)))
    locklog = tmp_path / "locks.jsonl"

    procs = [start_delivery(box, n, locklog) for n in range(CONCURRENCY)]
    importer = start_command(box, locklog, "whitelist", "import", str(patterns))
    purger = start_command(box, locklog, "pending", "purge", "--older-than", "14d")
    outputs = [p.communicate(timeout=600) for p in procs]
    results = [(n, p.returncode, out, err) for n, (p, (out, err)) in
               enumerate(zip(procs, outputs, strict=True))]
    imported = importer.communicate(timeout=600)
    purged = purger.communicate(timeout=600)

    failures = [(n, code, err) for n, code, _, err in results
                if code != (0 if n % 2 else 99)]
    locked = [err for *_, err in results if b"locked" in err]
    locked += [err for err in (imported[1], purged[1]) if b"locked" in err]
    locks = lock_figures(locklog)
    figures = {
        "deliveries": CONCURRENCY,
        "failures": len(failures),
        "database_is_locked": len(locked),
        "processes_measured": len(locks),
        "longest_lock_wait_s": round(max(float(str(f["max_wait"])) for f in locks), 3),
        "longest_lock_hold_s": round(max(float(str(f["max_hold"])) for f in locks), 3),
        "import": imported[0].decode().strip(),
        "purge": purged[0].decode().strip(),
    }
    write_figures(tmp_path, "concurrency", figures)

    assert failures == []
    assert locked == []
    assert importer.returncode == 0, imported[1]
    assert purger.returncode == 0, purged[1]
    assert figures["import"] == "imported: 20000 new entries"
    # The 60 deliveries that hold a message purge expired ones too (at most 100 each): the
    # command purges what they left, and together every old message goes (checked below).
    said = re.fullmatch(r"purged: (\d+) messages older than 14d", str(figures["purge"]))
    assert said is not None, figures["purge"]
    assert 5000 - 100 * (CONCURRENCY // 2) <= int(said.group(1)) <= 5000
    assert len(locks) == CONCURRENCY + 2
    # Every unknown delivery was held exactly once; the old queue is gone.
    subjects = sorted(str(item["subject"]) for item in held(box))
    assert subjects == sorted(f"n{n}" for n in range(0, CONCURRENCY, 2))
    assert integrity(box) == "ok"
    assert json.loads(box.ok("stats", "--json"))["counts"]["delivered"] == CONCURRENCY // 2
