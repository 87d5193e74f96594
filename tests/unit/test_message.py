"""The header parser: plain facts from any bytes, never an exception."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crtool.message import HEADER_CAP, clean_text, parse_head

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "cpython-email"


def test_unfolds_and_lowercases_names() -> None:
    facts = parse_head(b"From: Bob <bob@remote.test>\nSubject: a long\n\tsubject\n"
                       b"X-Thing: 1\nX-Thing: 2\n\nbody: not a header\n")
    assert facts.has_header_block
    assert facts.subject == "a long subject"
    assert facts.from_address == "bob@remote.test"
    assert facts.all("x-thing") == ["1", "2"]
    assert not facts.has("body")


def test_rfc2047_subject_is_decoded_and_cleaned() -> None:
    facts = parse_head(b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= =?utf-8?q?_=0D=0ABcc:_x?=\n\n")
    assert facts.subject == "Grüße Bcc: x"
    assert "\n" not in facts.subject and "\r" not in facts.subject


def test_no_header_block() -> None:
    facts = parse_head(b"just some text\nwithout headers\n")
    assert not facts.has_header_block
    assert facts.headers == {}


def test_each_header_is_capped_before_decoding() -> None:
    facts = parse_head(b"From: " + b"a" * 5_000_000 + b"@x.test\nSubject: s\n\n")
    assert len(facts.get("from") or "") <= HEADER_CAP
    assert facts.subject == "s"


def test_hostile_from_that_breaks_pythons_parser() -> None:
    facts = parse_head(b"From:\x9dam@\nSubject: x\n\n")
    assert facts.has_header_block
    assert isinstance(facts.from_address, str)


def test_message_id_must_look_like_one() -> None:
    assert parse_head(b"Message-ID: <a@b>\n\n").message_id == "<a@b>"
    assert parse_head(b"Message-ID: junk\r\nBcc: x\n\n").message_id == ""


def test_clean_text_leaves_one_safe_line() -> None:
    assert clean_text("d\ud800") == "d?"
    cleaned = clean_text("a\r\nb\x00c\u2028d")
    assert cleaned == "a b c d"
    assert clean_text("x" * 500) == "x" * 200


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.txt")), ids=lambda p: p.name)
def test_corpus_parses(path: Path) -> None:
    """Every real-world message of the corpus yields facts without raising."""
    facts = parse_head(path.read_bytes())
    facts.subject, facts.from_header, facts.from_address, facts.message_id  # noqa: B018


@given(st.binary(max_size=4000))
def test_never_raises(data: bytes) -> None:
    facts = parse_head(data)
    for value in (facts.subject, facts.from_header, facts.from_address, facts.message_id):
        assert "\n" not in value and "\r" not in value and "\x00" not in value
