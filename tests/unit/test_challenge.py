"""The challenge as contract §6 has it: its fixed set of headers, the RFC 3834 marks, and a body
that quotes the original's key headers and a short excerpt only. Whatever an incoming message
carries in its headers can neither add a header nor a recipient to the challenge."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from crtool import challenge
from crtool.config import Settings, settings_from_mapping
from crtool.envelope import _SENDER, valid_mailbox
from crtool.message import parse_head

# No files are read but the shipped template: this home does not exist.
SETTINGS = settings_from_mapping(Path("/nonexistent/crtool-home"),
                                 {"address": "alice@example.test", "maildir": "/nonexistent"})
NOW = 1_790_000_000
TOKEN = "abcdefghijklmnopqrstuvwx"
CONFIRM = f"alice-confirm-{TOKEN}@example.test"
HEADERS = {"from", "reply-to", "to", "subject", "date", "message-id", "auto-submitted",
           "precedence", "x-auto-response-suppress", "x-crtool-challenge", "content-type",
           "content-transfer-encoding", "mime-version"}
REPLY_HEADERS = {"in-reply-to", "references"}


def make(raw: bytes, sender: str = "bob@remote.test",
         settings: Settings = SETTINGS) -> tuple[bytes, EmailMessage]:
    facts = parse_head(raw)
    data = challenge.compose(settings, sender, facts, raw, TOKEN, NOW, "p1")
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return data, parsed


def header_names(data: bytes) -> list[str]:
    """The field names at the start of lines of the header block, read without a parser."""
    head = data.split(b"\n\n", 1)[0].decode("ascii")
    return [line.split(":", 1)[0].lower() for line in head.split("\n")
            if line and line[0] not in " \t"]


def test_a_challenge_carries_the_marks_of_an_automatic_reply() -> None:
    original = (b"From: Bob <bob@remote.test>\nSubject: Lunch?\nMessage-ID: <m1@remote.test>\n"
                b"Date: Sun, 29 Nov 2026 10:00:00 +0000\n\nAre you free?\n")
    data, parsed = make(original)
    assert sorted(header_names(data)) == sorted(HEADERS | REPLY_HEADERS)
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["Precedence"] == "bulk"
    assert parsed["X-Auto-Response-Suppress"] == "All"
    assert parsed["In-Reply-To"] == parsed["References"] == "<m1@remote.test>"
    assert parsed["Reply-To"] == CONFIRM
    [sender] = parsed["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("alice@example.test (confirmation)",
                                                       CONFIRM)
    assert parsed["To"] == "bob@remote.test"
    body = parsed.get_content()
    assert "Lunch?" in body and "Are you free?" not in body


def test_the_from_shows_the_owners_name() -> None:
    for name, shown in (("Alice", "Alice (confirmation)"),
                        ('Al "the" \\ice', 'Al "the" \\ice (confirmation)'),
                        ("Jörg Müller", "Jörg Müller (confirmation)"),
                        ("Eve\r\nBcc: x@y.test", "Eve Bcc: x@y.test (confirmation)")):
        data, parsed = make(b"Subject: x\n\nhi\n", settings=replace(SETTINGS, name=name))
        [sender] = parsed["From"].addresses
        assert (sender.display_name, sender.addr_spec) == (shown, CONFIRM), data
        assert sorted(header_names(data)) == sorted(HEADERS)


def test_by_default_no_line_of_the_body_is_quoted() -> None:
    original = b"From: bob@remote.test\nSubject: report\n\nthe secret report\n"
    _, parsed = make(original)
    assert "secret" not in parsed.get_content()


def test_the_body_quotes_an_excerpt_never_the_whole_message() -> None:
    lines = [f"line {n} of the secret report" for n in range(200)]
    original = b"From: bob@remote.test\nSubject: report\n\n" + "\n".join(lines).encode()
    _, parsed = make(original, settings=replace(SETTINGS, challenge_excerpt_lines=4))
    body = parsed.get_content()
    quoted = [line for line in body.splitlines() if line.startswith("    > ")]
    assert quoted == [f"    > line {n} of the secret report" for n in range(4)]
    assert "line 4 of" not in body


def test_the_subject_is_shown_cut_to_78_characters() -> None:
    subject = "".join(f"{n:03d}-" for n in range(60))
    _, parsed = make(f"Subject: {subject}\n\nhi\n".encode())
    assert str(parsed["Subject"]) == f"Please confirm your message: {subject[:78]}"
    assert f"Subject: {subject[:78]}\n" in parsed.get_content()


def test_an_encoded_body_is_not_quoted_at_all() -> None:
    original = (b"From: bob@remote.test\nSubject: x\nContent-Transfer-Encoding: base64\n\n"
                b"U2VjcmV0IGJvZHk=\n")
    _, parsed = make(original)
    assert "U2VjcmV0" not in parsed.get_content()


def test_no_message_id_means_no_in_reply_to() -> None:
    data, _ = make(b"From: bob@remote.test\nSubject: x\n\nhi\n")
    assert sorted(header_names(data)) == sorted(HEADERS)


_VALUE = st.text(alphabet=st.characters(codec="utf-8"), max_size=300) | st.sampled_from([
    "x\r\nBcc: evil@evil.test", "x\nCc: evil@evil.test",
    "=?utf-8?b?eA0KQmNjOiBldmlsQGV2aWwudGVzdA==?=",
    "<a@b>\nTo: evil@evil.test", "x\u2028Bcc: evil@evil.test", "\x00\x0bTo: evil@evil.test",
    "=?utf-8?q?x=0D=0ATo=3A_evil=40evil.test?=", "a" * 5000,
])
_SENDERS = st.from_regex(_SENDER, fullmatch=True).filter(
    lambda s: s.isascii() and valid_mailbox(s))


@settings(max_examples=120, deadline=None)
@given(subject=_VALUE, from_=_VALUE, message_id=_VALUE, date=_VALUE, other=_VALUE,
       body=_VALUE, sender=_SENDERS)
@example(subject="=?utf-8?b?eA0KQmNjOiBldmlsQGV2aWwudGVzdA==?=", from_="x", message_id="<a@b>",
         date="x", other="x", body="x", sender="a:b@remote.test")
def test_no_header_value_adds_a_header_or_a_recipient(subject: str, from_: str,
                                                     message_id: str, date: str, other: str,
                                                     body: str, sender: str) -> None:
    # Values are written raw, CR and LF included: the incoming message is hostile text.
    raw = (f"From: {from_}\nSubject: {subject}\nMessage-ID: {message_id}\nDate: {date}\n"
           f"X-Other: {other}\n\n{body}").encode("utf-8", "surrogatepass")
    data, parsed = make(raw, sender)
    names = header_names(data)
    assert set(names) <= HEADERS | REPLY_HEADERS
    assert len(names) == len(set(names)), names
    assert HEADERS <= set(names)
    # One recipient, the envelope sender; From and Reply-To only the confirm address.
    local, _, domain = sender.rpartition("@")
    assert [(a.username, a.domain) for a in parsed["To"].addresses] == [(local, domain)]
    assert str(parsed["Reply-To"]) == CONFIRM
    assert [a.addr_spec for a in parsed["From"].addresses] == [CONFIRM]
    assert not parsed.is_multipart()
    assert re.fullmatch(r"Please confirm your message: .*", str(parsed["Subject"]), re.S)
    assert "\n" not in str(parsed["Subject"]) and "\r" not in str(parsed["Subject"])
