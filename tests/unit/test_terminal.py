"""Stranger text printed to the owner's terminal: escaped, never raw."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from crtool.terminal import json_text, shown

HOSTILE = "bob\x1b]0;owned\x07\x1b[2J\x9b31m\u202eevil\u2028\x00\x7f\U000e0041@remote.test"


def test_escapes_are_shown_not_obeyed() -> None:
    assert shown(HOSTILE) == ("bob\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\u202eevil\\u2028\\x00"
                              "\\x7f\\U000e0041@remote.test")
    assert shown("Grüße, 雪 — ok") == "Grüße, 雪 — ok"
    assert shown("\x1b[2J", 3) == "\\x1"


@given(st.text())
def test_what_is_shown_is_printable(text: str) -> None:
    assert shown(text).isprintable()


@given(st.recursive(st.none() | st.integers() | st.text(),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8))
def test_json_keeps_its_meaning_and_prints_no_control(value: object) -> None:
    text = json_text(value, indent=2)
    assert json.loads(text) == value
    assert all(line.isprintable() for line in text.split("\n"))
