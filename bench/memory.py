"""Peak memory by message size: `crtool deliver` holding 1 MB, 100 MB and 300 MB messages (and
one past SQLite's 1 GB limit on one value), passing a whitelisted 300 MB message through into
the Maildir, and `pending show` of the 300 MB one. The goal is flat: at most 64 MiB for 300 MB.

Peak RSS is GNU time's (bench/proc.py says why). Each figure is one run: memory does not vary
with the machine's load the way time does. The seconds are reported, not judged.
`python -m bench.memory [--database-url URL] [--quick]` runs these alone; `make bench` runs them
after the latency scenarios, on SQLite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.homes import CRTOOL, OWNER, Home
from bench.proc import TIME

MIB = 1024 * 1024
RSS_GOAL_MIB = 64
FRIEND = "friend@example.org"


def write_message(path: Path, size: int) -> Path:
    """A message of `size` bytes, written in 1 MiB blocks."""
    head = (b"From: Sender <sender@remote.test>\nTo: alice@example.test\n"
            b"Subject: large\nMessage-ID: <large@remote.test>\n\n")
    line = b"All work and no play makes Jack a dull boy. " * 2 + b"\n"
    block = line * (MIB // len(line))
    with open(path, "wb") as handle:
        handle.write(head)
        written = len(head)
        while written < size:
            piece = block[:size - written]
            handle.write(piece)
            written += len(piece)
    return path


def make_home(root: Path, name: str, database_url: str | None) -> Home:
    """A mailbox that delivers into its Maildir, FRIEND whitelisted, challenges to /bin/true."""
    user_home = root / name
    user_home.mkdir(parents=True)
    home = Home(user_home)
    argv = [CRTOOL, "--home", str(home.home), "init", "--address", OWNER,
            "--maildir", str(user_home / "Maildir"), "--sendmail", "/bin/true"]
    if database_url:
        argv += ["--database-url", database_url]
    _run(argv, home.command_env())
    config = home.home / "config.toml"
    config.write_text(config.read_text().replace('delivery = "continue"',
                                                 'delivery = "maildir"'))
    _run([CRTOOL, "--home", str(home.home), "whitelist", "add", FRIEND], home.command_env())
    return home


def _run(argv: list[str], env: dict[str, str]) -> None:
    import subprocess

    subprocess.run(argv, check=True, capture_output=True, env=env)


def measure(argv: list[str], env: dict[str, str], stdin: Path | None,
            stdout: Path | None = None) -> dict[str, float | str]:
    """One run under GNU time: exit code, seconds and peak RSS in MiB."""
    import subprocess

    rss_file = Path(tempfile.mkstemp(prefix="crtool-rss-")[1])
    source = open(stdin, "rb") if stdin else subprocess.DEVNULL  # noqa: SIM115
    sink = open(stdout, "wb") if stdout else subprocess.DEVNULL  # noqa: SIM115
    started = time.perf_counter()
    try:
        result = subprocess.run([TIME, "-f", "%M", "-o", str(rss_file), *argv], stdin=source,
                                stdout=sink, stderr=subprocess.PIPE, env=env, check=False)
    finally:
        for handle in (source, sink):
            if not isinstance(handle, int):
                handle.close()
    seconds = time.perf_counter() - started
    peak_kib = int(rss_file.read_text().split()[-1])
    rss_file.unlink()
    return {"code": result.returncode, "seconds": round(seconds, 2),
            "peak_rss_mib": round(peak_kib / 1024, 1),
            "stderr": result.stderr.decode("utf-8", "replace").strip()[:200]}


def held_id(stderr: str) -> str:
    words = stderr.split()
    return words[words.index("as") + 1].rstrip(";")


def run(root: Path, quick: bool = False, database_url: str | None = None) -> dict[str, object]:
    """Every scenario, in `root`; returns the figures and prints a table."""
    sizes = [1, 100] if quick else [1, 100, 300]
    figures: dict[str, dict[str, float | str]] = {}
    home = make_home(root, "memory", database_url)
    for megabytes in sizes:
        message = write_message(root / f"m{megabytes}.eml", megabytes * 1_000_000)
        env = home.env(f"stranger{megabytes}@remote.test")
        figures[f"hold_{megabytes}m"] = measure([CRTOOL, "deliver"], env, message)
        figures[f"white_{megabytes}m"] = measure([CRTOOL, "deliver"], home.env(FRIEND), message)
        if megabytes == sizes[-1]:
            held = held_id(str(figures[f"hold_{megabytes}m"]["stderr"]))
            figures[f"show_{megabytes}m"] = measure(
                [CRTOOL, "--home", str(home.home), "pending", "show", held],
                home.command_env(), None, root / "shown.eml")
            (root / "shown.eml").unlink()
        message.unlink()
        shutil.rmtree(home.user_home / "Maildir", ignore_errors=True)
    if not quick and (database_url is None or database_url.startswith("sqlite")):
        # Past SQLite's limit on one value (1,000,000,000 bytes): held all the same.
        message = write_message(root / "m1100.eml", 1_100_000_000)
        figures["hold_1100m"] = measure([CRTOOL, "deliver"],
                                        home.env("stranger1100@remote.test"), message)
        message.unlink()
    for figure in figures.values():
        if figure["code"] in (0, 99):
            figure.pop("stderr", None)

    print(f"\n{'memory scenario':18} {'exit':>4} {'seconds':>8} {'peak MiB':>9}")
    for name, figure in figures.items():
        print(f"{name:18} {figure['code']:4.0f} {figure['seconds']:8.1f} "
              f"{figure['peak_rss_mib']:9.1f}  {figure.get('stderr', '')}")
    largest = f"hold_{sizes[-1]}m"
    peak = float(figures[largest]["peak_rss_mib"])
    met = peak <= RSS_GOAL_MIB and figures[largest]["code"] == 99
    print(f"peak RSS holding {sizes[-1]} MB: {peak:.1f} MiB (goal <= {RSS_GOAL_MIB} MiB) "
          f"{'met' if met else 'NOT MET'}")
    return {"database": "postgresql" if database_url and "postgresql" in database_url
            else "sqlite", "figures": figures, "goal_mib": RSS_GOAL_MIB, "met": met}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 MB and 100 MB only")
    parser.add_argument("--database-url", help="e.g. a PostgreSQL URL (default SQLite)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="crtool-bench-memory-"))
    try:
        results = run(root, args.quick, args.database_url)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if results["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
