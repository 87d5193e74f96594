"""Running one process and measuring it: wall time, exit code and, when asked, peak memory.

posix_spawn and wait4 rather than subprocess: the driver's own cost per process stays small and
the same for every scenario. Peak RSS is not taken from wait4 here: Linux carries the memory of
the address space a process had before exec into its ru_maxrss, and a posix_spawn child shares
the driver's (60 MB with SQLAlchemy loaded). GNU time, a small C program that forks, reports it
instead, over-stating it by its own megabyte or two.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Run:
    seconds: float
    code: int
    max_rss_kib: int


TIME = "/usr/bin/time"


def spawn(argv: Sequence[str], env: Mapping[str, str], stdin: Path | None = None,
          rss_file: Path | None = None) -> Run:
    """Run argv with stdin from a file (a seekable file, as qmail-local gives a delivery).
    With `rss_file`, under GNU time, so that max_rss_kib is the process's own peak."""
    if rss_file is not None:
        argv = [TIME, "-f", "%M", "-o", str(rss_file), *argv]
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, str(stdin) if stdin else os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
    ]
    started = time.perf_counter()
    pid = os.posix_spawn(argv[0], list(argv), dict(env), file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.perf_counter() - started
    rss = -1
    if rss_file is not None:
        rss = int(rss_file.read_text().split()[-1])
    return Run(elapsed, os.waitstatus_to_exitcode(status), rss)


@dataclass
class Samples:
    """The runs of one scenario across the rounds."""

    runs: list[Run] = field(default_factory=list)
    wrong: int = 0

    def add(self, run: Run, expected: int) -> None:
        self.runs.append(run)
        if run.code != expected:
            self.wrong += 1

    @property
    def median_ms(self) -> float:
        return statistics.median(r.seconds for r in self.runs) * 1000

    @property
    def max_rss_mib(self) -> float:
        """The highest peak, or -1 when memory was not measured."""
        return max(r.max_rss_kib for r in self.runs) / 1024 if self.runs else -1
