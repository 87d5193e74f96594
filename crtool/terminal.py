"""Text that came from strangers, made safe to print on the owner's terminal.

An envelope sender or a Subject may carry ESC sequences, C1 controls (U+009B is a CSI on its
own), bidi overrides or line separators: printed raw, they move the cursor, retitle or clear
the window, or reverse the text after them. Every listing that shows such text (`pending
list`, and whatever else shows a held message) prints it through `shown`, and JSON through
`json_text`.
"""

from __future__ import annotations

import json
from typing import Any


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def shown(text: str, width: int | None = None) -> str:
    """`text` with each character that is not printable (controls, format and bidi
    characters, separators other than the space, surrogates, unassigned code points) written
    as a Python-style escape such as `\\x1b` or `\\u202e`; then cut to `width` characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escape(c) for c in text)
    return text if width is None else text[:width]


def json_text(value: Any, indent: int | None = None) -> str:
    """`value` as JSON, non-ASCII text kept readable but every character that is not printable
    written as a JSON `\\u` escape (the json module escapes only C0 controls). Valid JSON: such
    characters can only stand inside strings, where an escape means the same."""
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\n" else json.dumps(c)[1:-1] for c in text)
