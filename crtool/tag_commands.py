"""The command line of the owner's outgoing mail and tagged addresses: `crtool sendmail` and
`crtool address`. Thin: the work is sendmail_command's and tag_service's.

`crtool sendmail` takes sendmail's own options, not crtool's: cli.main hands its words to
sendmail_command.run_words before argparse sees them (argparse would refuse `-oi` or `-f
addr`), and its parser below only serves `--help` and the man page.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from crtool import terminal
from crtool.config import Settings, parse_duration
from crtool.errors import UsageError
from crtool.exits import EXIT_NOT_ACCEPTED, EXIT_OK

DEFAULT_VALID = "30d"

SENDMAIL_EPILOG = """\
Set it as your mail program's sendmail:
  mutt:           set sendmail="/usr/local/bin/crtool sendmail"
  git send-email: git config --global sendemail.sendmailcmd "/usr/local/bin/crtool sendmail"
  any program:    /usr/local/bin/crtool sendmail -oi -f alice@example.test -- bob@example.com

The options are sendmail's own (-t, -f, -i, -oi, -oem, -F, -bm, --, ... read as Postfix's
sendmail reads them, unknown ones passed on). The real sendmail is the `sendmail` setting; it
gets the same arguments and the message, and its exit code is crtool's. A broken crtool
installation never stops the mail: it goes out anyway, with one line on stderr.
"""

ADDRESS_EPILOG = """\
examples:
  crtool address dated --valid 7d
  crtool address sender bob@example.com
  crtool address sender news@shop.example --domain
  crtool address keyword shop
  crtool address revoke keyword shop
  crtool address check alice-keyword-shop-abcdefghijklmnop@example.test

Mail to these addresses needs the MTA to hand every extension of your address to crtool:
qmail's ~/.qmail-default, Postfix's recipient_delimiter = -, Exim's local_part_suffix = -*.
"""


def add_commands(sub: Any) -> None:
    """The `sendmail` and `address` commands of build_parser()."""
    sendmail = sub.add_parser(
        "sendmail", help="your mail program's sendmail: whitelist whom you write to",
        description=_wrapped("Send one message (stdin) through the real sendmail with the same "
        "arguments and exit with its code. Once it took the message, every recipient "
        "(the arguments, or To/Cc/Bcc with -t) is whitelisted (source 'sent'), never over a "
        "blacklist entry and never your own address, and the Message-ID is recorded; a "
        "message without one gets a signed Message-ID. A reply naming it within "
        "reply_window is delivered without a challenge."),
        epilog=SENDMAIL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sendmail.add_argument("arguments", nargs=argparse.REMAINDER, metavar="ARG",
                          help="sendmail's options and the recipients, passed on unchanged")

    address = sub.add_parser(
        "address", help="tagged addresses: dated, sender, keyword",
        description=_wrapped("Addresses of yours that let mail through without a challenge: a "
        "dated address until it expires, a sender address from one sender (or domain) only, "
        "a keyword address until you revoke its keyword. Mail to an expired one, or to a "
        "sender address from anyone else, is read as mail to your bare address; mail to a "
        "revoked keyword address is dropped. None is ever bounced."),
        epilog=ADDRESS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = address.add_subparsers(dest="verb", required=True, metavar="VERB")
    dated = verbs.add_parser("dated", help="print a dated address: accepted until it expires")
    dated.add_argument("--valid", default=DEFAULT_VALID, metavar="DURATION",
                       help=f"how long it is accepted (default {DEFAULT_VALID})")
    sender = verbs.add_parser(
        "sender", help="print a sender address: accepted from ADDR only")
    sender.add_argument("sender", metavar="ADDR", help="the address it is for")
    sender.add_argument("--domain", action="store_true",
                        help="accepted from any address of ADDR's domain")
    keyword = verbs.add_parser(
        "keyword", help="print a keyword address: accepted until the keyword is revoked")
    keyword.add_argument("word", metavar="WORD",
                         help="a word: letters and digits, '.' or '_' inside")
    revoke = verbs.add_parser("revoke", help="revoke a keyword: its mail is dropped")
    revoke.add_argument("kind", choices=["keyword"], help="what to revoke: keyword")
    revoke.add_argument("word", metavar="WORD", help="the keyword")
    check = verbs.add_parser(
        "check", help="what kind of address it is, whether it verifies, for whom, until when",
        description="Say what kind of address ADDRESS is (dated, sender, keyword, confirm, "
        "release, accept, owner, other), whether its token verifies, for whom and until when. "
        "Exit 0 when mail to it is accepted unchallenged, 1 when not.")
    check.add_argument("address", metavar="ADDRESS", help="an address of yours")
    check.add_argument("--json", action="store_true", help="one JSON object")
    for parser in (dated, sender, keyword, revoke, check):
        parser.add_argument("--owner", metavar="ADDR", help="system mode: the owner to act for")


def _wrapped(text: str) -> str:
    import textwrap

    return textwrap.fill(text, 78)


def address_command(settings: Settings, args: argparse.Namespace) -> int:
    from crtool import tag_service
    from crtool.service import open_mailbox

    box = open_mailbox(settings)
    if args.verb == "dated":
        try:
            valid = parse_duration(args.valid)
        except ValueError as error:
            raise UsageError(str(error)) from None
        address, expires = tag_service.dated(box, valid)
        print(address)
        sys.stderr.write(f"valid until {_when(expires)}\n")
        return EXIT_OK
    if args.verb == "sender":
        address, value = tag_service.sender(box, args.sender, args.domain)
        print(address)
        return EXIT_OK
    if args.verb == "keyword":
        address, revoked = tag_service.keyword(box, args.word)
        print(address)
        if revoked:
            sys.stderr.write("this keyword is revoked: mail to it is dropped\n")
        return EXIT_OK
    if args.verb == "revoke":
        address, new = tag_service.revoke_keyword(box, args.word)
        print(f"{'revoked' if new else 'already revoked'}: {address}")
        return EXIT_OK
    found = tag_service.check(box, args.address)
    accepted = bool(found["verifies"]) and found["kind"] in ("dated", "sender", "keyword")
    if args.json:
        sys.stdout.write(terminal.json_text(found, indent=2) + "\n")
    else:
        print(_described(found))
    return EXIT_OK if accepted else EXIT_NOT_ACCEPTED


def _when(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


def _described(found: dict[str, Any]) -> str:
    kind = found["kind"]
    text: str = terminal.shown(str(found['address'])) + ': '
    if kind in ("dated", "sender", "keyword"):
        text += f"{kind} address, "
        text += {"valid": "verifies", "expired": "expired", "revoked": "revoked (dropped)",
                 "forged": "does not verify", "unknown": "not recorded here (made for whom "
                 "is unknown)"}.get(found["status"], found["status"])
        if found["for"]:
            text += f", for {terminal.shown(found['for'])}"
        if found["until"]:
            text += f", until {found['until']}"
        return text
    if kind in ("confirm", "release", "accept"):
        return text + f"a {kind} address (its token is checked against its held message)"
    if kind == "owner":
        return text + "your own address (mail to it goes through the lists and rules)"
    return text + "not an address of yours"
