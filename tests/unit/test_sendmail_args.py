"""`crtool sendmail` reads sendmail's command line as Postfix's sendmail does: what it
whitelists is what the MTA sends to, and a line that sends nothing is left alone."""

from __future__ import annotations

import pytest

from crtool.sendmail_args import parse


@pytest.mark.parametrize(("argv", "recipients", "extract", "dots", "sender"), [
    # mutt's default: sendmail -oem -oi -- RCPT…
    (["-oem", "-oi", "--", "bob@x.test", "carol@y.test"], ("bob@x.test", "carol@y.test"),
     False, True, None),
    # git send-email: sendmail -i RCPT…, with -f when sendemail.envelopeSender is set
    (["-i", "-f", "alice@example.test", "bob@x.test"], ("bob@x.test",), False, True,
     "alice@example.test"),
    (["-falice@example.test", "-t"], (), True, False, "alice@example.test"),
    (["-ti", "bob@x.test"], ("bob@x.test",), True, True, None),
    (["-r", "a@b.test", "-F", "Alice Example", "-bm", "-N", "delay,failure", "-V", "envid1",
      "bob@x.test"], ("bob@x.test",), False, False, "a@b.test"),
    # getopt stops at the first word that is no option: what follows is a recipient.
    (["bob@x.test", "-t"], ("bob@x.test", "-t"), False, False, None),
    (["--", "-odd@x.test"], ("-odd@x.test",), False, False, None),
    # An option letter Postfix does not know is passed on, taken for a flag.
    (["-Q", "-oi", "bob@x.test"], ("bob@x.test",), False, True, None),
    (["-XV", "bob@x.test"], ("bob@x.test",), False, False, None),
])
def test_sending_command_lines(argv: list[str], recipients: tuple[str, ...], extract: bool,
                               dots: bool, sender: str | None) -> None:
    found = parse(argv)
    assert found.sends and found.why_not == ""
    assert (found.recipients, found.extract, found.ignore_dots, found.sender) == (
        recipients, extract, dots, sender)


@pytest.mark.parametrize("argv", [
    ["-bp"], ["-bs"], ["-bi"], ["-bv", "bob@x.test"], ["-I"], ["-q"], ["-q30m"],
    ["-qRexample.test"], ["-b", "d"], ["-f"], ["-n", "bob@x.test"], ["-bz"],
])
def test_command_lines_that_send_nothing(argv: list[str]) -> None:
    found = parse(argv)
    assert not found.sends and found.why_not
    assert found.recipients == () and not found.extract
