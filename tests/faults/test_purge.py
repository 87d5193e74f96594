"""`pending purge` of 100,000 old messages works in bounded batches, so deliveries running
beside it never queue behind one long write transaction. Measured from outside through the
crash wrapper's lock recorder: how many write transactions the purge made and the most rows any
one of them deleted (no timing is asserted; the longest hold is only reported)."""

from __future__ import annotations

import json
import re
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
    # The deliveries that hold a message purge expired ones too (at most 100 each), so the
    # command purges what they left; together, every old message goes (checked below).
    said = re.fullmatch(r"purged: (\d+) messages older than hold_ttl", out.decode().strip())
    assert said is not None, out
    purged = int(said.group(1))
    assert ROWS - 100 * len(codes) <= purged <= ROWS
    (figures,) = lock_figures(locklog)
    write_figures(tmp_path, "purge", {
        "rows": ROWS, "purged_by_the_command": purged,
        "write_transactions": figures["transactions"],
        "max_rows_per_transaction": figures["max_deleted"],
        "longest_lock_hold_s": round(float(str(figures["max_hold"])), 3),
        "deliveries_during_purge": len(codes)})
    assert figures["max_deleted"] == BATCH
    assert int(str(figures["transactions"])) >= purged // BATCH
    assert codes and set(codes) == {99}
    assert sorted(str(m["subject"]) for m in held(box)) == sorted(
        f"during {n}" for n in range(len(codes)))
    assert integrity(box) == "ok"


def test_purge_default_keeps_what_is_younger_than_hold_ttl(tmp_path: Path) -> None:
    box = make_home(tmp_path)
    seed_old_pending(box, 3, 14 * 86400 + 60)
    young = seed_old_pending(box, 2, 14 * 86400 - 600, prefix="y")
    assert box.ok("pending", "purge") == "purged: 3 messages older than hold_ttl\n"
    assert sorted(str(m["id"]) for m in held(box)) == young
    assert len(json.loads(box.ok("pending", "list", "--json", "--all"))) == 2


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
