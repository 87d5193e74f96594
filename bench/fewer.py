"""The richer whitelist and `crtool learn`, measured.

1. The look-up of one message against every kind of entry (crtool/entries.py: exact, domain,
   wildcard, `list:` and `from:` entries) at 10, 100k and 1M entries, hits of each kind and a
   miss, through both paths a delivery may take: SQLAlchemy (`lists.listing_for`) and the
   standard library's sqlite3 (the fast path's `fastpath.lookup` + `entries.decide`). Microseconds
   of CPU time per look-up (time.process_time), median of rounds. The table holds 80% exact
   addresses, 5% domains, 10% wildcards, 4% lists and 1% `from:` entries; a 1M table is written
   straight with SQL (rows exactly as crtool's store writes them). The query plan of the
   statement is printed: both halves must use an index. One more row measures a domain with
   1,000 wildcard entries of its own, the one case where the cost grows (with that count).
2. `crtool learn` on a generated mbox of 1 GiB (50 MiB with --quick) under /tmp, deleted after:
   wall time, MiB/s, messages/s and peak RSS (GNU time), as a whole process.

`python -m bench.fewer [--quick]`; `make bench` runs it last and writes bench/fewer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.homes import CRTOOL, OWNER
from crtool.config import Settings

RESULTS = Path(__file__).resolve().parent / "fewer.json"
TIME = "/usr/bin/time"


def _row(i: int) -> tuple[str, str, str, str | None]:
    """(list, key, kind, probe) of the i-th generated entry."""
    slot = i % 100
    if slot < 80:
        return "white", f"user{i}@d{i % 5000}.example.net", "exact", None
    if slot < 85:
        return "white", f"@d{i}.example.com", "domain", None
    if slot < 95:
        return "white", f"glob:news{i}-*@w{i}.example.org", "wildcard", f"@w{i}.example.org"
    if slot < 99:
        return "white", f"list:list{i}.lists.example.org", "list", None
    return "white", f"from:poster{i}@f{i}.example.com", "from", None


def build(root: Path, name: str, count: int, crowded: int = 0) -> Path:
    """A home made by the real `crtool init`, its list filled with SQL."""
    home = root / name
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root)}
    subprocess.run([CRTOOL, "--home", str(home), "init", "--address", OWNER, "--maildir",
                    str(root / f"{name}-Maildir"), "--sendmail", "/bin/true"],
                   check=True, capture_output=True, env=env)
    db = home / "crtool.db"
    connection = sqlite3.connect(db)
    rows = ((OWNER, list_name, key, kind, "", 0, "owner", probe)
            for list_name, key, kind, probe in map(_row, range(count)))
    samples = [(OWNER, "white", key, kind, "", 0, "owner", probe) for key, kind, probe in (
        ("friend@example.org", "exact", None), ("@friends.example.com", "domain", None),
        ("glob:news-*@wild.example.org", "wildcard", "@wild.example.org"),
        ("list:announce.lists.example.org", "list", None),
        ("from:poster@forum.example.com", "from", None))]
    crowd = ((OWNER, "white", f"glob:team{i}-*@crowded.example", "wildcard", "", 0, "owner",
              "@crowded.example") for i in range(crowded))
    with connection:
        connection.executemany(
            "INSERT INTO address_entries (owner, list_name, key, kind, note, created_at, "
            "source, probe) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        connection.executemany(
            "INSERT INTO address_entries (owner, list_name, key, kind, note, created_at, "
            "source, probe) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", crowd)
        connection.executemany(
            "INSERT INTO address_entries (owner, list_name, key, kind, note, created_at, "
            "source, probe) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", samples)
    connection.execute("ANALYZE")
    connection.close()
    return db


def _cases() -> dict[str, tuple[str, bytes]]:
    """(envelope sender, head) of a message that hits each kind, and of a miss whose domain
    has a wildcard entry (so both halves of the statement find rows to look at)."""
    head = b"From: stranger@nowhere.test\nSubject: s\n"
    return {
        "exact": ("friend@example.org", head),
        "domain": ("someone@friends.example.com", head),
        "wildcard": ("news-daily@wild.example.org", head),
        "list": ("bounces@lists.example.org", b"List-Id: <announce.lists.example.org>\n" + head),
        "from": ("fwd@forwarder.test", b"From: poster@forum.example.com\nSubject: s\n"),
        "miss": ("nobody@wild.example.org", head),
    }


def _time(work: Callable[[], object], repeat: int, rounds: int) -> float:
    """Median microseconds of CPU time per call."""
    samples = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(repeat):
            work()
        samples.append((time.process_time() - start) / repeat * 1e6)
    return statistics.median(samples)


def lookups(db: Path, repeat: int, rounds: int, cases: dict[str, tuple[str, bytes]]
            ) -> dict[str, dict[str, float]]:
    from crtool import addresses, entries, fastpath, policy
    from crtool.envelope import Envelope
    from crtool.message import parse_head
    from crtool.store import lists
    from crtool.store.engine import make_engine, transaction

    engine = make_engine(f"sqlite:///{db}")
    out: dict[str, dict[str, float]] = {}
    for name, (sender, head) in cases.items():
        facts = parse_head(head)
        message = policy.Incoming(sender=sender, sender_valid=True, recipient=OWNER,
                                  facts=facts, owner=addresses.OwnerAddress(OWNER))
        query = entries.query(sender, facts)
        with transaction(engine, write=False) as session:
            found = lists.listing_for(session, OWNER, message)
            full = _time(lambda m=message: lists.listing_for(session, OWNER, m),  # type: ignore[misc]
                         repeat, rounds)
        expected_hit = name != "miss"
        assert (found is not None) == expected_hit, (name, found)
        fast_found = fastpath.whitelisted(
            _settings(db), Envelope(sender, OWNER), facts)
        assert (fast_found is not None) == expected_hit, (name, fast_found)

        def fast(q: entries.Query = query) -> object:
            rows = fastpath.lookup(db, OWNER, q.keys, 30.0, q.probes) or []
            return entries.decide(rows, q)

        out[name] = {"sqlalchemy_us": round(full, 1), "sqlite3_us": round(_time(
            fast, repeat, rounds), 1)}
    engine.dispose()
    return out


def pg_lookups(url: str, sizes: list[int], repeat: int, rounds: int) -> dict[str, object]:
    """The same look-ups on PostgreSQL (`--postgresql URL`), in a schema of their own dropped
    after: wall-clock microseconds (the work is in the server), one table grown 10 -> 100k ->
    1M with COPY, ANALYZEd at each size; and the plan PostgreSQL chose at the largest."""
    import secrets

    from sqlalchemy import create_engine, make_url, text

    from crtool import addresses, policy
    from crtool.message import parse_head
    from crtool.store import lists, schema
    from crtool.store.engine import make_engine, transaction

    name = "bench_" + secrets.token_hex(4)
    admin = create_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {name}"))
    scoped = make_url(url).update_query_dict({"options": f"-csearch_path={name}"})
    engine = make_engine(scoped.render_as_string(hide_password=False))
    out: dict[str, object] = {}
    try:
        schema.upgrade(engine)
        columns = "owner, list_name, key, kind, note, created_at, source, probe"
        samples = [("friend@example.org", "exact", None), ("@friends.example.com", "domain",
                    None), ("glob:news-*@wild.example.org", "wildcard", "@wild.example.org"),
                   ("list:announce.lists.example.org", "list", None),
                   ("from:poster@forum.example.com", "from", None)]
        written = 0
        for count in sizes:
            raw = engine.raw_connection()
            try:
                cursor = raw.cursor()
                with cursor.copy(f"COPY address_entries ({columns}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                    if written == 0:
                        for key, kind, probe in samples:
                            copy.write_row((OWNER, "white", key, kind, "", 0, "owner", probe))
                    for i in range(written, count):
                        list_name, key, kind, probe = _row(i)
                        copy.write_row((OWNER, list_name, key, kind, "", 0, "owner", probe))
                raw.commit()
            finally:
                raw.close()
            written = count
            with engine.begin() as connection:
                connection.execute(text("ANALYZE address_entries"))
            figures: dict[str, float] = {}
            for case, (sender, head) in _cases().items():
                message = policy.Incoming(sender=sender, sender_valid=True, recipient=OWNER,
                                          facts=parse_head(head),
                                          owner=addresses.OwnerAddress(OWNER))
                with transaction(engine, write=False) as session:
                    found = lists.listing_for(session, OWNER, message)
                    assert (found is not None) == (case != "miss"), (case, found)
                    samples_us = []
                    for _ in range(rounds):
                        start = time.perf_counter()
                        for _ in range(repeat):
                            lists.listing_for(session, OWNER, message)
                        samples_us.append((time.perf_counter() - start) / repeat * 1e6)
                figures[case] = round(statistics.median(samples_us), 1)
            out[str(count)] = figures
            print(f"PostgreSQL {count:>9} entries, wall µs: {figures}", flush=True)
        with engine.connect() as connection:
            statement = lists.entry_statement(OWNER, ["nobody@wild.example.org",
                                                      "@wild.example.org"],
                                              ["@wild.example.org"])
            compiled = statement.compile(engine, compile_kwargs={"literal_binds": True})
            out["query_plan"] = [row[0] for row in connection.execute(
                text("EXPLAIN " + str(compiled)))]
        print("PostgreSQL plan:", *out["query_plan"], sep="\n  ")  # type: ignore[misc]
    finally:
        engine.dispose()
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {name} CASCADE"))
        admin.dispose()
    return out


def _settings(db: Path) -> Settings:
    return Settings(home=db.parent, address=OWNER, maildir=db.parent / "Maildir",
                    database_url=f"sqlite:///{db}")


def plan(db: Path) -> list[str]:
    from crtool import lookup_sql

    connection = sqlite3.connect(db)
    rows = connection.execute("EXPLAIN QUERY PLAN " + lookup_sql.sqlite_entry(5, 2),
                              [OWNER, "a", "b", "c", "d", "e", OWNER, "@x", "@y"]).fetchall()
    connection.close()
    return [str(row[-1]) for row in rows]


def write_mbox(path: Path, size: int, senders: int = 50_000) -> int:
    """An mbox of about `size` bytes: messages of about 8 KiB from `senders` people."""
    body = (b"All work and no play makes Jack a dull boy, said the line of text.\n" * 110)
    count = 0
    written = 0
    with open(path, "wb") as handle:
        while written < size:
            i = count % senders
            message = (f"From person{i}@host{i % 997}.example.net Sat Jan  3 01:05:34 2026\n"
                       f"Return-Path: <person{i}@host{i % 997}.example.net>\n"
                       f"Received: from mx{i % 7}.example.net by mail.example.test\n"
                       f"From: Person {i} <person{i}@host{i % 997}.example.net>\n"
                       f"To: alice@example.test\nSubject: message {count}\n"
                       f"Message-ID: <{count}@host.example.net>\n"
                       f"Date: Sat, 3 Jan 2026 01:05:34 +0000\n\n").encode() + body + b"\n"
            handle.write(message)
            written += len(message)
            count += 1
    return count


def learn(root: Path, size: int) -> dict[str, float]:
    home = root / "learner"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root)}
    subprocess.run([CRTOOL, "--home", str(home), "init", "--address", OWNER, "--maildir",
                    str(root / "learner-Maildir"), "--sendmail", "/bin/true"],
                   check=True, capture_output=True, env=env)
    mbox = root / "big.mbox"
    messages = write_mbox(mbox, size)
    actual = mbox.stat().st_size
    rss_file = root / "rss.txt"
    started = time.perf_counter()
    result = subprocess.run([TIME, "-f", "%M", "-o", str(rss_file), CRTOOL, "--home", str(home),
                             "learn", str(mbox)], capture_output=True, env=env, check=False)
    seconds = time.perf_counter() - started
    mbox.unlink()
    if result.returncode != 0:
        raise SystemExit(f"learn failed: {result.stderr.decode()}")
    print(result.stdout.decode().strip())
    peak = int(rss_file.read_text().split()[-1]) / 1024
    return {"mbox_mib": round(actual / 2**20, 1), "messages": messages,
            "seconds": round(seconds, 1), "mib_per_s": round(actual / 2**20 / seconds, 1),
            "messages_per_s": round(messages / seconds), "peak_rss_mib": round(peak, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fewer", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small and short")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--postgresql", metavar="URL", default="",
                        help="also time the look-up on this PostgreSQL database (a schema of "
                        "its own, dropped after), e.g. $CRTOOL_TEST_DATABASE_URL")
    parser.add_argument("--lookup-only", action="store_true", help="skip the learn run")
    args = parser.parse_args(argv)
    sizes = [10, 2_000, 20_000] if args.quick else [10, 100_000, 1_000_000]
    repeat, rounds = (200, 3) if args.quick else (1000, 5)
    mbox_size = (50 if args.quick else 1024) * 2**20
    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="crtool-fewer-", dir="/tmp"))
    results: dict[str, object] = {}
    try:
        table: dict[str, object] = {}
        for count in sizes:
            started = time.perf_counter()
            db = build(root, f"h{count}", count)
            built = time.perf_counter() - started
            table[str(count)] = lookups(db, repeat, rounds, _cases())
            print(f"{count:>9} entries (built in {built:.0f} s): {table[str(count)]}",
                  flush=True)
            if count == sizes[-1]:
                results["query_plan"] = plan(db)
            db.unlink()
        crowded = build(root, "crowded", 10, crowded=1000)
        table["crowded_domain_1000_wildcards"] = lookups(crowded, repeat, rounds, {
            "miss": ("nobody@crowded.example", b"Subject: s\n"),
            "wildcard": ("team999-x@crowded.example", b"Subject: s\n")})
        results["lookup"] = table
        print(f"one domain with 1000 wildcard entries: {table['crowded_domain_1000_wildcards']}")
        print("query plan:", *results["query_plan"], sep="\n  ")  # type: ignore[misc]
        if args.postgresql:
            results["lookup_postgresql"] = pg_lookups(args.postgresql, sizes, repeat // 5,
                                                      rounds)
        if not args.lookup_only:
            print("learn ...", flush=True)
            results["learn"] = learn(root, mbox_size)
            print(results["learn"])
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    results["machine"] = {"cpus": os.cpu_count(), "load_before": load_before,
                          "load_after": os.getloadavg(), "python": sys.version.split()[0],
                          "quick": args.quick}
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.json}; load average {load_before[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
