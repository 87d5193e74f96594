"""The header fields crtool writes, built by hand from checked pieces.

Python's email package is not trusted with this: CPython builds without the CVE-2024-6923 fix
(3.11.7 among them) write a decoded CR or LF verbatim when they refold a header, so an encoded
word in a stranger's Subject, envelope local part or Message-ID became a header of its own. Here
a value is fixed text, an address or msg-id that passes the strict grammar, or free text reduced
to printable characters (message.clean_text) with no encoded word left in it
(message.without_words) and then RFC 2047-encoded by this module where it is not plain ASCII.
`field` checks the finished line once more and raises ValueError rather than write anything
else; the caller decides what to write instead.
"""

from __future__ import annotations

import base64
import re

from crtool.message import DOT_ATOM, clean_text, without_words

LINE_CAP = 78  # RFC 5322 §2.1.1: lines SHOULD be no longer than this
HARD_CAP = 998  # ... and MUST be no longer than this
# A host name: letters, digits and hyphens in dot-separated labels.
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_QUOTABLE = re.compile(r"[!-~]+")  # printable ASCII, no space
_WORD_BYTES = 45  # 60 base64 characters: an encoded word of 72, under RFC 2047's 75
_FOLDED_VALUE = re.compile(r"[ -~]*(?:\n [ -~]*)*")


def addr_spec(address: str) -> str | None:
    """`address` written as an addr-spec for a header, or None when it is not plain: ASCII, a
    host name for a domain, a local part that is a dot-atom (or else printable characters, then
    written as a quoted string), and no encoded word anywhere in it."""
    local, _, domain = address.rpartition("@")
    if (not local or len(local) > 64 or len(address) > 254 or not address.isascii()
            or _DOMAIN.fullmatch(domain) is None or without_words(address) != address):
        return None
    if re.fullmatch(DOT_ATOM, local):
        return f"{local}@{domain}"
    if _QUOTABLE.fullmatch(local) is None:
        return None
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + f'"@{domain}'


def encoded_words(text: str) -> list[str]:
    """`text` as UTF-8 "B" encoded words of at most 72 characters, split between characters,
    never inside one, and after a space where the chunk has one: a decoder that keeps the
    white space between two words (Python's does in a display name) then adds only a space
    next to a space."""
    words: list[str] = []
    chunk = b""
    for char in text:
        data = char.encode("utf-8", "replace")
        if len(chunk) + len(data) > _WORD_BYTES:
            cut = chunk.rfind(b" ") + 1
            if cut == 0 or len(chunk) - cut + len(data) > _WORD_BYTES:
                cut = len(chunk)
            words.append(_word(chunk[:cut]))
            chunk = chunk[cut:]
        chunk += data
    if chunk or not words:
        words.append(_word(chunk))
    return words


def _word(data: bytes) -> str:
    return f"=?utf-8?b?{base64.b64encode(data).decode('ascii')}?="


def _plain(text: str) -> bool:
    """Free text that may be written as it is: printable ASCII, nothing like an encoded word."""
    return text.isascii() and text.isprintable() and "=?" not in text and "?=" not in text


def unstructured(prefix: str, text: str, cap: int) -> list[str]:
    """The words of an unstructured value: `prefix` (crtool's own ASCII), then `text` (free
    text from anywhere) made one clean line of at most `cap` characters; written as it is when
    plain, else as encoded words."""
    text = without_words(clean_text(text, cap))
    words = prefix.split()
    if _plain(text):
        return words + text.split()
    return words + (encoded_words(text) if text else [])


def phrase(text: str, cap: int) -> str:
    """A display name: a quoted string when plain ASCII, else encoded words (RFC 2047 §5)."""
    text = without_words(clean_text(text, cap))
    if _plain(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return " ".join(encoded_words(text))


def field(name: str, words: list[str]) -> str:
    """One header field, `Name: words…\\n`, folded between words to keep lines within LINE_CAP
    where a word allows it. Raises ValueError unless the result is one logical line of
    printable ASCII whose every physical line fits HARD_CAP."""
    lines = [f"{name}:"]
    for word in words:
        if len(lines[-1]) + 1 + len(word) > LINE_CAP and lines[-1] != f"{name}:":
            lines.append("")
        lines[-1] += " " + word
    value = "\n".join(lines)[len(name) + 1:]
    if (not words or _FOLDED_VALUE.fullmatch(value) is None
            or any(len(line) > HARD_CAP for line in lines)
            or re.fullmatch(r"[!-9;-~]+", name) is None):
        raise ValueError(f"refusing to write a {name} header that is not one clean line")
    return f"{name}:{value}\n"
