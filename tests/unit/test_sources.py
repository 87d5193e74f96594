"""Reading the owner's mail and address books: an mbox streamed message by message (broken
ones too), Maildirs, vCards and TMDA list files, each bad item a Skip with its reason; and the
spam filter's header read only where the owner's system writes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from crtool import sources, upstream
from crtool.errors import UsageError


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


MBOX = (b"From bob@x.test Sat Jan  3 01:05:34 1996\n"
        b"From: Bob <bob@x.test>\nSubject: one\n\nbody\nFrom the start, a line in a body\n\n"
        b">From escaped\n\n"
        b"From carol@y.test Sat Jan  3 01:05:34 1996\n"
        b"From: carol@y.test\r\nSubject: two\r\n\r\nbody two\n")


def test_an_mbox_gives_each_messages_head(tmp_path: Path) -> None:
    path = _write(tmp_path / "box", MBOX)
    assert sources.kind_of(path) == sources.MBOX
    found = list(sources.items(path))
    assert [type(item) for item in found] == [sources.Mail, sources.Mail]
    assert isinstance(found[0], sources.Mail) and found[0].head.startswith(b"From: Bob")
    assert b"body" not in found[0].head
    assert isinstance(found[1], sources.Mail) and b"Subject: two" in found[1].head


def test_a_broken_mbox_is_read_as_far_as_it_goes(tmp_path: Path) -> None:
    data = (b"From a\n\n"  # a message with no header block
            b"From b\nFrom: b@x.test\nSubject: cut off in its head")  # truncated
    path = _write(tmp_path / "box", data)
    found = list(sources.items(path))
    assert isinstance(found[0], sources.Skip) and found[0].reason == "no header block"
    assert isinstance(found[1], sources.Mail) and b"b@x.test" in found[1].head


def test_an_mbox_line_longer_than_any_cap_is_read_in_pieces(tmp_path: Path) -> None:
    long_line = b"x" * (3 * sources.LINE_CAP) + b"From y\n"
    path = _write(tmp_path / "box", b"From a\nFrom: a@x.test\n\n" + long_line + b"\n"
                  + b"From b\nFrom: b@x.test\n\nbody\n")
    heads = [item.head for item in sources.items(path) if isinstance(item, sources.Mail)]
    assert len(heads) == 2 and b"b@x.test" in heads[1]


def test_a_maildir_gives_its_messages(tmp_path: Path) -> None:
    for sub in ("cur", "new", "tmp"):
        (tmp_path / "md" / sub).mkdir(parents=True)
    _write(tmp_path / "md" / "new" / "1.x", b"From: a@x.test\n\nbody\n")
    _write(tmp_path / "md" / "cur" / "2.x:2,S", b"\n\nno head\n")
    _write(tmp_path / "md" / "tmp" / "3.x", b"From: not-yet@x.test\n\n")
    found = list(sources.items(tmp_path / "md"))
    assert [type(item).__name__ for item in found] == ["Skip", "Mail"]


def test_vcards_give_their_addresses_and_say_which_have_none(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.vcf", (
        b"BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Bob\r\nEMAIL;TYPE=INTERNET:bob@x.test\r\n"
        b"item1.EMAIL;type=pref:bob@work.te\r\n st\r\nEND:VCARD\r\n"
        b"BEGIN:VCARD\r\nVERSION:4.0\r\nFN:No Mail\r\nTEL:123\r\nEND:VCARD\r\n"))
    assert sources.kind_of(path) == sources.VCARD
    found = list(sources.items(path))
    assert isinstance(found[0], sources.Card)
    assert found[0].addresses == ["bob@x.test", "bob@work.test"]
    assert isinstance(found[1], sources.Skip) and "without an address" in found[1].reason


@pytest.mark.parametrize(("line", "expected"), [
    ("bob@x.test", [("white", "bob@x.test")]),
    ("from bob@x.test ok", [("white", "bob@x.test")]),
    ("*@=x.test", [("white", "@x.test"), ("white", "*.x.test")]),
    ("foe@x.test bounce", [("black", "foe@x.test")]),
    ("from *@spam.test drop", [("black", "@spam.test")]),
    ("news-*@x.test  # a comment", [("white", "glob:news-*@x.test")]),
    ("# only a comment", []), ("", []),
])
def test_tmda_lines_translate(line: str, expected: list[tuple[str, str]]) -> None:
    found = sources.tmda_line(line)
    assert not isinstance(found, str)
    assert [(name, p.key) for name, p in found] == expected


@pytest.mark.parametrize(("line", "reason"), [
    ("to alice-list@x.test ok", "TMDA source 'to'"),
    ("bob@x.test hold", "TMDA action 'hold'"),
    ("bob@x.test confirm", "TMDA action 'confirm'"),
    ("from-file ~/.tmda/lists/whitelist ok", "TMDA source 'from-file'"),
    ("from -regex ^bob ok", "TMDA option '-regex'"),
    ("bob@=x.test", "cannot translate"),
    ("not an address at all", "TMDA action 'an'"),
    ("bob@x.test ok extra", "more than a pattern"),
])
def test_tmda_lines_that_cannot_be_translated_say_why(line: str, reason: str) -> None:
    found = sources.tmda_line(line)
    assert isinstance(found, str) and reason in found


def test_a_source_that_is_no_source_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(UsageError):
        sources.kind_of(tmp_path / "plain")
    with pytest.raises(UsageError):
        sources.kind_of(tmp_path / "missing")


SA_HAM = (b"Return-Path: <bob@remote.test>\nX-Spam-Checker-Version: SpamAssassin 4.0.1\n"
          b"X-Spam-Status: No, score=0.0\nDelivered-To: alice@example.test\n"
          b"Received: from mx.remote.test by mail.example.test\nFrom: bob@remote.test\n"
          b"X-Spam-Flag: YES\n")  # the sender wrote that one, below the owner's Received


def test_only_the_spam_header_above_the_owners_received_counts() -> None:
    assert not upstream.spam_flagged(SA_HAM, "X-Spam-Flag: YES")
    flagged = SA_HAM.replace(b"X-Spam-Status: No", b"X-Spam-Flag: YES\nX-Spam-Status: Yes")
    assert upstream.spam_flagged(flagged, "X-Spam-Flag: YES")
    assert upstream.spam_flagged(flagged, "x-spam-status: yes")
    assert not upstream.spam_flagged(flagged, "X-Spam-Flag: NO")
    assert not upstream.spam_flagged(flagged, "")
    # SpamAssassin's wrapper of a spam message (report_safe): its own Received line first.
    wrapped = (b"Received: from localhost by vm\n\twith SpamAssassin (version 4.0.1);\n"
               b"From: bob@remote.test\nX-Spam-Flag: YES\n")
    assert upstream.spam_flagged(wrapped, "X-Spam-Flag: YES")
    # rspamd's header, and a value that only starts like the expected one.
    assert upstream.spam_flagged(b"X-Spam: Yes\nReceived: x\n", "X-Spam: Yes")
    assert not upstream.spam_flagged(b"X-Spam: Yesterday\nReceived: x\n", "X-Spam: Yes")
