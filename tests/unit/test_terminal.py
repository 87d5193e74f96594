"""What a stranger wrote reaches the owner's terminal with nothing that acts: every control,
bidi-override and lone-surrogate character is shown as an escape."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from crtool.terminal import escape


def test_known_dangers_are_shown_not_done() -> None:
    assert escape("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert escape("ok\rforged") == "ok\\x0dforged"
    assert escape("\x9b31m") == "\\x9b31m"
    assert escape("abc\u202edcba") == "abc\\u202edcba"
    assert escape("Grüße, 日本") == "Grüße, 日本"


@given(st.text())
def test_nothing_that_acts_survives(text: str) -> None:
    shown = escape(text)
    for char in shown:
        assert unicodedata.category(char) not in ("Cc", "Cs"), repr(char)
        assert char not in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
