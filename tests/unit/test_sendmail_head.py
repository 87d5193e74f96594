"""What `crtool sendmail` reads of the message before handing it over: the header block only,
where the real sendmail would read it; the Message-ID it adds, in the message's own line ends;
the recipients `-t` means."""

from __future__ import annotations

import io

from crtool.sendmail_command import header_recipients, message_id_of, read_head, with_message_id


def test_the_head_ends_at_the_empty_line_and_the_body_stays_in_the_pipe() -> None:
    stream = io.BytesIO(b"To: b@x.test\nSubject: s\n\nbody\n.\nmore\n")
    head, ended = read_head(stream, ignore_dots=True)
    assert (head, ended, stream.read()) == (b"To: b@x.test\nSubject: s\n\n", False,
                                            b"body\n.\nmore\n")
    # Without -i a line of one dot ends the message, for sendmail as for crtool.
    head, ended = read_head(io.BytesIO(b"To: b@x.test\n.\nX: y\n"), ignore_dots=False)
    assert head == b"To: b@x.test\n.\n" and not ended
    head, ended = read_head(io.BytesIO(b"To: b@x.test\n"), ignore_dots=True)
    assert (head, ended) == (b"To: b@x.test\n", True)


def test_a_message_id_goes_first_in_the_line_ends_the_message_uses() -> None:
    assert with_message_id(b"To: b@x.test\r\n\r\n", "<i@d.test>") == \
        b"Message-ID: <i@d.test>\r\nTo: b@x.test\r\n\r\n"
    assert with_message_id(b"From alice Tue Dec  1 00:00:00 2026\nTo: b@x.test\n\n",
                           "<i@d.test>") == \
        b"From alice Tue Dec  1 00:00:00 2026\nMessage-ID: <i@d.test>\nTo: b@x.test\n\n"
    assert message_id_of(b"Message-Id: <own@laptop.test>\n\n") == (True, "<own@laptop.test>")
    # A Message-ID that is no valid msg-id is kept as it is (no second one), and not recorded.
    assert message_id_of(b"Message-ID: not one\n\n") == (True, "")
    assert message_id_of(b"Subject: x\n\n") == (False, "")


def test_dash_t_reads_to_cc_bcc_or_the_resent_fields_of_a_resent_message() -> None:
    head = (b"To: Bob <bob@x.test>, \"Smith, Carol\" <carol@y.test>\n"
            b"Cc: dave@z.test (Dave),\n\terin+x@w.test\nBcc: erin@w.test\nFrom: a@example.test\n\n")
    assert header_recipients(head) == ["bob@x.test", "carol@y.test", "dave@z.test", "erin+x@w.test",
                                       "erin@w.test"]
    resent = b"To: bob@x.test\nResent-From: a@example.test\nResent-To: frank@v.test\n\n"
    assert header_recipients(resent) == ["frank@v.test"]
