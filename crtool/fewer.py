"""The commands that let crtool ask fewer people to confirm: `learn`, `simulate`, `mode`,
`report` and `expect`. Their parsers and handlers live here; cli.py and commands.py only
register them. Thin: the work is in learn.py, simulate.py, observe.py and expect.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from crtool import terminal
from crtool.config import CONFIG_NAME, Settings, format_duration, parse_duration
from crtool.errors import UsageError
from crtool.exits import EXIT_NOTHING_READ, EXIT_OK

LEARN_HELP = """\
SOURCE is a Maildir (a directory with cur/ and new/), an mbox file, a vCard file (.vcf) or a
TMDA list file (one pattern a line; `*@=example.com` is the domain and its subdomains, an
action after the pattern such as `foe@x.test bounce` puts it on the blacklist).

By default the From: address of each message is whitelisted (automated mail - lists,
Auto-Submitted, no-reply - is passed over). --sent whitelists the recipients (To, Cc, Bcc) of
the messages instead: point it at your sent-mail folder. --lists whitelists the List-Id of each
list you keep mail from (an entry list:<id>). Entries already listed are left alone and an
address the blacklist matches is never whitelisted, so learning twice changes nothing.

Prints counts; --verbose adds one line per item skipped and why. Exit 0 when anything could be
read, 1 when nothing could."""


def add_parsers(sub: Any, owner_option: Any) -> None:
    """Register the commands on cli.py's sub-parsers."""
    learn = sub.add_parser(
        "learn", help="whitelist from your existing mail, address books and TMDA lists",
        description=LEARN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    learn.add_argument("sources", nargs="+", metavar="SOURCE",
                       help="a Maildir, an mbox file, a vCard file or a TMDA list file")
    learn.add_argument("--sent", action="store_true",
                       help="whitelist the recipients of the messages (your sent mail)")
    learn.add_argument("--lists", action="store_true",
                       help="whitelist the List-Ids of the lists the messages came from")
    learn.add_argument("--dry-run", action="store_true",
                       help="count what would be added; change nothing")
    learn.add_argument("--verbose", action="store_true",
                       help="one line for each item skipped, saying why")

    simulate = sub.add_parser(
        "simulate", help="run existing mail through today's lists; change nothing",
        description="Decide each message of a Maildir or mbox as delivery would now (lists, "
        "expect windows, spam_header, the rules; rate limits left out) and count what would "
        "be delivered, held (by reason) and challenged. Reads the database only. The "
        "envelope sender is the message's Return-Path, else its From:.")
    simulate.add_argument("source", metavar="MAILDIR|MBOX", help="the mail to run through")
    simulate.add_argument("--json", action="store_true", help="the counts as one JSON object")
    simulate.add_argument("--verbose", action="store_true",
                          help="one line per message: what would be done and why")

    mode = sub.add_parser(
        "mode", help="show or switch the mode: enforce, or observe (challenge nobody)",
        description="enforce: hold and challenge strangers. observe: deliver everything, "
        "challenge nobody, and record what enforce would have done (see 'crtool report'). "
        "Without an argument prints the mode. Sets `mode` in config.toml.")
    mode.add_argument("mode", nargs="?", choices=("enforce", "observe"),
                      help="the mode to switch to")

    report = sub.add_parser(
        "report", help="what enforce would have done while observing",
        description="Counts, by reason, of the messages observe mode delivered that enforce "
        "would have held, challenged or dropped, and the senders a switch to enforce would "
        "challenge (those whitelisted since are left out).")
    report.add_argument("--since", default="30d", metavar="DURATION",
                        help="look back this far (default 30d)")
    report.add_argument("--json", action="store_true", help="one JSON object")

    expect = sub.add_parser(
        "expect", help="accept mail from a domain for a while (sign-ups, password resets)",
        description="Open a window in which mail from DOMAIN and its subdomains is accepted, "
        "automated mail too: the envelope sender's domain or the From: domain (unless DMARC "
        "failed). Without DOMAIN lists the open windows.")
    expect.add_argument("domain", nargs="?", metavar="DOMAIN", help="e.g. example.com")
    expect.add_argument("--for", dest="window", default="2h", metavar="DURATION",
                        help="how long the window stays open (default 2h, at most 30d)")
    expect.add_argument("--close", action="store_true", help="close DOMAIN's window now")
    expect.add_argument("--json", action="store_true", help="the open windows as JSON")
    owner_option(learn, simulate, report, expect)


def handlers() -> dict[str, Any]:
    return {"learn": learn_command, "simulate": simulate_command, "mode": mode_command,
            "report": report_command, "expect": expect_command}


def _engine(settings: Settings) -> Any:
    from crtool.store.engine import make_engine

    return make_engine(settings.database_url, timeout=settings.database_timeout)


def _iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _print_json(value: Any) -> None:
    sys.stdout.write(terminal.json_text(value, indent=2) + "\n")


def _say(line: str) -> None:
    sys.stdout.write(terminal.shown(line) + "\n")


def learn_command(settings: Settings, args: argparse.Namespace) -> int:
    from crtool import learn

    options = learn.Options(sent=args.sent, lists=args.lists, dry_run=args.dry_run)
    counts = learn.learn(settings, _engine(settings), [Path(s) for s in args.sources], options,
                         say=_say if args.verbose else lambda _line: None,
                         now=int(time.time()))
    for line in learn.summary(counts, args.dry_run):
        _say(line)
    if counts.read == 0:
        sys.stderr.write("crtool: nothing could be read from the sources given\n")
        return EXIT_NOTHING_READ
    return EXIT_OK


def simulate_command(settings: Settings, args: argparse.Namespace) -> int:
    from crtool import service, simulate

    box = service.open_mailbox(settings)
    tally = simulate.simulate(box, Path(args.source),
                              say=_say if args.verbose else lambda _line: None)
    if args.json:
        _print_json(tally.as_json())
    else:
        for line in simulate.lines(tally):
            _say(line)
    return EXIT_OK


def mode_command(settings: Settings, args: argparse.Namespace) -> int:
    if getattr(args, "config", None):
        raise UsageError("in system mode set it per owner: owner add ADDR --set mode=observe")
    if args.mode is None:
        print(settings.mode)
        return EXIT_OK
    import tomllib

    from crtool import private
    from crtool.config import render_config, resolve_home, settings_from_mapping

    home = resolve_home(args.home, os.environ)
    path = home / CONFIG_NAME
    data = tomllib.loads((private.read_file(path) or b"").decode("utf-8"))
    data["mode"] = args.mode
    try:
        text = render_config(settings_from_mapping(home, data))
    except ValueError as error:
        raise UsageError(str(error)) from None
    private.replace_file(path, text.encode("utf-8"))
    was = settings.mode
    print(f"mode: {args.mode}" + (f" (was {was})" if was != args.mode else ""))
    if args.mode == "observe":
        print("Nobody is challenged now; 'crtool report' shows what enforce would have done.")
    return EXIT_OK


def report_command(settings: Settings, args: argparse.Namespace) -> int:
    from crtool import observe
    from crtool.store.engine import transaction

    try:
        since = int(time.time()) - parse_duration(args.since)
    except ValueError as error:
        raise UsageError(str(error)) from None
    with transaction(_engine(settings), write=False) as session:
        found = observe.report(session, settings.owner, since, settings.subaddress_separators,
                               settings.address)
    if args.json:
        _print_json({"mode": settings.mode, "since": _iso(found.since),
                     "by_reason": found.by_reason,
                     "would_challenge": [{"sender": s.sender, "messages": s.messages,
                                          "last": _iso(s.last_at)}
                                         for s in found.would_challenge]})
        return EXIT_OK
    print(f"mode: {settings.mode}; since {_iso(found.since)}")
    for line in observe.lines(found):
        _say(line)
    return EXIT_OK


def expect_command(settings: Settings, args: argparse.Namespace) -> int:
    from crtool import expect
    from crtool.store.engine import transaction

    now = int(time.time())
    engine = _engine(settings)
    if args.domain is None:
        with transaction(engine, write=False) as session:
            windows = expect.windows(session, settings.owner, now)
        if args.json:
            _print_json([{"domain": w.domain, "until": _iso(w.expires_at)} for w in windows])
        for w in windows if not args.json else []:
            print(f"{w.domain}  until {_iso(w.expires_at)}")
        return EXIT_OK
    domain = expect.parse_domain(args.domain)
    if args.close:
        with transaction(engine) as session:
            closed = expect.close_window(session, settings.owner, domain)
        print(f"closed: {domain}" if closed else f"no open window for {domain}")
        return EXIT_OK
    try:
        seconds = parse_duration(args.window)
    except ValueError as error:
        raise UsageError(str(error)) from None
    with transaction(engine) as session:
        until = expect.open_window(session, settings.owner, domain, now, seconds)
    print(f"expecting mail from {domain} (and its subdomains) for {format_duration(seconds)}, "
          f"until {_iso(until)}")
    return EXIT_OK
