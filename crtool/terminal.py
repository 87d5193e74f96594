"""Text a stranger wrote, made safe to print on the owner's terminal or to show in a digest.

A subject or a sender can carry escape sequences (ESC [ 2 J clears a screen; OSC 52 writes the
clipboard), carriage returns that overwrite what was printed, and bidirectional overrides that
make text read backwards. Each such character is shown as a visible escape (`\\x1b`,
`\\u202e`) instead, so the owner sees that it was there and nothing acts on it.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff"
    "\ud800-\udfff]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with every control, bidi-override and lone-surrogate character escaped."""
    return _UNSAFE.sub(_visible, text)
