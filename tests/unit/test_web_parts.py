"""The web's small pure parts: the web_url setting and its links, the rate limiter's windows,
the chart's geometry, the form MAC of the confirm page."""

from __future__ import annotations

from pathlib import Path

import pytest

from crtool import tokens
from crtool.config import settings_from_mapping
from crtool.web import chart
from crtool.web.guard import RateLimiter

HOME = Path("/nonexistent/.crtool")


def test_web_url_makes_links_and_only_plain_http_urls_are_accepted() -> None:
    settings = settings_from_mapping(HOME, {"address": "a@example.test",
                                            "web_url": "https://mail.example.test/crtool/"})
    assert settings.web_link("c/abc") == "https://mail.example.test/crtool/c/abc"
    assert settings_from_mapping(HOME, {"address": "a@example.test"}).web_link("c/x") == ""
    for bad in ("javascript:alert(1)", "https://a b.test/", "https://x.test/\nX: y",
                "ftp://x.test/", "https://x.test/?a=1", "mail.example.test",
                "https://x.test/\n"):
        with pytest.raises(ValueError, match="web_url"):
            settings_from_mapping(HOME, {"address": "a@example.test", "web_url": bad})


def test_rate_limiter_counts_per_client_per_window() -> None:
    now = [1000.0]
    limiter = RateLimiter(2, 60, lambda: now[0])
    assert limiter.retry_after("a") is None
    assert limiter.retry_after("a") is None
    assert limiter.retry_after("a") == 20  # the window of 960..1020 ends in 20 s
    assert limiter.retry_after("b") is None
    now[0] = 1020.0
    assert limiter.retry_after("a") is None
    assert RateLimiter(0, 60, lambda: now[0]).retry_after("a") is None


def test_chart_has_thirty_days_and_scales_to_the_peak() -> None:
    days = chart.days(100 * 86400 + 500)
    assert len(days) == 30 and days[-1] == 100 * 86400 and days[0] == 71 * 86400
    drawn = chart.build(days, {(days[-1], "held"): 4, (days[0], "released"): 2})
    assert drawn.peak == 4
    held = next(s for s in drawn.series if s.kind == "held")
    assert held.total == 4
    points = [tuple(map(float, p.split(","))) for p in held.points.split()]
    assert len(points) == 30
    assert points[-1][1] == chart.TOP  # the peak touches the top
    assert points[0][1] == chart.HEIGHT - chart.BOTTOM  # zero sits on the axis
    assert drawn.rows[-1][1] == [4, 0, 0, 0, 0]


def test_the_confirm_forms_mac_belongs_to_its_token_under_any_key_of_the_ring() -> None:
    old, new = b"k" * 32, b"n" * 32
    value = tokens.sign_text([old], "web", "abcdefgh" + "a" * 16)
    assert len(value) == 16 and value.islower()
    assert tokens.check_text([old, new], "web", "ABCDEFGH" + "A" * 16, value)
    assert not tokens.check_text([old], "web", "abcdefgh" + "b" * 16, value)
    assert not tokens.check_text([old], "confirm", "abcdefgh" + "a" * 16, value)
    assert not tokens.check_text([new], "web", "abcdefgh" + "a" * 16, value)
    assert not tokens.check_text([old], "web", "abcdefgh" + "a" * 16, "not base32!")
