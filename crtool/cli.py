"""The command line: `build_parser()` apart from `main(argv)`, the only place where exceptions
become exit codes and one line on stderr.

Nothing heavy is imported at module level: `crtool deliver` runs once per message and pays
for every import, so each command imports what it needs when it runs.
"""

from __future__ import annotations

import os
import sys

from crtool.errors import BadToken, NotFound, TemporaryFailure, UsageError
from crtool.exits import (
    EX_TEMPFAIL,
    EXIT_ENVIRONMENT,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
)
from crtool.profiles import MTA_PROFILES as MTA_CHOICES

# Without importing typing: deliver's client path starts faster without it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

    from crtool.client import Request



EXAMPLES = """\
examples:
  crtool init --address alice@example.test --maildir ~/Maildir
  crtool whitelist add bob@example.com @example.org '*@*.example.net'
  crtool whitelist import friends.txt
  crtool pending list
  crtool pending release k3f9a2bq --whitelist
  crtool pending list --new --reason list_headers
  crtool digest
  crtool history bob@example.com
  crtool learn --sent ~/Maildir/.Sent && crtool learn --lists ~/Maildir
  crtool whitelist add 'list:<dev.lists.example.org>' 'bob-*@example.com'
  crtool mode observe; crtool report
  crtool expect shop.example --for 2h
  printf 'Subject: hi\\n\\nhello\\n' | SENDER=bob@remote.test \\
      RECIPIENT=alice@example.test crtool deliver
"""


PATTERN_HELP = ("bob@example.com, @example.com (or *@example.com), *@*.example.com, "
                "bob-*@example.com, list:LIST-ID, from:PATTERN")


def _add_list_commands(sub: Any, name: str) -> None:
    parser = sub.add_parser(name, help=f"manage the {name}",
                            description=f"Manage the {name}. Patterns: bob@example.com, "
                            "@example.com (or *@example.com), *@*.example.com (subdomains), "
                            "bob-*@example.com (* and ? in the local part), list:LIST-ID (the "
                            "List-Id header), from:PATTERN (the From: header's address; a "
                            "whitelist from: entry never counts when DMARC failed).")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    add = verbs.add_parser("add", help="add patterns")
    add.add_argument("patterns", nargs="+", metavar="PATTERN", help=PATTERN_HELP)
    add.add_argument("--note", default="", help="a note kept with each entry")
    remove = verbs.add_parser("remove", help="remove patterns")
    remove.add_argument("patterns", nargs="+", metavar="PATTERN", help="patterns as listed")
    listing = verbs.add_parser("list", help="list the entries")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    check = verbs.add_parser("check", help="exit 0 when ADDRESS is listed, 1 when not")
    check.add_argument("address", metavar="ADDRESS", help="an address to look up")
    imp = verbs.add_parser("import", help="add one pattern per line from FILE or - (stdin)")
    imp.add_argument("file", metavar="FILE", help="a file of patterns, or - for stdin")
    export = verbs.add_parser("export", help="print every pattern, one per line")
    _owner_option(add, remove, listing, check, imp, export)


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from crtool.exits import EXIT_CODES_HELP

    parser = argparse.ArgumentParser(
        prog="crtool",
        description="A whitelist challenge-response mail agent.",
        epilog=f"{EXAMPLES}\n{EXIT_CODES_HELP}\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--home", help="crtool's directory (default $CRTOOL_HOME, ~/.crtool)")
    parser.add_argument("--config", metavar="FILE",
                        help="system mode: the host's config file (many owners, see 'owner')")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0",
                        help="print crtool's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = sub.add_parser("init", help="create or update HOME, keys and database")
    init.add_argument("--address", help="the protected address, e.g. alice@example.test")
    init.add_argument("--maildir", help="where released mail goes (default ~/Maildir)")
    init.add_argument("--sendmail", help="command that sends challenges")
    init.add_argument("--database-url", help="SQLAlchemy URL (default sqlite in HOME)")
    init.add_argument("--mta", choices=MTA_CHOICES, help="exit-code profile (default qmail)")
    init.add_argument("--install", action="store_true",
                      help="write ~/.qmail and ~/.qmail-default (qmail; the old ones kept as "
                      "backups, their delivery lines after crtool's) or ~/.forward")
    init.add_argument("--new-database", action="store_true",
                      help="when the config exists but its database is gone: make an empty "
                      "one instead of refusing (restoring a backup is better)")

    deliver = sub.add_parser(
        "deliver", help="the delivery agent the MTA runs for each message",
        description="Read one message on stdin, the envelope from the environment "
        "(SENDER, RECIPIENT) or the flags, and deliver, hold, challenge or confirm.",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    deliver.add_argument("--mta", choices=MTA_CHOICES,
                         help="exit-code profile (default: the config's mta)")
    deliver.add_argument("--sender", help="envelope sender (overrides $SENDER)")
    deliver.add_argument("--recipient", help="envelope recipient (overrides $RECIPIENT)")

    serve = sub.add_parser(
        "serve", help="the resident mode: keep crtool loaded for deliver (foreground)",
        description="Run in the foreground under a supervisor (daemontools, runit, systemd; "
        "see etc/crtool-serve.*), listening on HOME/crtool.sock (0600, the owner's uid only). "
        "While it runs, deliver hands each message to it; when it is stopped, deliver "
        "handles messages itself. SIGTERM finishes the deliveries under way and exits 0. "
        "Without a supervisor, deliver starts one itself when serve_idle is set (see README).")
    serve.add_argument("--idle", metavar="DURATION",
                       help="exit after this long without a delivery, e.g. 10m "
                       "(default: run until stopped)")

    from crtool.policy import ListKind

    for kind in ListKind:
        _add_list_commands(sub, kind.command)

    pend = sub.add_parser(
        "pending", help="the held messages",
        description="The held messages: list and filter them, read one, release or delete.")
    verbs = pend.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser(
        "list", help="held messages, newest first",
        description="Held messages, newest first, with why each got no challenge (WHY).")
    listing.add_argument("--json", action="store_true", help="one JSON array of objects")
    listing.add_argument("--all", action="store_true", help="released and deleted ones too")
    listing.add_argument("--limit", type=int, default=50, metavar="N",
                         help="show at most N messages (default 50)")
    listing.add_argument("--offset", type=int, default=0, metavar="N",
                         help="skip the newest N first, for the next page (default 0)")
    listing.add_argument("--reason", metavar="R",
                         help="only those held for reason R (e.g. list_headers; "
                         "see docs/reasons.md)")
    listing.add_argument("--sender", metavar="S", help="only those from envelope sender S")
    listing.add_argument("--new", action="store_true",
                         help="only those no digest has reported yet")
    show = verbs.add_parser("show", help="print a held message byte for byte")
    show.add_argument("id", metavar="ID", help="the held message's id (pending list)")
    show.add_argument("--summary", action="store_true",
                      help="From, To, Subject, Date, reason and the first lines instead, "
                      "escaped for a terminal")
    release = verbs.add_parser(
        "release", help="deliver held messages into the Maildir",
        description="Deliver held messages into the Maildir. With --whitelist, everything "
        "held from their senders goes too and each sender is whitelisted (source "
        "'released by owner').")
    release.add_argument("ids", nargs="*", metavar="ID", help="held messages' ids")
    release.add_argument("--sender", action="append", default=[], metavar="S",
                         help="everything held from envelope sender S (repeatable)")
    release.add_argument("--whitelist", action="store_true",
                         help="release all held from those senders and whitelist them")
    delete = verbs.add_parser(
        "delete", help="delete held messages",
        description="Delete held messages. With --blacklist, everything held from their "
        "senders goes too and each sender is blacklisted.")
    delete.add_argument("ids", nargs="+", metavar="ID", help="held messages' ids")
    delete.add_argument("--blacklist", action="store_true",
                        help="delete all held from those senders and blacklist them")
    purge = verbs.add_parser("purge", help="remove messages older than a duration")
    purge.add_argument("--older-than", default=None, metavar="DURATION",
                       help="e.g. 14d (default hold_ttl)")
    _owner_option(listing, show, release, delete, purge)

    digest = sub.add_parser(
        "digest", help="mail the owner what was held since the last digest",
        description="Mail the owner (setting digest_to, default the address) one message\n"
        "listing what was held since the last digest, grouped by reason: the newest 20\n"
        "per reason, with a release address per message and an accept address per\n"
        "sender (mail to them acts once and sends nothing back). Nothing new: nothing\n"
        "sent, exit 0. `crtool serve` sends one every digest_every (default 1d).",
        epilog="examples:\n  crtool digest\n  crtool digest --to me@elsewhere.test\n"
        "  crtool digest --json | jq '.[].subject'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    digest.add_argument("--to", metavar="ADDR", help="send it to ADDR instead of digest_to")
    digest.add_argument("--json", action="store_true",
                        help="print every new held message with its addresses instead; "
                        "nothing is sent or marked")

    check = sub.add_parser(
        "check", help="the verdict delivery would give a sender now, and why",
        description="The verdict `deliver` would give mail from ADDRESS now (deliver, drop, "
        "challenge, hold without challenge) and the list entry or rule that decides it. The "
        "blacklist wins a tie. Header-based rules (lists, bulk, Auto-Submitted) depend on the "
        "message and are not guessed here.")
    check.add_argument("address", metavar="ADDRESS", help="the envelope sender to check")
    check.add_argument("--recipient", metavar="R",
                       help="the envelope recipient (default the owner's address)")
    check.add_argument("--json", action="store_true", help="the verdict as a JSON object")

    history = sub.add_parser(
        "history", help="every decision about one sender, and who made it",
        description="Every decision about SENDER, oldest first: delivered, held (reason), "
        "challenged, confirmed by the sender, released or deleted by the owner, listed or "
        "unlisted and by whom; then the list entry that decides him now.")
    history.add_argument("sender", metavar="SENDER", help="an envelope sender address")
    history.add_argument("--json", action="store_true", help="one JSON object")

    db = sub.add_parser("db", help="the database schema")
    db_verbs = db.add_subparsers(dest="verb", required=True, metavar="VERB")
    db_verbs.add_parser("upgrade", help="migrate to the newest revision")
    db_verbs.add_parser("current", help="show the revision")

    keys = sub.add_parser("keys", help="the signing key ring")
    key_verbs = keys.add_subparsers(dest="verb", required=True, metavar="VERB")
    key_verbs.add_parser("rotate", help="add a new key; old ones verify until tokens expire")

    web = sub.add_parser(
        "web", help="the web pages: a Confirm page for senders, the held mail for you",
        description="Serve the web pages (Flask in waitress) on --listen, in the foreground,\n"
        "behind your HTTPS reverse proxy (etc/nginx-crtool.conf, etc/crtool-web.service).\n"
        "Senders open GET /c/TOKEN from their challenge (when web_url is set) and confirm\n"
        "with its button; you log in with a one-time link from 'crtool web login-link' and\n"
        "see the held mail, release or delete it, and edit the lists. Set web_url to the\n"
        "address the proxy serves it at, and web_trusted_proxies to the number of proxies\n"
        "in front (0 when clients reach it directly).",
        epilog="examples:\n  crtool web --listen 127.0.0.1:8025\n  crtool web login-link",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    web.add_argument("--listen", default="127.0.0.1:8025", metavar="HOST:PORT",
                     help="where to listen (default 127.0.0.1:8025)")
    web_verbs = web.add_subparsers(dest="verb", metavar="VERB")
    web_verbs.add_parser(
        "login-link", help="print a one-time login link (valid 15 minutes, once)",
        description="Print a one-time link that logs you in to the web pages: valid for 15 "
        "minutes and for one use. It starts with web_url, or with http://HOST:PORT of --listen "
        "when web_url is not set.")

    stats = sub.add_parser("stats", help="counts of what happened")
    stats.add_argument("--json", action="store_true", help="one JSON object")
    _owner_option(stats)

    doctor = sub.add_parser(
        "doctor", help="check the installation; one line per problem",
        description="Check HOME (0700) and the key ring (0600, yours), the config, the database "
        "(PRAGMA quick_check on SQLite, schema at the newest revision), sendmail, the "
        "challenge template, that ~/.qmail and ~/.qmail-default (or ~/.forward) run this "
        "crtool first, and that no stale crtool.sock is left. Prints one line per problem; "
        "exit 0 when there is none, 4 when there is any.")
    doctor.add_argument("--json", action="store_true", help="the problems as a JSON array")
    from crtool import fewer

    fewer.add_parsers(sub, _owner_option)
    _add_system_commands(sub)
    from crtool.tag_commands import add_commands

    add_commands(sub)
    return parser


def _add_system_commands(sub: Any) -> None:
    """System mode (--config FILE): owners as rows, the LMTP server, its health check, and
    --owner on every owner command."""
    owner = sub.add_parser("owner", help="system mode: the owners this host serves",
                           description="Owners are rows in the shared database; each has a "
                           "Maildir or a downstream LMTP server (Dovecot's) for its mail.")
    verbs = owner.add_subparsers(dest="verb", required=True, metavar="VERB")
    add = verbs.add_parser("add", help="serve an owner (again: change its target or settings)")
    add.add_argument("address", metavar="ADDR", help="the owner's address")
    target = add.add_mutually_exclusive_group(required=True)
    target.add_argument("--maildir", help="deliver into this Maildir")
    target.add_argument("--lmtp-next", metavar="TARGET",
                        help="pass on to this LMTP server: unix:PATH or HOST:PORT")
    add.add_argument("--set", action="append", metavar="NAME=VALUE",
                     help="a setting over the system default, e.g. confirm_ttl=7d")
    listing = verbs.add_parser("list", help="the owners served")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    remove = verbs.add_parser("remove", help="stop serving an owner (its data is kept)")
    remove.add_argument("address", metavar="ADDR", help="the owner's address")

    lmtp = sub.add_parser(
        "lmtp", help="system mode: the LMTP server for the whole host (foreground)",
        description="Serve LMTP (RFC 2033) for every owner of the host: 250 delivered or "
        "held, 450 temporary failure, 550 5.1.1 for an address no owner has. Runs in the "
        "foreground under systemd (etc/crtool-lmtp.service); SIGTERM lets transactions under "
        "way finish and exits 0.")
    lmtp.add_argument("--listen", metavar="unix:PATH|HOST:PORT",
                      help="where to listen (default: [lmtp] listen of the config)")
    health = sub.add_parser(
        "health", help="system mode: is the LMTP server answering and the database reachable?",
        description="Exit 0 and print 'ok' when the LMTP server greets and answers LHLO and "
        "the database answers; else one line saying what failed, exit 4.")
    health.add_argument("--listen", metavar="unix:PATH|HOST:PORT",
                        help="the server to ask (default: [lmtp] listen of the config)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")



def _owner_option(*parsers: argparse.ArgumentParser) -> None:
    """--owner ADDR on each command (or verb) that acts for one owner, for system mode."""
    for parser in parsers:
        parser.add_argument("--owner", metavar="ADDR", help="system mode: the owner to act for")


def _describe(error: BaseException) -> str:
    """One line for an unexpected error, saying what broke rather than where."""
    from crtool.delivery import describe

    return describe(error)


def _print_traceback(error: BaseException) -> None:
    """For --debug; `traceback` is imported only then, since deliver pays for every import."""
    import traceback

    traceback.print_exception(error)


def run_deliver(args: argparse.Namespace) -> int:
    """`crtool deliver`: never raises; every failure of the environment is a retry."""
    from crtool import client
    from crtool.home import resolve

    request = client.Request.of_process(os.environb, args.mta, args.sender, args.recipient)
    return _deliver(resolve(args.home, os.environ), request, args.debug)


def _deliver(home: str, request: Request, debug: bool) -> int:
    """Deliver stdin: through the resident server (`crtool serve`) when HOME/crtool.sock is
    there and it answers, else here, by the same code (delivery.handle), more slowly."""
    from crtool import client

    try:
        if sys.stdin is None:
            # Started with descriptor 0 closed (`<&-`): there is no message to read, which
            # only a broken installation does; the MTA keeps the message and retries.
            raise TemporaryFailure("stdin is closed: no message to read")
        stream = sys.stdin.buffer
        reply = None
        if os.path.exists(os.path.join(home, client.SOCKET_NAME)):
            reply, stream = client.deliver(home, request, stream)
        if reply is None:
            # Imported only now: a client whose server answered never loads the delivery code.
            from pathlib import Path

            from crtool import autostart, delivery

            resources = delivery.OneShot()
            answer = delivery.handle(Path(home), request, stream, resources, fast=True,
                                     on_error=_print_traceback if debug else None)
            reply = delivery.status(answer)
            if resources.loaded is not None and answer.outcome != "tempfail":
                # Done in-process; the deliveries after this one may be a server's clients.
                autostart.start(home, resources.loaded.serve_idle)
    except BaseException as error:  # noqa: BLE001 - anything unexpected: the MTA retries
        from crtool import delivery

        if debug:
            _print_traceback(error)
        reply = delivery.status(delivery.failure(request, error))
    code, line = reply
    if line:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    return code


_DELIVER_FLAGS = ("--mta", "--sender", "--recipient")


def _client_deliver(argv: Sequence[str] | None) -> int | None:
    """deliver before argparse is even imported (a client of the resident server, or
    in-process), or None.

    Taken only for the plain forms a .qmail line or a Postfix pipe runs
    (`[--home H] deliver [--mta M] [--sender S] [--recipient R]`); anything else (--debug,
    --help, '=' or abbreviated options, an unknown MTA, a value that starts with '-') goes
    through build_parser() as ever. Building the parser of every command costs more than
    the whitelisted check itself (argparse, and shutil with bz2 and lzma for its help).
    """
    words = list(sys.argv[1:] if argv is None else argv)
    home_arg = None
    if words[:1] == ["--home"] and len(words) > 1 and not words[1].startswith("-"):
        home_arg, words = words[1], words[2:]
    if words[:1] != ["deliver"]:
        return None
    flags: dict[str, str] = {}
    rest = words[1:]
    while rest:
        if len(rest) < 2 or rest[0] not in _DELIVER_FLAGS or rest[0] in flags \
                or rest[1].startswith("-"):
            return None
        flags[rest[0]], rest = rest[1], rest[2:]
    if flags.get("--mta", "qmail") not in MTA_CHOICES:
        return None
    from crtool import client
    from crtool.home import resolve

    home = resolve(home_arg, os.environ)
    request = client.Request.of_process(os.environb, flags.get("--mta"), flags.get("--sender"),
                                        flags.get("--recipient"))
    return _deliver(home, request, debug=False)


def run_serve(args: argparse.Namespace) -> int:
    """`crtool serve`: a broken installation stops it at once with one line and exit 4."""
    from crtool import serve
    from crtool.config import parse_duration, resolve_home

    try:
        idle = (parse_duration(args.idle) or None) if args.idle else None  # 0: never
    except ValueError as error:
        return _fail(args, error, f"error: --idle: {error}", EXIT_USAGE)
    try:
        return serve.run(resolve_home(args.home, os.environ), idle=idle)
    except TemporaryFailure as error:
        return _fail(args, error, f"error: {error}", EXIT_ENVIRONMENT)
    except Exception as error:  # noqa: BLE001 - one line, never a traceback unless --debug
        return _fail(args, error, f"error: {_describe(error)}", EXIT_ENVIRONMENT)


def run_doctor(args: argparse.Namespace) -> int:
    """`crtool doctor`: every problem found, one line each, on stdout; exit 4 when any."""
    import json

    from crtool import doctor
    from crtool.config import resolve_home

    try:
        found = doctor.run(resolve_home(args.home, os.environ))
    except Exception as error:  # noqa: BLE001 - one line, never a traceback unless --debug
        return _fail(args, error, f"error: {_describe(error)}", EXIT_ENVIRONMENT)
    if args.json:
        print(json.dumps(found, indent=2, ensure_ascii=False))
    else:
        for line in found:
            print(line)
        if not found:
            print("no problems found")
    return EXIT_ENVIRONMENT if found else EXIT_OK


def run_hub(args: argparse.Namespace) -> int:
    """`crtool lmtp` and `crtool health`: system mode only; a broken installation is one
    line and exit 4."""
    if not args.config:
        sys.stderr.write(f"crtool: error: '{args.command}' needs --config FILE\n")
        return EXIT_USAGE
    from pathlib import Path

    from crtool import owners

    try:
        system = owners.load_system(Path(args.config))
        if args.command == "health":
            from crtool import health

            problem = health.check(system, args.listen or system.lmtp.listen, args.timeout)
            if problem:
                sys.stderr.write(f"crtool: {problem}\n")
                return EXIT_ENVIRONMENT
            print("ok")
            return EXIT_OK
        try:
            from crtool import lmtp
        except ImportError as error:
            return _fail(args, error, f"error: 'lmtp' needs {error.name}: "
                         "pip install 'crtool[hub]'", EXIT_ENVIRONMENT)
        return lmtp.run(system, args.listen or system.lmtp.listen)
    except TemporaryFailure as error:
        return _fail(args, error, f"error: {error}", EXIT_ENVIRONMENT)
    except Exception as error:  # noqa: BLE001 - one line, never a traceback unless --debug
        return _fail(args, error, f"error: {_describe(error)}", EXIT_ENVIRONMENT)


def command_word(words: Sequence[str]) -> str | None:
    """The command a command line names: the first word after the global options (`--home`
    and its value, `--debug`, ...), or None. A word elsewhere, such as the pattern in
    `whitelist add deliver`, names no command."""
    position = 0
    while position < len(words):
        word = words[position]
        if not word.startswith("-") or word == "-":
            return word
        if word == "--":
            return words[position + 1] if position + 1 < len(words) else None
        # --home and --config take a value (argparse also takes an unambiguous abbreviation).
        takes_value = "=" not in word and len(word) > 3 and (
            "--home".startswith(word) or "--config".startswith(word))
        position += 2 if takes_value else 1
    return None


def main(argv: Sequence[str] | None = None) -> int:
    quick = _client_deliver(argv)
    if quick is not None:
        return quick
    words = list(sys.argv[1:] if argv is None else argv)
    if command_word(words) == "sendmail" and "--help" not in words:
        from crtool.sendmail_command import run_words

        return run_words(words)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        code = int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_USAGE
        words = list(sys.argv[1:] if argv is None else argv)
        if code != 0 and command_word(words) == "deliver":
            # A delivery line crtool cannot read is a broken installation, not a bad
            # message: the MTA must keep the message. 75 is a retry for qmail and Postfix
            # alike, where a usage error's 2 would bounce under Postfix.
            return EX_TEMPFAIL
        return code
    if args.command == "deliver":
        return run_deliver(args)
    if args.command == "serve":
        return run_serve(args)
    if args.command == "doctor":
        return run_doctor(args)
    if args.command in ("lmtp", "health"):
        return run_hub(args)

    from crtool import commands

    try:
        return commands.run(args)
    except UsageError as error:
        return _fail(args, error, f"error: {error}", EXIT_USAGE)
    except NotFound as error:
        return _fail(args, error, f"not found: {error}", EXIT_NOT_FOUND)
    except (TemporaryFailure, BadToken) as error:
        return _fail(args, error, f"error: {error}", EXIT_ENVIRONMENT)
    except BrokenPipeError:
        # The reader went away (crtool whitelist list | head): not an error worth a line.
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - one line, never a traceback unless --debug
        return _fail(args, error, f"error: {_describe(error)}", EXIT_ENVIRONMENT)


def _fail(args: argparse.Namespace, error: BaseException, line: str, code: int) -> int:
    if args.debug:
        _print_traceback(error)
    sys.stderr.write(f"crtool: {line}\n")
    return code
