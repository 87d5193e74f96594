"""Encoded words against every header the challenge copies or derives: To (the envelope
sender's local part), Subject, In-Reply-To and References (the Message-ID) and the From display
name. Whatever they decode to (CR, LF, NUL, U+2028, terminal escapes, another encoded word,
bytes their charset cannot read, a charset that does not exist), the challenge is built, has its
fixed set of fields, each one logical line of printable text, the same confirm address, and a
text/plain body.

This runs on the interpreter the suite runs on. This machine's python3 is 3.11.7, whose email
package writes a decoded CR or LF verbatim when it refolds a header (CVE-2024-6923): that is how
an encoded word once became a header of its own in the challenge.
"""

from __future__ import annotations

import base64
import email
import email.policy
import encodings.aliases
import re
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from crtool import challenge
from crtool.config import Settings
from crtool.errors import TemporaryFailure
from crtool.message import Facts, parse_head
from crtool.resources import shipped_dir
from tests.unit.test_challenge import CONFIRM, NOW, SETTINGS, TOKEN
from tests.unit.test_challenge import HEADERS as FIXED
from tests.unit.test_challenge import REPLY_HEADERS as THREADING

PREFIX = "Please confirm your message: "
# Written out here, not imported: a msg-id as RFC 5322 has it, strict form.
ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
MSG_ID = re.compile(rf"<{ATEXT}(\.{ATEXT})*@{ATEXT}(\.{ATEXT})*>")
WORDLIKE = re.compile(r"=\?.*\?=", re.S)

CHARSETS = sorted(set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values())) + [
    "x-bogus", "utf-8*en", "UTF-8", "unknown-8bit", "zlib", "base64", "rot13", "hex",
    "punycode", "idna", "undefined", "unicode_escape", "utf-7", "x-\u00e9"]
INJECTIONS = [b"\r\nX-Inj: yes", b"\nX-Inj: yes", b"\r", b"\x00", b"\x00\x0b",
              "\u2028X-Inj: yes".encode(), "\u2029".encode(), b"caf\xe9", b"\xc3", b"\xff\xfe",
              "\u202eevil\u202c".encode(), b"\x1b[31mred\x1b]0;title\x07", b"\x85\x9b",
              b"Content-Type: text/html\r\n\r\n<a href=x>x</a>", b"<a@b>\r\nX-Inj: yes",
              b"=?utf-8?q?=0D=0AX-Inj:_yes?="]
PAYLOADS = (st.sampled_from(INJECTIONS) | st.binary(max_size=30)
            | st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")))


def q_text(data: bytes, upper: bool) -> str:
    out = []
    for byte in data:
        char = chr(byte)
        if char == " ":
            out.append("_")
        elif char.isascii() and char.isalnum():
            out.append(char)
        else:
            out.append(f"={byte:02X}" if upper else f"={byte:02x}")
    return "".join(out)


@st.composite
def encoded_words(draw: st.DrawFn, depth: int = 0) -> str:
    """One encoded word: q or b, any charset label, any payload, sometimes an encoded word
    inside (a double encoding), sometimes broken."""
    charset = draw(st.sampled_from(CHARSETS) | st.text(
        alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_*", min_size=1, max_size=12))
    if depth < 2 and draw(st.integers(0, 3)) == 0:
        payload = draw(encoded_words(depth + 1)).encode("ascii", "replace")
    else:
        payload = draw(PAYLOADS)
    kind = draw(st.sampled_from("qQbB"))
    if kind in "qQ":
        text = q_text(payload, draw(st.booleans()))
    else:
        text = base64.b64encode(payload).decode("ascii")
    damage = draw(st.integers(0, 9))
    if damage == 0:
        text = text[: len(text) // 2]  # cut short: bad padding, a half "=XX"
    elif damage == 1:
        text = text + "?"
    return f"=?{charset}?{kind}?{text}?="


SEPARATORS = st.sampled_from(["", " ", "  ", "\t", "\r\n ", "\n\t", "\r", "\u2028", "x"])
RAW_TEXT = st.text(max_size=15) | st.sampled_from(["\r\nX-Inj: yes", "\x00", "\x1b[2J"])


@st.composite
def header_values(draw: st.DrawFn) -> bytes:
    """Encoded words and raw text (CR, LF, NUL, 8-bit bytes included) in any order."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 2)):
            parts.append(draw(encoded_words()).encode("utf-8", "surrogatepass"))
        else:
            parts.append(draw(RAW_TEXT).encode("utf-8", "surrogatepass"))
        parts.append(draw(SEPARATORS).encode("utf-8"))
    return b"".join(parts)


@st.composite
def message_ids(draw: st.DrawFn) -> bytes:
    word = draw(encoded_words())
    shape = draw(st.sampled_from(["<{w}@remote.test>", "<x.{w}@remote.test>", "<x@{w}>", "{w}",
                                  "<{w}>", "<m1@remote.test>", " <m1@remote.test> (c) ",
                                  "<m1@remote.test>{w}", "<a@b>\r\nX-Inj: yes"]))
    return shape.format(w=word).encode("utf-8", "surrogatepass")


LOCALS = (encoded_words() | st.sampled_from(["bob", "a:b", "a.b+c", "=?utf-8?q?x?=", "=?x?=",
                                             'a"b', "a\\b", "\u00e9", "a b", "a\r\nb"]))


def build(raw: bytes, sender: str, owner: Settings = SETTINGS) -> tuple[bytes, Facts]:
    facts = parse_head(raw)
    return challenge.compose(owner, sender, facts, raw, TOKEN, NOW, "p1"), facts


def fields_of(data: bytes) -> list[tuple[str, str, list[str]]]:
    """(name, unfolded value, physical lines) of each field of the header block, read without
    a parser; asserts the block is lines of printable ASCII, each a field or a continuation."""
    head = data.split(b"\n\n", 1)[0].decode("ascii")
    fields: list[tuple[str, str, list[str]]] = []
    for line in head.split("\n"):
        assert re.fullmatch(r"[ -~]+", line), repr(line)
        assert len(line) <= 998
        if line[0] == " ":
            name, value, lines = fields[-1]
            fields[-1] = (name, value + line, [*lines, line])
            continue
        name, colon, value = line.partition(":")
        assert colon and re.fullmatch(r"[A-Za-z-]+", name), repr(line)
        fields.append((name.lower(), value, [line]))
    return fields


def assert_sound(data: bytes, facts: Facts, local: str) -> None:
    """Everything a challenge must be, whatever the message it answers."""
    assert data.isascii() and b"\r" not in data and b"\x00" not in data
    fields = fields_of(data)
    for _, value, _ in fields:
        assert all(len(word) <= 75 for word in re.findall(r"=\?[^ ]*\?=", value)), value
    names = [name for name, _, _ in fields]
    assert len(names) == len(set(names)), names
    assert set(names) in (FIXED, FIXED | THREADING), names
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    for name in names:
        shown = str(parsed[name])
        assert shown.isprintable(), (name, shown)
        assert not WORDLIKE.search(shown), (name, shown)
        assert len(parsed.get_all(name) or []) == 1
    # The same confirm address in From and Reply-To, with a display name in From.
    assert str(parsed["Reply-To"]) == CONFIRM
    [sender] = parsed["From"].addresses
    assert sender.addr_spec == CONFIRM
    # (Python's parser keeps the space between two encoded words of a display name.)
    assert " ".join(sender.display_name.split()).endswith(" (confirmation)")
    # To names the envelope sender exactly, or nobody when it cannot be written plainly.
    if str(parsed["To"]) != "undisclosed-recipients:;":
        [to] = parsed["To"].addresses
        assert (to.username, to.domain) == (local, "remote.test")
    else:
        assert not re.fullmatch(rf"{ATEXT}(\.{ATEXT})*", local) or "=?" in local
    subject = str(parsed["Subject"])
    assert subject.startswith(PREFIX) and len(subject) <= len(PREFIX) + 78
    # Threading headers only for a valid msg-id, copied whole.
    if THREADING <= set(names):
        assert str(parsed["In-Reply-To"]) == str(parsed["References"]) == facts.message_id
        assert MSG_ID.fullmatch(facts.message_id) and "=?" not in facts.message_id
    # The body is still one text/plain part.
    assert parsed.get_content_type() == "text/plain" and not parsed.is_multipart()
    body = parsed.get_content()
    assert body.rstrip().endswith("crtool challenge-response for alice@example.test")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=header_values(), from_=header_values(), message_id=message_ids(),
       local=LOCALS, name=header_values())
@example(subject=b"=?utf-8?q?caf=E9_cr=C3=A8me?=", from_=b"x", message_id=b"<m@x>",
         local="bob", name=b"")
@example(subject=b"x", from_=b"x", message_id=b"<m@x>", local="=?utf-8?q?=0d=0aX-Inj:_yes?=",
         name=b"")
@example(subject=b"x", from_=b"x", message_id=b"<=?utf-8?q?=0d=0aX-Inj:_yes?=@x>", local="bob",
         name=b"")
@example(subject=b"=?utf-8?b?PT91dGYtOD9xPz0wRD0wQVgtSW5qOl95ZXM/PQ==?=", from_=b"x",
         message_id=b"<m@x>", local="bob", name=b"=?utf-8?q?Eve=0D=0ABcc:_x@y?=")
def test_no_encoded_word_breaks_or_bends_the_challenge(subject: bytes, from_: bytes,
                                                       message_id: bytes, local: str,
                                                       name: bytes) -> None:
    raw = (b"From: " + from_ + b"\nSubject: " + subject + b"\nMessage-ID: " + message_id
           + b"\nDate: " + subject + b"\n\nbody\n")
    owner = replace(SETTINGS, name=name.decode("utf-8", "replace"))
    data, facts = build(raw, f"{local}@remote.test", owner)
    assert_sound(data, facts, local)


@pytest.mark.parametrize(("raw", "local", "threaded"), [
    (b"Subject: =?utf-8?q?caf=E9_cr=C3=A8me?=\nMessage-ID: <m1@remote.test>\n\nx\n", "bob", True),
    (b"Subject: x\nMessage-ID: <m1@remote.test>\n\nx\n", "=?utf-8?q?=0d=0aX-Inj:_yes?=", True),
    (b"Subject: x\nMessage-ID: <=?utf-8?q?=0d=0aX-Inj:_yes?=@x>\n\nx\n", "bob", False),
    (b"Subject: =?utf-8?b?eA0KQmNjOiBldmlsQGV2aWwudGVzdA==?=\n\nx\n", "bob", False),
])
def test_what_the_review_sent_builds_a_sound_challenge(raw: bytes, local: str,
                                                       threaded: bool) -> None:
    data, facts = build(raw, f"{local}@remote.test")
    assert_sound(data, facts, local)
    assert (b"\nIn-Reply-To: " in data) is threaded
    assert b"X-Inj" not in data.split(b"\n\n", 1)[0].replace(b"=?utf-8?b?", b"")


def test_a_subject_in_latin1_labelled_utf8_is_shown_with_a_mark_for_what_did_not_decode() \
        -> None:
    data, facts = build(b"Subject: =?utf-8?q?caf=E9_cr=C3=A8me?=\n\nx\n", "bob@remote.test")
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert str(parsed["Subject"]) == PREFIX + "caf\ufffd crème"


def _owner_with_template(tmp_path: Path, extra: str) -> Settings:
    (tmp_path / "templates").mkdir()
    shipped = (shipped_dir("templates") / challenge.TEMPLATE).read_text()
    (tmp_path / "templates" / challenge.TEMPLATE).write_text(extra + shipped)
    return replace(SETTINGS, home=tmp_path)


def test_when_the_strangers_text_fails_the_challenge_goes_out_plain(tmp_path: Path) -> None:
    """An owner's template that chokes on some Subject (here: one that is not ASCII) still
    gets its challenge out: the fixed subject, no threading headers, none of his text."""
    owner = _owner_with_template(tmp_path, "{{ subject.encode('ascii') }}\n")
    raw = b"Subject: Gr\xc3\xbc\xc3\x9fe\nMessage-ID: <m1@remote.test>\n\nx\n"
    data, facts = build(raw, "bob@remote.test", owner)
    assert_sound(data, facts, "bob")
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert str(parsed["Subject"]) == PREFIX + "your message"
    assert parsed["In-Reply-To"] is None and parsed["References"] is None
    assert "Grüße" not in parsed.get_content()


def test_a_template_that_fails_even_without_his_text_is_a_broken_environment(
        tmp_path: Path) -> None:
    owner = _owner_with_template(tmp_path, "{{ no_such_variable }}\n")
    with pytest.raises(TemporaryFailure, match="challenge template"):
        build(b"Subject: x\n\nx\n", "bob@remote.test", owner)
