"""`python -m bench.imports`: what importing each delivery path's libraries costs a process,
as ratios to bare (`import sqlite3, email.parser`), the yardstick bench/perprocess.py uses.

A delivery run in-process by the MTA pays its imports before it reads a byte, so they are the
floor under its cost: a stranger's hold imports SQLAlchemy's ORM (the store) and Jinja2 (the
challenge), a PostgreSQL delivery a driver. Each line is a whole process (its user + system
CPU and peak RSS from wait4, to the microsecond), interleaved with the others in shuffled
rounds; medians. A library that is not installed (pg8000, the pure-Python PostgreSQL
driver, is not a dependency; set PYTHONPATH to a directory holding it to measure it) is
reported as such.
Writes bench/results-imports.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
from pathlib import Path

from bench.homes import PYTHON

RESULTS = Path(__file__).resolve().parent / "results-imports.json"
BARE = "import sqlite3, email.parser"
CASES = {
    "bare": BARE,
    "sqlalchemy": f"{BARE}, sqlalchemy",
    "sqlalchemy.orm": f"{BARE}, sqlalchemy.orm",
    "crtool.service (a stranger's path)": f"{BARE}, crtool.service",
    "jinja2": f"{BARE}, jinja2",
    "psycopg": f"{BARE}, psycopg",
    "pg8000": f"{BARE}, pg8000.native",
    "the fast path (whitelisted on SQLite)": (
        f"{BARE}, crtool.cli, crtool.delivery, crtool.fastpath, crtool.acceptance, "
        "crtool.maildir"),
}


def measure(rounds: int) -> dict[str, dict[str, float | str]]:
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in CASES}
    missing: set[str] = set()
    for _ in range(rounds):
        cases = list(CASES.items())
        random.shuffle(cases)
        for name, code in cases:
            if name in missing:
                continue
            process = subprocess.Popen([PYTHON, "-c", code], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode != 0:
                missing.add(name)
                continue
            samples[name].append((usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024))
    bare = statistics.median(cpu for cpu, _ in samples["bare"])
    results: dict[str, dict[str, float | str]] = {}
    for name, values in samples.items():
        if name in missing:
            results[name] = {"status": "not installed"}
            continue
        cpu = statistics.median(c for c, _ in values)
        results[name] = {"cpu_ms": round(cpu * 1000, 1), "ratio": round(cpu / bare, 2),
                         "peak_rss_mib": round(statistics.median(r for _, r in values), 1)}
    return results


def main(argv: list[str] | None = None) -> dict[str, dict[str, float | str]]:
    parser = argparse.ArgumentParser(prog="python -m bench.imports", description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = measure(args.rounds)
    print(f"\nimports, {args.rounds} rounds, CPU (user + system) as ratios to bare:")
    for name, figures in results.items():
        if "ratio" in figures:
            print(f"  {name:40} {figures['cpu_ms']:7.1f} ms {figures['ratio']:6.2f}x "
                  f"{figures['peak_rss_mib']:6.1f} MiB")
        else:
            print(f"  {name:40} {figures['status']}")
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.json}")
    return results


if __name__ == "__main__":
    main()
