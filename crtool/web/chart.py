"""The owner's 30-day chart as plain numbers for an inline SVG (no script, no library, no CDN).

One line per kind of event over the last DAYS days (UTC), scaled into a fixed view box; the page
shows the same numbers as a table for screen readers and for anyone who prefers figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from crtool.store.log import DAY

DAYS = 30
KINDS = ("held", "challenged", "confirmed", "released", "dropped")
# Colours that keep a contrast of at least 3:1 against white (WCAG's figure for graphics).
COLOURS = {"held": "#1f5fa8", "challenged": "#a0522d", "confirmed": "#1d7a3a",
           "released": "#6a3d9a", "dropped": "#b3261e"}
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 600, 200, 40, 24, 10


@dataclass(frozen=True)
class Series:
    kind: str
    colour: str
    points: str
    total: int


@dataclass(frozen=True)
class Chart:
    series: list[Series]
    peak: int
    first: str
    last: str
    rows: list[tuple[str, list[int]]]


def days(now: int) -> list[int]:
    """The midnights (UTC) of the last DAYS days, oldest first, today last."""
    today = now // DAY * DAY
    return [today - (DAYS - 1 - i) * DAY for i in range(DAYS)]


def build(day_starts: list[int], counts: dict[tuple[int, str], int]) -> Chart:
    """Polylines in a WIDTH x HEIGHT box with room for the axis labels."""
    peak = max([counts.get((d, k), 0) for d in day_starts for k in KINDS] + [1])
    step = (WIDTH - LEFT - 10) / max(1, len(day_starts) - 1)
    span = HEIGHT - BOTTOM - TOP
    series = []
    for kind in KINDS:
        values = [counts.get((d, kind), 0) for d in day_starts]
        points = " ".join(f"{LEFT + i * step:.1f},{TOP + span - v / peak * span:.1f}"
                          for i, v in enumerate(values))
        series.append(Series(kind, COLOURS[kind], points, sum(values)))
    rows = [(time.strftime("%Y-%m-%d", time.gmtime(d)), [counts.get((d, k), 0) for k in KINDS])
            for d in day_starts]
    return Chart(series, peak, rows[0][0], rows[-1][0], rows)
