"""Hub mode's throughput: `crtool lmtp` at 10 concurrent LMTP connections of mixed mail (85 %
whitelisted, 15 % strangers, each held and challenged), on SQLite and on PostgreSQL, beside a
bare aiosmtpd LMTP sink (accept and discard) driven the same way in the same run: the sink's rate
is the ceiling this machine allows the protocol in Python today. Also the server's peak RSS under
that load (VmHWM), and a profile of where its time goes (cProfile in every thread of an
in-process server, the event loop's and each delivery worker's, merged).

Run alone with `python -m bench.lmtp [--quick]`; `make bench` runs it after the rest.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import secrets
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.homes import CRTOOL, PYTHON

RESULTS = Path(__file__).resolve().parent / "results-lmtp.json"
OWNERS = 20
ENTRIES = 1_000
CONCURRENCY = 10
# The server as the sample config runs it on this 2-core machine: a process per core.
PROCESSES = 2
WORKERS = 4
PG_URL = os.environ.get("CRTOOL_BENCH_DATABASE_URL") or os.environ.get(
    "CRTOOL_TEST_DATABASE_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def owner(i: int) -> str:
    return f"owner{i % OWNERS}@example.test"


def friend(i: int) -> str:
    return f"friend{i % ENTRIES}@example.org"


def message(i: int, sender: str, recipient: str) -> bytes:
    return (f"From: {sender}\r\nTo: {recipient}\r\nSubject: message {i}\r\n"
            f"Message-ID: <bench{i}.{secrets.token_hex(4)}@remote.test>\r\n"
            f"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\n"
            + "Are you free on Friday? Let me know.\r\n" * 10).encode()


def job(i: int) -> tuple[str, str]:
    """The i-th message of the mix: 17 of 20 from a whitelisted friend, 3 from a stranger."""
    if i % 20 < 17:
        return friend(i * 7), owner(i)
    return f"stranger{i}@remote{i % 50}.test", owner(i)


@dataclass
class Hub:
    root: Path
    url: str

    @property
    def config(self) -> Path:
        return self.root / "crtool.toml"

    @property
    def socket(self) -> Path:
        return self.root / "lmtp.sock"


def make_hub(root: Path, url: str) -> Hub:
    """A hub with OWNERS owners (Maildirs in root), each whitelisting ENTRIES friends;
    challenges go to /bin/true and the rate limits are lifted, so every stranger costs a
    full hold and challenge."""
    root.mkdir(parents=True)
    hub = Hub(root, url)
    hub.config.write_text(
        f'database_url = "{url}"\nsendmail = "/bin/true"\n'
        "challenge_global_limit = 1000000000\n"
        f'[lmtp]\nlisten = "unix:{hub.socket}"\nprocesses = {PROCESSES}\n'
        f"workers = {WORKERS}\n")
    subprocess.run([CRTOOL, "--config", str(hub.config), "init"], check=True,
                   capture_output=True)
    from crtool import addresses, policy
    from crtool.store import lists
    from crtool.store import owners as rows
    from crtool.store.engine import make_engine, transaction

    engine = make_engine(url)
    with transaction(engine) as session:
        for i in range(OWNERS):
            rows.put(session, owner(i), str(root / f"mail{i}"), None, "", 0)
            patterns = (addresses.parse_pattern(friend(j)) for j in range(ENTRIES))
            lists.bulk_import(session, owner(i), policy.WHITE, patterns, 0)
    if engine.dialect.name == "postgresql":
        # A live hub's tables were analysed and its import's pages written out long ago;
        # here the autovacuum daemon and the next checkpoint would do both during the run.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE address_entries, owners")
            connection.exec_driver_sql("CHECKPOINT")
    engine.dispose()
    return hub


def start(argv: list[str], socket_path: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as handle:
        process = subprocess.Popen(argv, stdout=handle, stderr=handle)
    deadline = time.monotonic() + 60
    while not socket_path.is_socket():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{argv[:3]} did not start: {log.read_text()[-500:]}")
        time.sleep(0.05)
    time.sleep(0.2)
    return process


def peak_rss_mib(pid: int, everyone: bool = False) -> float:
    """The peak RSS (VmHWM) of the largest of `pid` and its children (the server processes
    of a hub with `processes` above 1 are the supervising parent's), or with `everyone`
    their sum, which counts twice the pages they share since the fork."""
    sizes = []
    for each in [pid, *_children(pid)]:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                sizes.append(int(line.split()[1]) / 1024)
    if not sizes:
        return -1.0
    return sum(sizes) if everyone else max(sizes)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def drive(socket_path: Path, count: int) -> dict[str, float]:
    """`count` messages over CONCURRENCY connections, one transaction each; the rate."""
    results: list[int] = []
    lock = threading.Lock()
    messages = [(i, *job(i)) for i in range(count)]

    def connection(part: list[tuple[int, str, str]]) -> None:
        codes = []
        with smtplib.LMTP(str(socket_path), timeout=120) as client:
            client.ehlo()
            for i, sender, recipient in part:
                try:
                    refused = client.sendmail(sender, [recipient], message(i, sender, recipient))
                    codes.append(250 if not refused else 550)
                except smtplib.SMTPException as error:
                    codes.append(getattr(error, "smtp_code", 0))
        with lock:
            results.extend(codes)

    threads = [threading.Thread(target=connection, args=(messages[n::CONCURRENCY],))
               for n in range(CONCURRENCY)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ok = results.count(250)
    return {"messages": count, "accepted": ok, "seconds": round(elapsed, 2),
            "per_second": round(count / elapsed, 1), "not_250": count - ok}


def smtp_source(socket_path: Path, count: int) -> dict[str, float] | None:
    """Postfix's own load generator over LMTP (whitelisted mail only: it has one sender)."""
    tool = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not os.path.exists(tool):
        return None
    started = time.perf_counter()
    result = subprocess.run([tool, "-L", "-s", str(CONCURRENCY), "-m", str(count),
                             "-f", friend(0), "-t", owner(0), f"unix:{socket_path}"],
                            capture_output=True, timeout=600, check=False)
    elapsed = time.perf_counter() - started
    return {"messages": count, "seconds": round(elapsed, 2),
            "per_second": round(count / elapsed, 1), "exit": result.returncode}


SINK = """
import asyncio, sys
from aiosmtpd.lmtp import LMTP
class Discard:
    async def handle_DATA(self, server, session, envelope):
        return "\\r\\n".join("250 2.0.0 discarded" for _ in envelope.rcpt_tos)
async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: LMTP(Discard(), loop=loop), sys.argv[1])
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""

# The floor of any durable delivery: no decision, no database, each message only written
# into a Maildir as crtool writes one (tmp/, fsync, link into new/, fsync the directory), in as
# many processes sharing one socket as the hub runs, each with a pool of threads for the
# writes. What it cannot reach, no delivery agent that keeps the mail it answers 250 for can.
MAILDIR_SINK = """
import asyncio, os, socket, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from aiosmtpd.lmtp import LMTP
from crtool import maildir
path, box, processes, workers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listening.bind(path)
listening.listen(100)
for _ in range(processes - 1):
    if os.fork() == 0:
        break
pool = ThreadPoolExecutor(workers)
class Keep:
    async def handle_DATA(self, server, session, envelope):
        loop = asyncio.get_running_loop()
        data = envelope.original_content.replace(b"\\r\\n", b"\\n")
        for _ in envelope.rcpt_tos:
            await loop.run_in_executor(pool, maildir.deliver, box, [data])
        return "\\r\\n".join("250 2.0.0 kept" for _ in envelope.rcpt_tos)
async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: LMTP(Keep(), loop=loop), sock=listening)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""

PROFILED = """
import asyncio, cProfile, dataclasses, sys, threading
from pathlib import Path
from crtool import lmtp, owners
profiles = []
local = threading.local()
deliver = lmtp.Hub.deliver
def profiled(self, *args):
    profile = getattr(local, "profile", None)
    if profile is None:
        profile = local.profile = cProfile.Profile()
        profiles.append(profile)
    return profile.runcall(deliver, self, *args)
lmtp.Hub.deliver = profiled
loop_profile = cProfile.Profile()
profiles.append(loop_profile)
system = owners.load_system(Path(sys.argv[1]))
# One process, profiled in every thread: the profile of one of the hub's server processes.
system = dataclasses.replace(system, lmtp=dataclasses.replace(system.lmtp, processes=1))
loop_profile.enable()
lmtp.run(system, system.lmtp.listen)
loop_profile.disable()
import pstats
stats = pstats.Stats(profiles[0])
for profile in profiles[1:]:
    stats.add(profile)
stats.dump_stats(sys.argv[2])
"""


def profile_summary(path: Path, top: int = 25) -> list[dict[str, object]]:
    """The functions with the most time of their own, and their cumulative time."""
    stats = pstats.Stats(str(path), stream=io.StringIO())
    rows = []
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    for (filename, line, name), (_, calls, own, cumulative, _) in \
            stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{_short(filename)}:{line}({name})", "calls": calls,
                     "own_s": round(own, 3), "own_share": round(own / total, 3) if total else 0,
                     "cumulative_s": round(cumulative, 3)})
    rows.sort(key=lambda r: -float(r["own_s"]))  # type: ignore[arg-type]
    return rows[:top]


def _short(filename: str) -> str:
    for marker in ("site-packages/", "crtool/", "lib/python3"):
        if marker in filename:
            return filename[filename.index(marker):]
    return filename


def by_area(path: Path) -> dict[str, float]:
    """Own time grouped by where the code lives: crtool, SQLAlchemy, the database driver,
    aiosmtpd/asyncio, the email parser, fsync and the rest."""
    stats = pstats.Stats(str(path), stream=io.StringIO())
    areas: dict[str, float] = {}
    for (filename, _, name), (_, _, own, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        if name in ("<built-in method posix.fsync>",):
            area = "fsync"
        elif "sqlalchemy" in filename:
            area = "sqlalchemy"
        elif "psycopg" in filename or "sqlite3" in name or "sqlite3" in filename:
            area = "database driver"
        elif "aiosmtpd" in filename or "asyncio" in filename or "selectors" in filename:
            area = "aiosmtpd + asyncio"
        elif "/email/" in filename:
            area = "email parser"
        elif "crtool" in filename:
            area = "crtool"
        elif "subprocess" in filename or "fork_exec" in name or "waitpid" in name:
            area = "sendmail subprocess"
        elif "acquire" in name or "wait" in name:
            area = "waiting (locks, queues)"
        else:
            area = "other"
        areas[area] = areas.get(area, 0.0) + own
    total = sum(areas.values()) or 1.0
    return {k: round(v / total, 3) for k, v in sorted(areas.items(), key=lambda kv: -kv[1])}


def pg_schema_url(schema: str) -> str:
    from sqlalchemy import make_url

    url = make_url(PG_URL)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False)


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m bench.lmtp", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer messages")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    count = args.messages or (300 if args.quick else 3000)
    root = Path(tempfile.mkdtemp(prefix="crtool-bench-lmtp-"))
    results: dict[str, object] = {"messages_per_run": count, "concurrency": CONCURRENCY,
                                  "owners": OWNERS, "whitelist_entries_per_owner": ENTRIES,
                                  "server_processes": PROCESSES, "workers_per_process": WORKERS,
                                  "mix": "85% whitelisted, 15% strangers (held + challenged)"}
    schema = "bench_" + secrets.token_hex(4)
    admin = None
    try:
        print("hub mode: building hubs ...", flush=True)
        hubs = {"sqlite": make_hub(root / "sqlite", f"sqlite:///{root / 'sqlite' / 'hub.db'}")}
        try:
            from sqlalchemy import create_engine, text

            admin = create_engine(PG_URL)
            with admin.begin() as connection:
                connection.execute(text(f"CREATE SCHEMA {schema}"))
            hubs["postgresql"] = make_hub(root / "postgresql", pg_schema_url(schema))
        except Exception as error:  # noqa: BLE001 - reported, the SQLite leg still runs
            results["postgresql_skipped"] = str(error).splitlines()[0]
            print(f"PostgreSQL leg skipped: {results['postgresql_skipped']}")
        sink_socket = root / "sink.sock"
        sink = start([PYTHON, "-c", SINK, str(sink_socket)], sink_socket, root / "sink.log")
        try:
            drive(sink_socket, 200)  # warm up
            results["sink"] = drive(sink_socket, count)
            results["sink"]["peak_rss_mib"] = round(peak_rss_mib(sink.pid), 1)  # type: ignore[index]
        finally:
            stop(sink)
        print(f"bare aiosmtpd LMTP sink: {results['sink']}", flush=True)
        kept_socket = root / "kept.sock"
        kept = start([PYTHON, "-c", MAILDIR_SINK, str(kept_socket), str(root / "kept"),
                      str(PROCESSES), str(WORKERS)], kept_socket, root / "kept.log")
        try:
            drive(kept_socket, 200)  # warm up
            results["maildir_sink"] = drive(kept_socket, count)
            results["maildir_sink"]["share_of_sink"] = round(  # type: ignore[index]
                results["maildir_sink"]["per_second"]  # type: ignore[index]
                / results["sink"]["per_second"], 3)  # type: ignore[index]
        finally:
            for child in _children(kept.pid):
                os.kill(child, signal.SIGTERM)
            stop(kept)
        print(f"Maildir-only sink: {results['maildir_sink']}", flush=True)
        for name, hub in hubs.items():
            server = start([CRTOOL, "--config", str(hub.config), "lmtp"], hub.socket,
                           hub.root / "lmtp.log")
            try:
                drive(hub.socket, 100)  # warm up: engines, templates, key ring
                figures = drive(hub.socket, count)
                figures["peak_rss_mib"] = round(peak_rss_mib(server.pid), 1)
                figures["peak_rss_mib_all_processes"] = round(
                    peak_rss_mib(server.pid, everyone=True), 1)
                figures["share_of_sink"] = round(
                    figures["per_second"] / results["sink"]["per_second"], 3)  # type: ignore[index]
                source = smtp_source(hub.socket, count // 3)
                if source is not None:
                    figures["smtp_source_whitelisted_only"] = source  # type: ignore[assignment]
            finally:
                stop(server)
            results[name] = figures
            print(f"crtool lmtp on {name}: {figures}", flush=True)
        # Where the time goes: the SQLite hub once more, in-process, profiled.
        hub = hubs["sqlite"]
        out = root / "lmtp.prof"
        server = start([PYTHON, "-c", PROFILED, str(hub.config), str(out)], hub.socket,
                       hub.root / "profiled.log")
        try:
            results["profiled_run"] = drive(hub.socket, max(count // 3, 200))
        finally:
            stop(server)
        if out.exists():
            results["profile_by_area"] = by_area(out)
            results["profile_top_own_time"] = profile_summary(out)
            shutil.copy(out, args.json.with_suffix(".prof"))
    finally:
        if admin is not None:
            from sqlalchemy import text

            with admin.begin() as connection:
                connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            admin.dispose()
        shutil.rmtree(root, ignore_errors=True)
    report(results)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.json}")
    return results


def report(results: dict[str, object]) -> None:
    sink = results["sink"]
    print(f"\nhub mode, {results['messages_per_run']} messages at concurrency "
          f"{results['concurrency']}, {results['mix']}:")
    print(f"  bare aiosmtpd LMTP sink   {sink['per_second']:8.1f} /s")  # type: ignore[index]
    kept = results.get("maildir_sink")
    if isinstance(kept, dict):
        print(f"  Maildir-only sink         {kept['per_second']:8.1f} /s "
              f"({kept['share_of_sink']:.0%} of the sink: the floor of a durable delivery)")
    for name in ("sqlite", "postgresql"):
        figures = results.get(name)
        if not isinstance(figures, dict):
            continue
        goal_rate = "met" if figures["per_second"] >= 300 else "NOT MET"
        goal_share = "met" if figures["share_of_sink"] >= 0.5 else "NOT MET"
        print(f"  crtool lmtp, {name:11}  {figures['per_second']:8.1f} /s "
              f"({figures['share_of_sink']:.0%} of the sink; goals >= 300/s {goal_rate}, "
              f">= 50% {goal_share}); peak RSS {figures['peak_rss_mib']} MiB a process, "
              f"{figures.get('peak_rss_mib_all_processes')} MiB all; "
              f"{figures['not_250']} not 250")
        source = figures.get("smtp_source_whitelisted_only")
        if source:
            print(f"    smtp-source -L (Postfix's generator, whitelisted only): "
                  f"{source['per_second']} /s")
    areas = results.get("profile_by_area")
    if isinstance(areas, dict):
        print("  where the time goes (own time, all threads): " +
              ", ".join(f"{k} {v:.0%}" for k, v in areas.items()))


if __name__ == "__main__":
    main()
    sys.exit(0)
