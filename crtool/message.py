"""The header block of an incoming message, parsed defensively into plain facts.

Only the header block is parsed, each header capped at HEADER_CAP before any decoding, by a small
line parser that cannot raise: Python's email parser raises on some hostile headers and takes
seconds on a 32 KiB From:. The raw bytes are never touched; these facts are what policy and the
challenge read.
"""

from __future__ import annotations

import binascii
import codecs
import re
from dataclasses import dataclass, field
from functools import cached_property

HEADER_CAP = 8 * 1024
MAX_HEADERS = 500
TEXT_CAP = 200
# Authentication-Results fields are kept past MAX_HEADERS: the owner's MTA may add its own at the
# bottom, under any number of the sender's. Their memory is bounded by the head's own size,
# which the reader caps (envelope.HEAD_CAP), like everything else here.
AUTH_RESULTS = "authentication-results"
# One field: its name, then its value with every continuation line (one that starts with white
# space and has something else on it; a line of white space only ends the block).
_CONTINUED = rb"(?:\n[ \t][^\n]*?[^ \t\r\n][^\n]*)*"
_FIELD = re.compile(rb"([!-9;-~]+):([^\n]*" + _CONTINUED + rb")(?:\n|\Z)")
_BLOCK = re.compile(rb"(?:[!-9;-~]+:[^\n]*" + _CONTINUED + rb"(?:\n|\Z))*")
_AUTH_RESULTS = re.compile(rb"^authentication-results:([^\n]*" + _CONTINUED + rb")",
                           re.IGNORECASE | re.MULTILINE)
# An RFC 2047 encoded word as RFC 2047 spells it: no white space, no "?" inside its parts.
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"[ \t\r\n]*")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_MSG_ID = re.compile(rf"<{DOT_ATOM}@(?:{DOT_ATOM}|\[[!-Z^-~]*\])>")
MSG_ID_CAP = 250
# Codecs that are no character sets: punycode's decoder is quadratic, "undefined" always fails.
_NOT_CHARSETS = frozenset({"punycode", "idna", "undefined"})
_UNREADABLE = "\ufffd"


def clean_text(value: str, cap: int = TEXT_CAP) -> str:
    """One safe line: every character that is not printable (C0 and C1 controls, CR, LF, NUL,
    DEL, line and paragraph separators, bidi overrides and other format characters) becomes a
    space, lone surrogates become "?", white space collapses, cut at `cap` characters. Nothing
    it returns can start a new header line, move a terminal's cursor or upset a database."""
    value = value.encode("utf-8", "replace").decode("utf-8")
    if not value.isprintable():
        value = "".join(c if c.isprintable() else " " for c in value)
    return " ".join(value.split())[:cap]


def _charset_decode(data: bytes, label: str) -> str:
    """`data` in the character set an encoded word names; U+FFFD for what does not decode and
    for a label that names no character set."""
    label = label.split("*", 1)[0].strip().lower()  # RFC 2231 adds "*language"
    try:
        if codecs.lookup(label).name in _NOT_CHARSETS:
            return _UNREADABLE
        return data.decode(label, "replace")
    except Exception:  # noqa: BLE001 - any label, any bytes: what cannot be read is marked
        return _UNREADABLE


def _word_bytes(encoding: str, text: str) -> bytes | None:
    raw = text.encode("ascii", "replace")
    try:
        if encoding in "qQ":
            return binascii.a2b_qp(raw.replace(b"_", b" "))
        return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        return None


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded, by this module rather than the email package: bytes a
    word's character set cannot read become U+FFFD (a Subject in latin-1 labelled utf-8 is
    common), and whatever still looks like an encoded word afterwards (a broken one, or a word
    that decodes to another word) is replaced by U+FFFD too, so that no later reader can decode
    it into something else. Adjacent words in one character set are joined before decoding, so a
    character split between two words survives."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: tuple[str, bytearray] | None = None  # adjacent words' bytes, not yet decoded
    position = 0

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            out.append(_charset_decode(bytes(pending[1]), pending[0]))
            pending = None

    for match in _ENCODED_WORD.finditer(value):
        between = value[position:match.start()]
        adjacent = pending is not None and _BETWEEN_WORDS.fullmatch(between) is not None
        if not adjacent:
            flush()
            out.append(between)
        position = match.end()
        charset, encoding, text = match.groups()
        data = _word_bytes(encoding, text)
        if data is None:
            flush()
            out.append(_UNREADABLE)
            continue
        if pending is not None and pending[0].lower() == charset.lower():
            pending[1].extend(data)
        else:
            flush()
            pending = (charset, bytearray(data))
    flush()
    out.append(value[position:])
    return without_words("".join(out))


def without_words(text: str) -> str:
    """`text` with every stretch from a "=?" to the next "?=" replaced by U+FFFD: what is left
    holds nothing any RFC 2047 decoder, however lenient, could decode. Linear: one scan."""
    start = text.find("=?")
    if start < 0:
        return text
    parts: list[str] = []
    position = 0
    while start >= 0:
        end = text.find("?=", start + 2)
        if end < 0:
            break
        parts += [text[position:start], _UNREADABLE]
        position = end + 2
        start = text.find("=?", position)
    parts.append(text[position:])
    return "".join(parts)


def is_msg_id(value: str) -> bool:
    """A msg-id of RFC 5322 §3.6.4 in its strict form, `<dot-atom@dot-atom-or-[literal]>`,
    ASCII, no longer than MSG_ID_CAP, and nothing in it a reader could decode as RFC 2047."""
    return (len(value) <= MSG_ID_CAP and _MSG_ID.fullmatch(value) is not None
            and without_words(value) == value)


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

    @cached_property
    def from_address(self) -> str:
        """The address in From:, lowercased, or "" when there is none that parses. Kept once
        parsed: the list look-up and the policy both ask, and the parse is the costly part."""
        value = self.get("from") or ""
        try:
            from email.utils import getaddresses

            found = [addr for _, addr in getaddresses([value]) if "@" in addr]
        except Exception:  # noqa: BLE001 - a hostile From: is a fact, not an error
            return ""
        return clean_text(found[0], 254).lower() if found else ""

    @property
    def message_id(self) -> str:
        """The Message-ID when it is a valid msg-id (is_msg_id), for In-Reply-To; "" otherwise.
        A comment or white space around it is allowed; anything else makes it "" (never a
        part of it: a msg-id is copied whole into headers, or not at all)."""
        value = " ".join((self.get("message-id") or "").split())
        start = value.find("<")
        end = value.find(">", start + 1)
        if start < 0 or end < 0:
            return ""
        found = value[start:end + 1]
        return found if is_msg_id(found) else ""

    @property
    def date(self) -> str:
        return clean_text(self.get("date") or "", 100)


def parse_head(head: bytes) -> Facts:
    """Facts from the start of a message; never raises, whatever the bytes.

    Linear in the size of `head`, and the scanning is done by the regular expression engine: a
    field with all its continuation lines is one match (a head of 100,000 folded lines once
    cost seconds here, then tens of milliseconds in a loop over lines). Past MAX_HEADERS one
    match finds where the block ends, and only Authentication-Results fields are kept (see
    AUTH_RESULTS). Each value is unfolded from at most its first 2 × HEADER_CAP bytes and cut
    at HEADER_CAP.
    """
    headers: dict[str, list[str]] = {}

    def keep(name: str, start: int, end: int) -> None:
        raw = head[start:min(end, start + 2 * HEADER_CAP)]
        value = b" ".join(line.strip() for line in raw.split(b"\n"))[:HEADER_CAP]
        headers.setdefault(name, []).append(value.decode("utf-8", "replace"))

    position = 0
    count = 0
    while count < MAX_HEADERS:
        match = _FIELD.match(head, position)
        if match is None:
            break
        keep(match.group(1).decode("ascii").lower(), match.start(2), match.end(2))
        position = match.end()
        count += 1
    if count == MAX_HEADERS:
        block = _BLOCK.match(head, position)
        end = block.end() if block is not None else position
        for match in _AUTH_RESULTS.finditer(head, position, end):
            keep(AUTH_RESULTS, match.start(1), match.end(1))
        position = end
    return Facts(headers=headers, has_header_block=count > 0, header_bytes=position)
