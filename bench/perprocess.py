"""`python -m bench.perprocess`: what one `crtool deliver` costs the MTA, before and after.

An MTA starts `crtool deliver` once per message, so its cost is the interpreter's start plus
whatever the delivery imports and does. Measured here as whole processes (qmail-local's
environment, the message on stdin as a seekable file, GNU time for the peak RSS and the CPU
time), interleaved in shuffled rounds with "bare" (`import sqlite3, email.parser` in the same
interpreter), and shown as ratios to bare's median of the same run, side by side:

- before: crtool at BEFORE (a git revision, by default the last one without the fast read
  path on PostgreSQL and the server on demand), extracted with `git archive` and run by the
  same interpreter and launcher;
- after, in-process: this checkout with `serve_idle = 0` (each delivery alone);
- after, server on demand: this checkout with `serve_idle = "10m"`; the first delivery works
  in-process and starts `crtool serve`, the measured ones after it are its clients (the
  server's own CPU is not in the client's figure: it is paid once, at its start, and per
  message in the server).

Scenarios: a whitelisted sender, a stranger (held and challenged; sendmail is /bin/true, the
rate limits lifted) and a confirmation reply (releases one held message into the Maildir), on
SQLite with 10,000 list entries, and whitelisted and stranger on PostgreSQL (a fresh schema in
CRTOOL_BENCH_DATABASE_URL, else CRTOOL_TEST_DATABASE_URL, else 127.0.0.1:5432/test) with
10,000 entries. Writes bench/results-perprocess.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.homes import BLACKLISTED, LISTED, OWNER, PYTHON, QMAIL_PATH, _patterns

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results-perprocess.json"
# crtool before the PostgreSQL fast read path and the server on demand.
BEFORE = "a414bd9d3389012dc5e84837e481a03cb6f79bf1"
PG_URL = os.environ.get("CRTOOL_BENCH_DATABASE_URL") or os.environ.get(
    "CRTOOL_TEST_DATABASE_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ENTRIES = 10_000
TIME = "/usr/bin/time"
BARE = [PYTHON, "-c", "import sqlite3, email.parser"]
# The console script's own three lines, so that both versions start alike.
LAUNCHER = "import sys\nfrom crtool.cli import main\nsys.exit(main())\n"
MESSAGE = (b"From: Sender <sender@remote.test>\nTo: alice@example.test\n"
           b"Subject: Lunch on Friday?\nMessage-ID: <m1@remote.test>\n"
           b"Date: Sun, 29 Nov 2026 10:00:00 +0000\n\nAre you free on Friday?\n")
KINDS = ("sqlite_white", "sqlite_stranger", "sqlite_confirm", "pg_white", "pg_stranger")
WAYS = ("before", "after", "on_demand")
GOALS = {"sqlite_stranger": 3.0, "sqlite_white": 1.5, "sqlite_confirm": 3.0, "pg_white": 3.0,
         "pg_stranger": 4.0}
RSS_GOAL_MIB = 40.0


@dataclass(frozen=True)
class Run:
    seconds: float
    cpu: float
    rss_mib: float
    code: int


@dataclass
class Samples:
    runs: list[Run] = field(default_factory=list)
    wrong: int = 0

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(r, attribute) for r in self.runs)

    def peak(self) -> float:
        return max(r.rss_mib for r in self.runs)


def spawn(argv: list[str], env: dict[str, str], stdin: Path, rss_file: Path) -> Run:
    """One process under GNU time, stdin a regular file: wall time, CPU (the process and what
    it waited for), peak RSS, exit code."""
    with open(stdin, "rb") as source, open(os.devnull, "wb") as sink:
        started = time.perf_counter()
        pid = os.posix_spawn(TIME, [TIME, "-f", "%M", "-o", str(rss_file), *argv], env,
                             file_actions=[(os.POSIX_SPAWN_DUP2, source.fileno(), 0),
                                           (os.POSIX_SPAWN_DUP2, sink.fileno(), 1),
                                           (os.POSIX_SPAWN_DUP2, sink.fileno(), 2)])
        _, status, usage = os.wait4(pid, 0)
        elapsed = time.perf_counter() - started
    return Run(elapsed, usage.ru_utime + usage.ru_stime,
               int(rss_file.read_text().split()[-1]) / 1024, os.waitstatus_to_exitcode(status))


@dataclass
class Home:
    """One mailbox run by one version of crtool (its code on PYTHONPATH)."""

    user_home: Path
    code: Path
    confirms: list[tuple[str, str]] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.user_home / ".crtool"

    def env(self, sender: str, recipient: str = OWNER) -> dict[str, str]:
        return {"PATH": QMAIL_PATH, "HOME": str(self.user_home), "USER": "alice",
                "PYTHONPATH": str(self.code), "SENDER": sender, "NEWSENDER": sender,
                "RECIPIENT": recipient, "LOCAL": recipient.split("@")[0],
                "HOST": recipient.split("@")[-1], "EXT": "",
                "DTLINE": f"Delivered-To: {recipient}\n", "RPLINE": f"Return-Path: <{sender}>\n"}

    def argv(self, launcher: Path) -> list[str]:
        return [PYTHON, str(launcher), "deliver"]

    def set_serve_idle(self, value: str | None) -> None:
        """serve_idle = value, or no such line at all (a version that does not know it)."""
        path = self.home / "config.toml"
        text = re.sub(r"(?m)^serve_idle = .*\n", "", path.read_text())
        if value is not None:
            text = f'serve_idle = "{value}"\n' + text
        path.write_text(text)


def build(root: Path, name: str, url: str | None, code: Path) -> Home:
    """A mailbox of ENTRIES whitelist entries (plus LISTED), BLACKLISTED blacklisted, made by
    this checkout's `crtool init` and store code; sendmail /bin/true, rate limits lifted."""
    user_home = root / name
    user_home.mkdir()
    home = Home(user_home, code)
    args = [PYTHON, "-m", "crtool", "--home", str(home.home), "init", "--address", OWNER,
            "--maildir", str(user_home / "Maildir"), "--sendmail", "/bin/true"]
    if url:
        args += ["--database-url", url]
    subprocess.run(args, check=True, capture_output=True, cwd=REPO,
                   env={"PATH": QMAIL_PATH, "HOME": str(user_home)})
    config = home.home / "config.toml"
    config.write_text(re.sub(r"(?m)^challenge_global_limit = .*$",
                             "challenge_global_limit = 1000000000", config.read_text()))
    for sub in ("tmp", "new", "cur"):
        (user_home / "Maildir" / sub).mkdir(parents=True, exist_ok=True)
    from crtool import addresses, policy
    from crtool.store import lists
    from crtool.store.engine import make_engine, transaction

    engine = make_engine(url or f"sqlite:///{home.home / 'crtool.db'}")
    with transaction(engine) as session:
        patterns = (addresses.parse_pattern(p) for p in [LISTED, *_patterns(ENTRIES)])
        lists.bulk_import(session, OWNER, policy.WHITE, patterns, 0)
        lists.add(session, OWNER, policy.BLACK, addresses.parse_pattern(BLACKLISTED), "", 0)
    engine.dispose()
    return home


def copy(home: Home, name: str, code: Path) -> Home:
    target = home.user_home.parent / name
    shutil.copytree(home.user_home, target, symlinks=True)
    config = target / ".crtool" / "config.toml"
    config.write_text(config.read_text().replace(str(home.user_home), str(target)))
    if code != REPO:
        _drop_newer_settings(config, code)
    return Home(target, code)


def _drop_newer_settings(config: Path, code: Path) -> None:
    """Take out of `config` the settings `crtool init` writes today that the older `code`
    does not know (it refuses a config with an unknown setting), one at a time, as it names
    them; they are all optional, so the older crtool runs with its defaults."""
    check = ("import sys; from pathlib import Path; from crtool.config import load_settings; "
             "load_settings(Path(sys.argv[1]))")
    for _ in range(20):
        # Run in `code`: `python -c` puts the working directory first on the path.
        said = subprocess.run([PYTHON, "-c", check, str(config.parent)], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(code)},
                              cwd=code, check=False).stderr
        unknown = re.search(r"unknown setting '([a-z_]+)'", said)
        if unknown is None:
            return
        name = unknown.group(1)
        config.write_text("".join(line for line in config.read_text().splitlines(True)
                                  if not re.match(rf"\s*{name}\s*=", line)))


def prepare_confirms(home: Home, launcher: Path, count: int, message: Path) -> None:
    """`count` held and challenged messages, each with the confirm address its challenge
    carried (made from the row with crtool's own token code, since sendmail is /bin/true)."""
    senders = [f"confirmer{i}-{secrets.token_hex(3)}@remote.test" for i in range(count)]
    for sender in senders:
        run = spawn(home.argv(launcher), home.env(sender), message, home.user_home / "rss")
        assert run.code == 99, f"preparing a confirmation: exit {run.code}"
    from sqlalchemy import select

    from crtool import tokens
    from crtool.config import load_settings
    from crtool.store.engine import make_engine, transaction
    from crtool.store.models import Pending

    settings = load_settings(home.home)
    keys = tokens.secrets_of(tokens.load_keys(settings.keys_path))
    engine = make_engine(settings.database_url)
    with transaction(engine, write=False) as session:
        rows = session.execute(select(Pending).where(Pending.sender.in_(senders))).scalars()
        for row in rows:
            assert row.challenged_at is not None
            token = tokens.issue(keys, "confirm", OWNER, row.id, row.sender, row.challenged_at)
            home.confirms.append((row.sender, f"alice-confirm-{token}@example.test"))
    engine.dispose()
    assert len(home.confirms) == count


def wait_for_server(home: Home, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (home.home / "crtool.sock").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no server started for {home.home}")
        time.sleep(0.05)
    time.sleep(0.5)  # its warm-up done


def stop_server(home: Home) -> None:
    from crtool import autostart

    pid = autostart.running(str(home.home))
    if pid and pid > 0:
        os.kill(pid, 15)
        deadline = time.monotonic() + 30
        while autostart.running(str(home.home)) is not None and time.monotonic() < deadline:
            time.sleep(0.05)


def measure(root: Path, rounds: int, before: str) -> dict[str, object]:
    launcher = root / "crtool-launcher.py"
    launcher.write_text(LAUNCHER)
    message = root / "message.eml"
    message.write_bytes(MESSAGE)
    old_code = root / "before"
    old_code.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", before, "crtool", "templates",
                              "migrations"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old_code)], input=archive, check=True)
    # Both trees compiled, as an installed crtool is (pip writes the bytecode at install):
    # where PYTHONDONTWRITEBYTECODE is set, a tree without it would be compiled anew by every
    # delivery, about 15 ms of CPU here, and the comparison would measure that.
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(old_code / "crtool"),
                    str(REPO / "crtool")], check=True, capture_output=True)

    from sqlalchemy import create_engine, make_url, text

    schema = "perproc_" + secrets.token_hex(4)
    admin = create_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    pg_url = make_url(PG_URL).update_query_dict(
        {"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    homes: dict[tuple[str, str], Home] = {}
    try:
        sqlite_home = build(root, "sqlite_after", None, REPO)
        pg_home = build(root, "pg_after", pg_url, REPO)
        for db, base in (("sqlite", sqlite_home), ("pg", pg_home)):
            homes[(db, "after")] = base
            homes[(db, "before")] = copy(base, f"{db}_before", old_code)
            homes[(db, "on_demand")] = copy(base, f"{db}_on_demand", REPO)
        for (_, way), home in homes.items():
            home.set_serve_idle(None if way == "before" else "0s")
        for way in WAYS:
            prepare_confirms(homes[("sqlite", way)], launcher, rounds + 1, message)
        first: dict[str, Run] = {}
        for db in ("sqlite", "pg"):
            home = homes[(db, "on_demand")]
            home.set_serve_idle("10m")
            # The delivery that finds no server: in-process, then it starts one.
            first[db] = spawn(home.argv(launcher), home.env(LISTED), message, root / "rss")
            wait_for_server(home)
        return _rounds(root, homes, launcher, message, rounds, first)
    finally:
        for home in homes.values():
            stop_server(home)
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


def _rounds(root: Path, homes: dict[tuple[str, str], Home], launcher: Path, message: Path,
            rounds: int, first: dict[str, Run]) -> dict[str, object]:
    unique = itertools.count()
    rss = root / "rss"

    def delivery(home: Home, kind: str) -> Callable[[], tuple[Run, int]]:
        def one() -> tuple[Run, int]:
            if kind == "white":
                sender, recipient, expected = LISTED, OWNER, 0
            elif kind == "stranger":
                sender, recipient, expected = f"s{next(unique)}@remote{next(unique) % 50}.test", \
                    OWNER, 99
            else:
                (sender, recipient), expected = home.confirms.pop(), 99
            return spawn(home.argv(launcher), home.env(sender, recipient), message, rss), \
                expected
        return one

    jobs: dict[str, Callable[[], tuple[Run, int]]] = {
        "bare": lambda: (spawn(BARE, {"PATH": QMAIL_PATH}, message, rss), 0)}
    for kind in KINDS:
        db, what = kind.split("_")
        for way in WAYS:
            jobs[f"{way}:{kind}"] = delivery(homes[(db, way)], what)
    samples = {name: Samples() for name in jobs}
    order = random.Random(15)  # noqa: S311 - an order of runs, not a secret
    for job in jobs.values():  # one unmeasured run each: caches and .pyc files warm
        job()
    for _ in range(rounds):
        names = list(jobs)
        order.shuffle(names)
        for name in names:
            run, expected = jobs[name]()
            samples[name].runs.append(run)
            samples[name].wrong += run.code != expected
    bare = samples["bare"]
    table: dict[str, object] = {
        "bare": {"median_ms": round(bare.median("seconds") * 1000, 1),
                 "cpu_ms": round(bare.median("cpu") * 1000, 1),
                 "peak_rss_mib": round(bare.peak(), 1)}}
    for name, got in samples.items():
        if name == "bare":
            continue
        table[name] = {
            "median_ms": round(got.median("seconds") * 1000, 1),
            "x_bare": round(got.median("seconds") / bare.median("seconds"), 2),
            "cpu_ms": round(got.median("cpu") * 1000, 1),
            "cpu_x_bare": round(got.median("cpu") / bare.median("cpu"), 2),
            "peak_rss_mib": round(got.peak(), 1), "wrong": got.wrong}
    table["first_on_demand"] = {
        db: {"ms": round(run.seconds * 1000, 1), "x_bare": round(
            run.seconds / bare.median("seconds"), 2), "code": run.code}
        for db, run in first.items()}
    return table


def report(table: dict[str, object]) -> list[dict[str, object]]:
    bare = table["bare"]
    assert isinstance(bare, dict)
    print(f"\nper-process cost, ratio to bare ({bare['median_ms']} ms wall, {bare['cpu_ms']} ms "
          f"CPU, {bare['peak_rss_mib']} MiB); wall x (CPU x) peak MiB")
    print(f"{'scenario':17}" + "".join(f"{way:>26}" for way in WAYS) + "   goal")
    goals = []
    for kind in KINDS:
        cells = []
        for way in WAYS:
            got = table[f"{way}:{kind}"]
            assert isinstance(got, dict)
            flag = "!" if got["wrong"] else " "
            cells.append(f"{got['x_bare']:>8.2f}x ({got['cpu_x_bare']:5.2f}x) "
                         f"{got['peak_rss_mib']:5.1f}{flag}")
        print(f"{kind:17}" + "".join(f"{c:>26}" for c in cells) + f"   <= {GOALS[kind]}x")
        for way in ("after", "on_demand"):
            got = table[f"{way}:{kind}"]
            assert isinstance(got, dict)
            goals.append({"goal": f"{kind} {way} <= {GOALS[kind]}x bare",
                          "value": got["x_bare"], "met": got["x_bare"] <= GOALS[kind]})
    peak = max(got["peak_rss_mib"] for name, got in table.items()  # type: ignore[index]
               if name.startswith("after:"))
    goals.append({"goal": f"peak RSS of any in-process delivery <= {RSS_GOAL_MIB} MiB",
                  "value": peak, "met": peak <= RSS_GOAL_MIB})
    first = table["first_on_demand"]
    assert isinstance(first, dict)
    print("\nthe delivery that starts the server (in-process, then the start): " + ", ".join(
        f"{db} {got['ms']} ms = {got['x_bare']}x" for db, got in first.items()))
    print(f"\n{'goal':48} value   result")
    for goal in goals:
        print(f"{goal['goal']:48} {goal['value']:<7} {'met' if goal['met'] else 'NOT MET'}")
    return goals


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m bench.perprocess", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--before", default=BEFORE, help="the git revision to compare with")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 7)
    load_before = os.getloadavg()
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="crtool-perprocess-"))
    try:
        table = measure(root, rounds, args.before)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    goals = report(table)
    results = {"scenarios": table, "goals": goals, "machine": {
        "cpus": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg(),
        "rounds": rounds, "before": args.before, "entries": ENTRIES,
        "python": sys.version.split()[0], "seconds": round(time.perf_counter() - started, 1)}}
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.json}; load average {load_before[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    return results


if __name__ == "__main__":
    main()
