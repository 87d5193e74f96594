"""Requests per second of `crtool web` (waitress, the real process) against its own bare route.

Three routes of the same running server, in interleaved rounds: `/hello` (returns "hello": the
ceiling of Flask in waitress on this machine today), `GET /c/<token>` (the confirm page a
stranger opens: token parse, one row, MAC check, template) and `/` (the owner's queue, with the
mailbox's 100,000 held messages: counts by reason, the newest of each reason, the 30-day chart).
Clients keep their connections alive, CLIENTS at a time, as a browser and a proxy would.
"""

from __future__ import annotations

import http.client
import re
import socket
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.homes import CRTOOL, OWNER, Home

CLIENTS = 4
STRANGER = "bench-stranger@remote.test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _confirm_token(home: Home) -> str:
    """A stranger's message held (and challenged) by the real `crtool deliver`, and its confirm
    token made as the challenge makes it."""
    from crtool import tokens
    from crtool.store import pending
    from crtool.store.engine import make_engine, transaction

    message = b"From: bench-stranger@remote.test\nSubject: Lunch?\n\nHello\n"
    done = subprocess.run([CRTOOL, "deliver"], input=message, env=home.env(STRANGER),
                          capture_output=True, check=False)
    assert done.returncode == 99, done.stderr
    engine = make_engine(f"sqlite:///{home.home / 'crtool.db'}")
    with transaction(engine, write=False) as session:
        [row] = pending.held_batch(session, OWNER, STRANGER, 2, None)
    engine.dispose()
    assert row.challenged_at is not None
    keys = tokens.secrets_of(tokens.load_keys(home.home / "keys"))
    return tokens.issue(keys, "confirm", OWNER, row.id, row.sender, row.challenged_at)


def _get(connection: http.client.HTTPConnection, path: str, cookie: str) -> int:
    connection.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    answer = connection.getresponse()
    answer.read()
    return answer.status


def _rate(port: int, path: str, cookie: str, seconds: float) -> tuple[float, int]:
    """Requests per second over `seconds` from CLIENTS keep-alive clients; and how many
    answers were not 200."""
    deadline = time.perf_counter() + seconds

    def client(_: int) -> tuple[int, int]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        done = wrong = 0
        while time.perf_counter() < deadline:
            if _get(connection, path, cookie) != 200:
                wrong += 1
            done += 1
        connection.close()
        return done, wrong

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(client, range(CLIENTS)))
    elapsed = time.perf_counter() - started
    return sum(d for d, _ in results) / elapsed, sum(w for _, w in results)


def measure(home: Home, log: Path, rounds: int, seconds: float,
            held: int) -> dict[str, object]:
    """Start `crtool web` for `home`, measure the three routes, stop it."""
    config = home.home / "config.toml"
    port = _free_port()
    text = re.sub(r"(?m)^web_rate_limit = .*$", "web_rate_limit = 0", config.read_text())
    text = re.sub(r"(?m)^web_url = .*$", f'web_url = "http://127.0.0.1:{port}"', text)
    config.write_text(text)
    token = _confirm_token(home)
    with open(log, "ab") as handle:
        server = subprocess.Popen([CRTOOL, "--home", str(home.home), "web", "--listen",
                                   f"127.0.0.1:{port}"], stdin=subprocess.DEVNULL,
                                  stdout=handle, stderr=handle, env=home.command_env())
    try:
        _wait_until_up(port, server, log)
        cookie = _log_in(home, port)
        routes = {"hello": ("/hello", ""), "confirm_page": (f"/c/{token}", ""),
                  "queue_100k": ("/", cookie)}
        for path, with_cookie in routes.values():  # one warm-up each; each must answer 200
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            assert _get(connection, path, with_cookie) == 200, path
            connection.close()
        rates: dict[str, list[float]] = {name: [] for name in routes}
        wrong = dict.fromkeys(routes, 0)
        for _ in range(rounds):
            for name, (path, with_cookie) in routes.items():
                per_second, bad = _rate(port, path, with_cookie, seconds)
                rates[name].append(per_second)
                wrong[name] += bad
    finally:
        server.terminate()
        server.wait(timeout=60)
    median = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "clients": CLIENTS, "rounds": rounds, "seconds_per_run": seconds, "held": held,
        "requests_per_second": {k: round(v, 1) for k, v in median.items()},
        "share_of_hello": {k: round(v / median["hello"], 3) for k, v in median.items()},
        "not_200": wrong,
    }


def _wait_until_up(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            if _get(connection, "/hello", "") == 200:
                return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"crtool web did not start: {log.read_text()[-500:]}")
        time.sleep(0.1)


def _log_in(home: Home, port: int) -> str:
    """The owner's session cookie, from a link `crtool web login-link` printed."""
    link = subprocess.run([CRTOOL, "--home", str(home.home), "web", "login-link"],
                          capture_output=True, check=True, env=home.command_env()).stdout
    path = "/" + link.decode().strip().split("/", 3)[3]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path)
    answer = connection.getresponse()
    answer.read()
    assert answer.status == 200, answer.status
    cookie = answer.getheader("Set-Cookie", "")
    connection.close()
    return cookie.split(";", 1)[0]


def print_report(results: dict[str, object]) -> None:
    rates = results["requests_per_second"]
    shares = results["share_of_hello"]
    assert isinstance(rates, dict) and isinstance(shares, dict)
    print(f"\ncrtool web (waitress), {results['clients']} keep-alive clients, median of "
          f"{results['rounds']} runs of {results['seconds_per_run']} s each:")
    for name, what in (("hello", "GET /hello (bare route of the same app)"),
                       ("confirm_page", "GET /c/<token> (confirm page)"),
                       ("queue_100k", f"GET / (owner's queue, {results['held']:,} held)")):
        print(f"  {what:42} {rates[name]:8.1f} req/s  {shares[name]:6.1%} of hello")
    print(f"  answers other than 200: {results['not_200']}")
