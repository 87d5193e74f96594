"""The header parser on the worst heads we can build: time per parse, in-process.

CPU time of this process (time.process_time), so other work on the machine moves it little.
A delivery parses the head once (`message.parse_head`) and reads a few facts of it (Subject,
From, Message-ID, and with `authserv_id` every Authentication-Results); this times exactly that,
on heads built to hurt: 600 KB of folded lines of one header (it took 20 s when the parser was
quadratic), a flood of fields, one line of 600 KB, encoded words and unclosed "=?" in the capped
Subject, and Authentication-Results fields by the thousand. Each head is also timed at half
its size: the ratio of the two is the linearity figure (2.0 is linear). A delivery reads at
most envelope.HEAD_CAP (256 KiB) of head; these go past it on purpose.

`python -m bench.heads` runs it alone; `make bench` runs it first and adds it to results.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable

from crtool import policy
from crtool.message import parse_head

SIZE = 600 * 1024
MX = "mx.example.test"


def _repeat(unit: bytes, size: int, first: bytes = b"Subject: s\n") -> bytes:
    return first + unit * (max(size - len(first), 0) // len(unit)) + b"\n"


HEADS: dict[str, tuple[str, Callable[[int], bytes]]] = {
    "folded": ("one header folded over 2-byte lines", lambda n: _repeat(b" b\n", n)),
    "fields": ("short fields, one after another", lambda n: _repeat(b"X-A: b\n", n)),
    "one_line": ("one Subject line of the whole size",
                 lambda n: b"Subject: " + b"a" * n + b"\n\n"),
    "encoded_words": ("encoded words, folded, in the Subject",
                      lambda n: _repeat(b" =?utf-8?q?=C3=A9=0D=0A?=\n", n)),
    "unclosed_words": ("'=?' without an end, in the Subject", lambda n: _repeat(b" =?=?\n", n)),
    "auth_results": ("Authentication-Results fields, all read by policy",
                     lambda n: _repeat(f"Authentication-Results: {MX}; spf=pass "
                                       "smtp.mailfrom=a.test\n".encode(), n)),
}


def _one_delivery(head: bytes) -> None:
    """What one delivery does with the head: parse it and read the facts policy and the
    challenge use."""
    facts = parse_head(head)
    facts.subject, facts.from_header, facts.from_address, facts.message_id  # noqa: B018
    policy.authentication_results(facts, MX)


def _median_ms(head: bytes, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.process_time()
        _one_delivery(head)
        times.append(time.process_time() - started)
    return statistics.median(times) * 1000


def measure(quick: bool = False) -> dict[str, dict[str, float | str]]:
    """{case: {what, bytes, ms, ms_half, linearity}}, printed as a table as it goes."""
    rounds = 3 if quick else 9
    results: dict[str, dict[str, float | str]] = {}
    print(f"\n{'head (600 KB)':16} {'ms':>8} {'ms at half':>11} {'ratio':>6}  what", flush=True)
    for name, (what, build) in HEADS.items():
        full, half = build(SIZE), build(SIZE // 2)
        ms, ms_half = _median_ms(full, rounds), _median_ms(half, rounds)
        results[name] = {"what": what, "bytes": len(full), "ms": round(ms, 2),
                         "ms_half": round(ms_half, 2), "linearity": round(ms / ms_half, 2)}
        print(f"{name:16} {ms:8.2f} {ms_half:11.2f} {ms / ms_half:6.2f}  {what}", flush=True)
    worst = max(results, key=lambda n: float(results[n]["ms"]))
    print(f"worst head: {worst}, {results[worst]['ms']} ms per delivery's parse")
    return results


if __name__ == "__main__":
    figures = measure("--quick" in sys.argv)
    print(json.dumps(figures, indent=2))
