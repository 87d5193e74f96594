"""What `crtool sendmail` adds to the sendmail it wraps: the owner's mail program waits for it.

Scenarios, measured as whole processes in interleaved rounds (each round runs each once, in a
shuffled order; medians), the message on stdin as a file:

- `bare_small` / `bare_big`: the wrapped sendmail alone, a sink that reads the message and
  exits 0 (`cat >/dev/null`), so what is measured is crtool's part and not an MTA's queue;
- `crtool_small`: `crtool sendmail -oi -- RCPT` in front of it, a small message without a
  Message-ID (crtool mints a signed one, streams, then whitelists and records);
- `crtool_t10`: `crtool sendmail -oi -t`, ten recipients in To/Cc (ten whitelist entries);
- `crtool_big`: a 50 MiB message through `crtool sendmail`, with its peak RSS (GNU time): the
  body is streamed, never held whole;
- `import_orm`: `python -c 'import sqlalchemy.orm'`, the import that recording (a write, so
  through SQLAlchemy) cannot avoid: most of the overhead, measured in the same rounds.

Run alone with `python -m bench.sendmail [--quick]`; `make bench` runs it after the rest.
Prints a table and writes bench/results-sendmail.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.homes import CRTOOL, PYTHON
from bench.proc import Run, Samples, spawn

RESULTS = Path(__file__).resolve().parent / "results-sendmail.json"
OWNER = "alice@example.test"
BIG_MIB = 50


def _sink(root: Path) -> Path:
    sink = root / "sink-sendmail"
    sink.write_text("#!/bin/sh\nexec cat >/dev/null\n")
    sink.chmod(0o755)
    return sink


def _message(path: Path, to: str, body_mib: int = 0) -> Path:
    head = (f"From: Alice <{OWNER}>\nTo: {to}\nSubject: Lunch on Friday?\n"
            "Date: Tue, 01 Dec 2026 10:00:00 +0000\n\n").encode()
    with open(path, "wb") as handle:
        handle.write(head)
        line = b"All work and no play makes Jack a dull boy. " * 2 + b"\n"
        block = line * (1024 * 1024 // len(line))
        for _ in range(body_mib):
            handle.write(block)
        handle.write(b"See you.\n")
    return path


def _home(root: Path, sink: Path) -> tuple[Path, dict[str, str]]:
    user_home = root / "alice"
    user_home.mkdir()
    home = user_home / ".crtool"
    env = {"HOME": str(user_home), "PATH": "/usr/bin:/bin"}
    subprocess.run([CRTOOL, "--home", str(home), "init", "--address", OWNER, "--maildir",
                    str(user_home / "Maildir"), "--sendmail", str(sink)], env=env,
                   capture_output=True, check=True)
    return home, env


def measure(quick: bool) -> dict[str, object]:
    rounds = 3 if quick else 15
    root = Path(tempfile.mkdtemp(prefix="crtool-bench-sendmail-"))
    try:
        sink = _sink(root)
        home, env = _home(root, sink)
        small = _message(root / "small.eml", "Bob <bob@remote.test>")
        ten = ", ".join(f"friend{n}@remote{n}.test" for n in range(10))
        many = _message(root / "ten.eml", ten)
        big = _message(root / "big.eml", "Bob <bob@remote.test>", 5 if quick else BIG_MIB)
        rss = root / "rss.txt"
        crtool = [CRTOOL, "--home", str(home), "sendmail"]
        runs: dict[str, Callable[[], Run]] = {
            "bare_small": lambda: spawn([str(sink), "-oi", "--", "bob@remote.test"], env, small),
            "crtool_small": lambda: spawn([*crtool, "-oi", "--", "bob@remote.test"], env,
                                          small),
            "crtool_t10": lambda: spawn([*crtool, "-oi", "-t"], env, many),
            "bare_big": lambda: spawn([str(sink), "-oi", "--", "bob@remote.test"], env, big),
            "crtool_big": lambda: spawn([*crtool, "-oi", "--", "bob@remote.test"], env, big,
                                        rss),
            "import_orm": lambda: spawn([PYTHON, "-c", "import sqlalchemy.orm"], env),
        }
        samples = {name: Samples() for name in runs}
        for run in runs.values():  # warm the page cache and the .pyc files
            run()
        order = random.Random(10)  # noqa: S311 - an order of runs, not a secret
        for _ in range(rounds):
            names = list(runs)
            order.shuffle(names)
            for name in names:
                samples[name].add(runs[name](), 0)
        results: dict[str, object] = {}
        for name, got in samples.items():
            peak = max((r.max_rss_kib for r in got.runs), default=-1)
            results[name] = {"median_ms": round(got.median_ms, 1), "wrong": got.wrong,
                             "max_rss_kib": peak if peak > 0 else None}
        results["overhead_small_ms"] = round(
            samples["crtool_small"].median_ms - samples["bare_small"].median_ms, 1)
        results["overhead_big_ms"] = round(
            samples["crtool_big"].median_ms - samples["bare_big"].median_ms, 1)
        results["machine"] = {"rounds": rounds, "big_mib": 5 if quick else BIG_MIB,
                              "load": os.getloadavg(), "cpus": os.cpu_count()}
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sendmail")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = measure(args.quick)
    print("\ncrtool sendmail against the sendmail it wraps (a sink: cat >/dev/null)")
    print(f"{'scenario':14} {'median ms':>10} {'peak RSS':>10} {'wrong':>6}")
    for name, value in results.items():
        if isinstance(value, dict) and "median_ms" in value:
            rss = f"{value['max_rss_kib'] // 1024} MiB" if value["max_rss_kib"] else ""
            print(f"{name:14} {value['median_ms']:>10} {rss:>10} {value['wrong']:>6}")
    big_mib = 5 if args.quick else BIG_MIB
    print(f"overhead: {results['overhead_small_ms']} ms (small message), "
          f"{results['overhead_big_ms']} ms ({big_mib} MiB)")
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.json}; took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
