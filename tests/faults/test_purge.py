"""`pending purge` of 100,000 old messages works in bounded batches, so deliveries running
beside it never queue behind one long write transaction. Measured from outside through the
crash wrapper's lock recorder: how many write transactions the purge made and the most rows any
one of them deleted (no timing is asserted; the longest hold is only reported)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.faults.common import (
    CRASHPOINT,
    deliver,
    held,
    integrity,
    lock_figures,
    make_home,
    seed_old_pending,
    write_figures,
)

ROWS = 100_000
BATCH = 500


def test_purge_of_100000_rows_runs_in_bounded_batches_beside_deliveries(tmp_path: Path) -> None:
    import subprocess

    box = make_home(tmp_path)
    seed_old_pending(box, ROWS, 30 * 86400)
    locklog = tmp_path / "purge-locks.jsonl"
    env = box.base_env()
    env["CRTOOL_TEST_LOCKLOG"] = str(locklog)
    purge = subprocess.Popen([sys.executable, str(CRASHPOINT), "--home", str(box.home),
                              "pending", "purge"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
    # Deliveries keep arriving while the purge runs; each must get the lock between batches.
    codes = []
    while purge.poll() is None and len(codes) < 20:
        sender = f"s{len(codes)}@remote.test"
        codes.append(deliver(box, f"Subject: during {len(codes)}\n\nx\n".encode(),
                             sender).returncode)
    out, err = purge.communicate(timeout=600)
    assert purge.returncode == 0, err
    assert out.decode().strip() == f"purged: {ROWS} messages older than confirm_ttl"
    (figures,) = lock_figures(locklog)
    write_figures(tmp_path, "purge", {
        "rows": ROWS, "write_transactions": figures["transactions"],
        "max_rows_per_transaction": figures["max_deleted"],
        "longest_lock_hold_s": round(float(str(figures["max_hold"])), 3),
        "deliveries_during_purge": len(codes)})
    assert figures["max_deleted"] == BATCH
    assert int(str(figures["transactions"])) >= ROWS // BATCH
    assert codes and set(codes) == {99}
    assert sorted(str(m["subject"]) for m in held(box)) == sorted(
        f"during {n}" for n in range(len(codes)))
    assert integrity(box) == "ok"


def test_purge_default_keeps_what_is_younger_than_confirm_ttl(tmp_path: Path) -> None:
    box = make_home(tmp_path)
    seed_old_pending(box, 3, 15 * 86400)
    assert deliver(box, b"Subject: fresh\n\nx\n", "bob@remote.test").returncode == 99
    assert box.ok("pending", "purge") == "purged: 3 messages older than confirm_ttl\n"
    assert [m["subject"] for m in held(box)] == ["fresh"]
    assert json.loads(box.ok("pending", "list", "--json", "--all"))[0]["subject"] == "fresh"


def test_cron_line_in_etc_runs_the_purge(tmp_path: Path) -> None:
    """The shipped crontab line (etc/crontab) is a command this crtool accepts, and it purges."""
    line = next(text for text in
                (Path(__file__).parents[2] / "etc" / "crontab").read_text().splitlines()
                if "pending purge" in text and not text.startswith("#"))
    fields = line.split(">")[0].split()
    assert fields[5].endswith("/crtool") and fields[6:8] == ["pending", "purge"]
    box = make_home(tmp_path)
    seed_old_pending(box, 2, 15 * 86400)
    assert box.ok(*fields[6:]).startswith("purged: 2 messages")
