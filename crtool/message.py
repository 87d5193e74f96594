"""The header block of an incoming message, parsed defensively into plain facts.

Only the header block is parsed, each header capped at HEADER_CAP before any decoding, by a small
line parser that cannot raise: Python's email parser raises on some hostile headers and takes
seconds on a 32 KiB From:. The raw bytes are never touched; these facts are what policy and the
challenge read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

HEADER_CAP = 8 * 1024
MAX_HEADERS = 500
TEXT_CAP = 200
_FIELD_NAME = re.compile(rb"^[!-9;-~]+:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\ufeff]+")


def clean_text(value: str, cap: int = TEXT_CAP) -> str:
    """One safe line: control characters (CR, LF, NUL, …) folded to spaces, lone surrogates
    replaced, whitespace collapsed, cut at `cap` characters. Nothing it returns can start a
    new header line or upset a database."""
    value = value.encode("utf-8", "replace").decode("utf-8")
    value = _CONTROL.sub(" ", value)
    return " ".join(value.split())[:cap]


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded; the text as it was when they are broken."""
    if "=?" not in value:
        return value
    try:
        from email.header import decode_header, make_header

        return str(make_header(decode_header(value)))
    except Exception:  # noqa: BLE001 - any malformed encoding leaves the text as it arrived
        return value


@dataclass(frozen=True)
class Facts:
    """What the header block says. Names are lowercased; values unfolded, capped text."""

    headers: dict[str, list[str]] = field(default_factory=dict)
    has_header_block: bool = False
    header_bytes: int = 0

    def get(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return self.headers.get(name.lower(), [])

    def has(self, name: str) -> bool:
        return name.lower() in self.headers

    @property
    def subject(self) -> str:
        return clean_text(decode_words(self.get("subject") or ""))

    @property
    def from_header(self) -> str:
        return clean_text(decode_words(self.get("from") or ""))

    @property
    def from_address(self) -> str:
        """The address in From:, lowercased, or "" when there is none that parses."""
        value = self.get("from") or ""
        try:
            from email.utils import getaddresses

            found = [addr for _, addr in getaddresses([value]) if "@" in addr]
        except Exception:  # noqa: BLE001 - a hostile From: is a fact, not an error
            return ""
        return clean_text(found[0], 254).lower() if found else ""

    @property
    def message_id(self) -> str:
        """The Message-ID if it looks like one, for In-Reply-To; "" otherwise."""
        value = clean_text(self.get("message-id") or "", 250)
        match = re.search(r"<[^<>\s]+>", value)
        return match.group(0) if match else ""

    @property
    def date(self) -> str:
        return clean_text(self.get("date") or "", 100)


def parse_head(head: bytes) -> Facts:
    """Facts from the start of a message; never raises, whatever the bytes."""
    headers: dict[str, list[str]] = {}
    name: str | None = None
    value_parts: list[bytes] = []
    size = 0
    count = 0

    def finish() -> None:
        nonlocal count
        if name is None or count >= MAX_HEADERS:
            return
        raw = b" ".join(p.strip() for p in value_parts)[:HEADER_CAP]
        text = raw.decode("utf-8", "replace")
        headers.setdefault(name, []).append(text)
        count += 1

    lines = head.split(b"\n")
    started = False
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip(b" \t"):
            break
        if line[:1] in (b" ", b"\t") and name is not None:
            if sum(len(p) for p in value_parts) < HEADER_CAP:
                value_parts.append(line)
            size += len(line) + 1
            continue
        match = _FIELD_NAME.match(line)
        if not match:
            # Not a header line: the header block ends here (or there never was one).
            break
        finish()
        started = True
        name = match.group(0)[:-1].decode("ascii").lower()
        value_parts = [line[match.end():]]
        size += len(line) + 1
    finish()
    return Facts(headers=headers, has_header_block=started, header_bytes=size)
