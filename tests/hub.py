"""A hub in a temporary directory for the tests: the system config, `crtool --config F …`, and
`crtool lmtp` as a real process spoken to over a real socket."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import signal
import smtplib
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import CAPTURE_SENDMAIL, Outbox, crtool_executable


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Poll until predicate() holds; the bound only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def toml_value(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value).lower() \
        if isinstance(value, bool) else str(value)


@dataclass
class Hub:
    """A host's crtool in system mode: config, keys and database in `root`."""

    root: Path
    database_url: str
    lmtp: dict[str, object] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)
    sendmail: str = str(CAPTURE_SENDMAIL)

    @property
    def config(self) -> Path:
        return self.root / "crtool.toml"

    @property
    def socket_path(self) -> Path:
        return self.root / "lmtp.sock"

    @property
    def outbox(self) -> Outbox:
        if not hasattr(self, "_outbox"):
            self._outbox = Outbox(self.root / "outbox")
        return self._outbox

    def write_config(self) -> None:
        lines = [f"database_url = {toml_value(self.database_url)}",
                 f"sendmail = {toml_value(self.sendmail)}",
                 f"keys = {toml_value(str(self.root / 'keys'))}"]
        lines += [f"{k} = {toml_value(v)}" for k, v in self.settings.items()]
        lines.append("[lmtp]")
        lmtp: dict[str, object] = {"listen": f"unix:{self.socket_path}", "socket_mode": 0o666,
                                   **self.lmtp}
        lines += [f"{k} = {toml_value(v)}" for k, v in lmtp.items()]
        self.config.write_text("\n".join(lines) + "\n")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRTOOL_")}
        env["CRTOOL_TEST_OUTBOX"] = str(self.outbox.path)
        return env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`crtool --config F ARGS…`, in this process (cli.main): the admin's commands are
        the same code either way, and a process each would cost seconds per test here."""
        from crtool.cli import main

        out, err = io.StringIO(), io.StringIO()
        argv = ["--config", str(self.config), *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():
            # Each command makes an engine and leaves it to the end of the process; here
            # the end of the command is the end of its engine.
            warnings.simplefilter("ignore", ResourceWarning)
            code = main(argv)
            gc.collect()
        return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, (args, result.returncode, result.stderr)
        return result.stdout

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.ok("init")

    def add_owner(self, address: str, maildir: Path | None = None, lmtp_next: str = "",
                  *settings: str) -> None:
        target = ["--maildir", str(maildir)] if maildir else ["--lmtp-next", lmtp_next]
        extra = [word for s in settings for word in ("--set", s)]
        self.ok("owner", "add", address, *target, *extra)

    def held(self, owner: str) -> list[dict[str, object]]:
        items: list[dict[str, object]] = json.loads(
            self.ok("pending", "list", "--all", "--json", "--owner", owner))
        return items

    def start(self, listen: str | None = None, argv_prefix: Iterable[str] = (),
              extra_env: dict[str, str] | None = None,
              command: Iterable[str] | None = None) -> Server:
        """`crtool --config F lmtp` as its own process (`command` instead of the crtool
        script, `argv_prefix` before it); returns once it listens."""
        log_path = self.root / f"lmtp-{time.monotonic_ns()}.log"
        env = self.env()
        env.update(extra_env or {})
        argv = [*argv_prefix, *(command or [crtool_executable()]), "--config",
                str(self.config), "lmtp"]
        if listen:
            argv += ["--listen", listen]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=log, env=env,
                                       start_new_session=True)
        server = Server(process, log_path)
        wait_until(lambda: server.listening() or process.poll() is not None, "lmtp to listen")
        assert process.poll() is None, server.log()
        return server


def hub_with_alice(tmp_path: Path, database_url: str, **lmtp: object) -> Hub:
    """A hub in tmp_path/hub (its own SQLite file, or the test's PostgreSQL schema) that
    serves alice@example.test into the Maildir tmp_path/mail/alice; `lmtp` over a 20 s
    session timeout."""
    if database_url.startswith("sqlite"):
        database_url = f"sqlite:///{tmp_path / 'hub' / 'hub.db'}"
    hub = Hub(tmp_path / "hub", database_url, lmtp={"timeout": "20s", **lmtp})
    hub.init()
    hub.add_owner("alice@example.test", tmp_path / "mail" / "alice")
    return hub


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def records(self) -> list[dict[str, object]]:
        """The JSON log lines (one per recipient delivered, plus start and stop)."""
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def deliveries(self) -> list[dict[str, object]]:
        return [r for r in self.records() if "outcome" in r]

    def listening(self) -> bool:
        return any(r.get("event") == "listening" for r in self.records())

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def client(target: str | Path, timeout: float = 60) -> smtplib.LMTP:
    """An LMTP client (stdlib) connected and greeted with LHLO."""
    text = str(target)
    if text.startswith("unix:"):
        text = text[5:]
    if text.startswith("/"):
        lmtp = smtplib.LMTP(text, timeout=timeout)
    else:
        host, _, port = text.rpartition(":")
        lmtp = smtplib.LMTP(host, int(port), timeout=timeout)
    lmtp.ehlo()
    return lmtp


def transaction(lmtp: smtplib.LMTP, sender: str, recipients: list[str],
                data: bytes) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """MAIL, RCPT each, DATA: the RCPT replies and, per accepted recipient, the DATA replies
    (RFC 2033: one reply per recipient that RCPT accepted)."""
    code, said = lmtp.mail(sender)
    assert code == 250, (code, said)
    rcpt = [lmtp.rcpt(r) for r in recipients]
    accepted = sum(1 for code, _ in rcpt if code == 250)
    if not accepted:
        lmtp.rset()
        return rcpt, []
    lmtp.putcmd("data")
    code, said = lmtp.getreply()
    assert code == 354, (code, said)
    body = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    body = b"\r\n".join(b"." + line if line.startswith(b".") else line
                        for line in body.split(b"\r\n"))
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    lmtp.send(body + b".\r\n")
    return rcpt, [lmtp.getreply() for _ in range(accepted)]


def raw_session(path: Path, timeout: float = 30) -> socket.socket:
    """A bare socket to the server, for what smtplib will not send."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock


def read_replies(sock: socket.socket, count: int) -> list[str]:
    """`count` complete replies (multi-line ones joined), as text."""
    buffer = b""
    replies: list[str] = []
    current: list[str] = []
    while len(replies) < count:
        while b"\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {replies} {current} {buffer!r}")
            buffer += chunk
        line, buffer = buffer.split(b"\r\n", 1)
        text = line.decode("utf-8", "replace")
        current.append(text)
        if len(text) < 4 or text[3] != "-":
            replies.append("\n".join(current))
            current = []
    return replies
