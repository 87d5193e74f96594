"""The rate limits count exactly when deliveries run side by side, as qmail runs them (up to
concurrencylocal at once): real `crtool deliver` processes started together, on SQLite and on
PostgreSQL. A count read outside the write lock would let two deliveries both see "no
challenge yet" and both send one."""

from __future__ import annotations

import json
import subprocess
from collections import Counter

from tests.support import Mailbox, crtool_executable, message, qmail_env


def deliver_all(box: Mailbox, senders: list[str]) -> list[subprocess.CompletedProcess[bytes]]:
    """Start one `crtool deliver` per sender at once, each with its own message, and wait."""
    procs = []
    for n, sender in enumerate(senders):
        env = qmail_env(sender, box.address, box.user_home)
        env["CRTOOL_TEST_OUTBOX"] = str(box.outbox.path)
        # A file, as qmail-local gives: stdin is seekable.
        stdin = box.user_home / f"message-{n}"
        stdin.write_bytes(message(sender, subject=f"message {n}", body=f"number {n}\n"))
        with open(stdin, "rb") as handle:
            procs.append(subprocess.Popen(
                [crtool_executable(), "deliver"], stdin=handle, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=env, cwd=box.user_home))
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return results


def reasons(box: Mailbox) -> Counter[str]:
    held = json.loads(box.ok("pending", "list", "--json", "--limit", "1000"))
    return Counter(m["reason"] for m in held)


def test_a_dozen_messages_at_once_from_one_stranger_earn_one_challenge(
        mailbox: Mailbox) -> None:
    results = deliver_all(mailbox, ["bob@remote.test"] * 12)
    assert [r.returncode for r in results] == [99] * 12, [r.stderr for r in results]
    [(args, _)] = mailbox.outbox.drain(1)
    assert args[-1] == "bob@remote.test"
    assert reasons(mailbox) == {"challenged": 1, "sender_rate_limit": 11}


def test_strangers_at_once_earn_exactly_the_hourly_limit(mailbox: Mailbox) -> None:
    config = mailbox.home / "config.toml"
    config.write_text(config.read_text().replace("challenge_global_limit = 30",
                                                 "challenge_global_limit = 10"))
    senders = [f"s{n}@remote{n}.test" for n in range(16)]
    results = deliver_all(mailbox, senders)
    assert [r.returncode for r in results] == [99] * 16, [r.stderr for r in results]
    sent = mailbox.outbox.drain(10)
    assert len({args[-1] for args, _ in sent}) == 10
    assert reasons(mailbox) == {"challenged": 10, "global_rate_limit": 6}
