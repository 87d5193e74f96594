"""The owner's commands: each opens the store, calls the library, and prints.

Thin on purpose (like sqlite-utils' CLI): the decisions live in service, store and policy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, TextIO

from crtool import addresses, terminal
from crtool import entries as entry_forms
from crtool.config import (
    CONFIG_NAME,
    Settings,
    load_settings,
    parse_duration,
    render_config,
    resolve_home,
    settings_from_mapping,
)
from crtool.errors import NotFound, UsageError
from crtool.exits import EXIT_NOT_LISTED, EXIT_OK


def run(args: argparse.Namespace) -> int:
    from crtool.policy import LIST_COMMANDS

    handlers = {
        **dict.fromkeys(LIST_COMMANDS, address_list),
        "pending": pending_command,
        "db": db_command,
        "keys": keys_command,
        "stats": stats_command,
        "web": web_command,
        "digest": digest_command,
        "check": check_command,
        "history": history_command,
        "address": address_command,
    }
    from crtool import fewer

    handlers.update(fewer.handlers())
    if getattr(args, "config", None):
        from crtool import system_commands

        return system_commands.run(args, handlers)
    if args.command == "owner":
        raise UsageError("'owner' needs --config FILE (system mode)")
    home = resolve_home(args.home, os.environ)
    if args.command == "init":
        return init(home, args)
    return handlers[args.command](load_settings(home), args)


def address_command(settings: Settings, args: argparse.Namespace) -> int:
    from crtool.tag_commands import address_command as run_address

    return run_address(settings, args)


def _now() -> int:
    return int(time.time())


def _engine(settings: Settings, create: bool = False) -> Any:
    from crtool.store.engine import make_engine

    return make_engine(settings.database_url, create=create, timeout=settings.database_timeout)


def _iso(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _print_json(value: Any) -> None:
    sys.stdout.write(terminal.json_text(value, indent=2) + "\n")


# init -----------------------------------------------------------------------------------------

def init(home: Path, args: argparse.Namespace) -> int:
    """Create or update HOME; never touches an existing key. Side effects: HOME (0700),
    config.toml, keys (0600), the database at the newest revision, the Maildir, and with
    --install the MTA's files in the home directory.

    Refuses a HOME that is a symbolic link or someone else's (private.py says why), and a HOME
    whose config exists but whose database is gone: making an empty one would challenge every
    whitelisted sender again, so that takes --new-database."""
    import tomllib

    from crtool import dotfiles, maildir, private, tokens
    from crtool.store import schema
    from crtool.store.engine import enable_wal, transaction
    from crtool.store.pending import lock_owner

    private.prepare_home(home)
    config_path = home / CONFIG_NAME
    existing = private.read_file(config_path)
    data: dict[str, Any] = {}
    if existing is not None:
        try:
            data = tomllib.loads(existing.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise UsageError(f"config {config_path} is not valid TOML: {error}") from None
    if args.address is not None:
        addresses.parse_owner_address(args.address)
    given = {"address": args.address, "maildir": args.maildir, "sendmail": args.sendmail,
             "database_url": args.database_url, "mta": args.mta}
    data.update({k: v for k, v in given.items() if v is not None})
    if "address" not in data:
        raise UsageError("init needs --address the first time")
    if args.maildir:
        data["maildir"] = str(Path(args.maildir).expanduser().absolute())
    try:
        settings = settings_from_mapping(home, data)
        text = render_config(settings)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if existing is not None and not args.new_database and _database_is_gone(settings):
        raise UsageError(
            f"{config_path} exists but its database {_database_name(settings)} is missing or "
            "empty: restore the database from a backup; 'crtool init --new-database' makes an "
            "empty one, and every sender would be challenged again")
    if args.install:
        dotfiles.deliver_command(settings)  # refuses a path no line can hold, before writing

    if not settings.keys_path.exists():
        tokens.write_keys(settings.keys_path, tokens.new_ring(_now()))
    engine = _engine(settings, create=True)
    enable_wal(engine)
    schema.upgrade(engine)
    with transaction(engine) as session:
        lock_owner(session, settings.owner, _now())
    engine.dispose()
    private.replace_file(config_path, text.encode("utf-8"))
    maildir.ensure(settings.maildir)

    print(f"crtool is set up in {home} for {settings.address}.")
    print(f"Database: {settings.database_url}\nMaildir:  {settings.maildir}\n")
    if args.install:
        for line in dotfiles.install(settings):
            print(line)
        return EXIT_OK
    # Printed at column 0 and nothing else on the lines: qmail reads a line that starts with a
    # space as an address to forward to, so an indented copy would bounce every message.
    if settings.mta == "qmail":
        print("Put these two lines, exactly as they are, into both ~/.qmail and "
              "~/.qmail-default\n(or run 'crtool init --install', which does it):\n")
        print("\n".join(dotfiles.qmail_lines(settings)))
    else:
        print("Put this line into ~/.forward (or run 'crtool init --install'):\n")
        print(dotfiles.forward_line(settings))
    return EXIT_OK


def _database_name(settings: Settings) -> str:
    from crtool.store.engine import sqlite_path

    path = sqlite_path(settings.database_url)
    if path is not None:
        return str(path)
    from sqlalchemy import make_url

    return make_url(settings.database_url).render_as_string(hide_password=True)


def _database_is_gone(settings: Settings) -> bool:
    """No database at the configured place, or one without crtool's tables."""
    from crtool.store import schema
    from crtool.store.engine import sqlite_path

    path = sqlite_path(settings.database_url)
    if path is not None and not path.exists():
        return True
    engine = _engine(settings)
    try:
        return schema.current(engine) is None
    finally:
        engine.dispose()


# whitelist / blacklist ------------------------------------------------------------------------

def address_list(settings: Settings, args: argparse.Namespace) -> int:
    from crtool.policy import LIST_COMMANDS
    from crtool.store import lists
    from crtool.store.engine import transaction

    list_name = LIST_COMMANDS[args.command]
    owner = settings.owner
    if args.verb in ("add", "remove"):
        from crtool import service

        box = _mailbox(settings)
        if args.verb == "add":
            for text, new in service.list_add(box, list_name, args.patterns, args.note):
                print(f"{'added' if new else 'already listed'}: {text}")
            return EXIT_OK
        removed, missing = service.list_remove(box, list_name, args.patterns)
        for text in removed:
            print(f"removed: {text}")
        if missing:
            raise NotFound(f"not on the {args.command}: {', '.join(missing)}")
        return EXIT_OK
    engine = _engine(settings)
    if args.verb == "check":
        with transaction(engine, write=False) as session:
            query = entry_forms.query(args.address, None, settings.subaddress_separators)
            rows = lists.entry_matches(session, owner, query.keys, query.probes)
            best = entry_forms.decide([row for row in rows if row[0] == list_name], query)
        if best is not None:
            print(f"listed: {args.address} (matches {_shown(best.key)})")
            return EXIT_OK
        print(f"not listed: {args.address}")
        return EXIT_NOT_LISTED
    if args.verb == "import":
        with _open_input(args.file) as handle, transaction(engine) as session:
            added = lists.bulk_import(session, owner, list_name, _read_patterns(handle), _now())
        print(f"imported: {added} new entries")
        return EXIT_OK
    with transaction(engine, write=False) as session:
        entries = lists.entries(session, owner, list_name)
        if args.verb == "export":
            for entry in entries:
                sys.stdout.write(entry.pattern + "\n")
        elif args.json:
            _stream_json_array(
                {"pattern": e.pattern, "kind": e.kind, "note": e.note,
                 "created_at": _iso(e.created_at)} for e in entries)
        else:
            for entry in entries:
                note = f"  # {entry.note}" if entry.note else ""
                sys.stdout.write(f"{entry.pattern}{note}\n")
    return EXIT_OK


def _shown(key: str) -> str:
    return addresses.Pattern(addresses.kind_of(key), key).text


def _stream_json_array(items: Iterator[dict[str, Any]]) -> None:
    """A JSON array written item by item, so a million entries need no million-item list."""
    sys.stdout.write("[")
    first = True
    for item in items:
        sys.stdout.write("\n  " if first else ",\n  ")
        sys.stdout.write(json.dumps(item, ensure_ascii=False))
        first = False
    sys.stdout.write("\n]\n" if not first else "]\n")


class _open_input:
    """FILE, or stdin for "-"; text, undecodable bytes replaced (they fail as patterns)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.handle: TextIO | None = None

    def __enter__(self) -> TextIO:
        if self.name == "-":
            return open(sys.stdin.fileno(), encoding="utf-8", errors="replace", closefd=False)
        try:
            self.handle = open(self.name, encoding="utf-8", errors="replace")  # noqa: SIM115
        except OSError as error:
            raise UsageError(f"cannot read {self.name}: {error.strerror}") from None
        return self.handle

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()


def _read_patterns(handle: TextIO) -> Iterator[addresses.Pattern]:
    """One pattern per line; blank lines and # comments skipped; a bad line stops the import
    (the whole import is one transaction, so nothing of it is kept)."""
    for number, line in enumerate(handle, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            yield entry_forms.parse_entry(text)
        except UsageError as error:
            raise UsageError(f"line {number}: {error}") from None


# pending --------------------------------------------------------------------------------------

def _mailbox(settings: Settings) -> Any:
    from crtool import service

    return service.open_mailbox(settings)


def pending_command(settings: Settings, args: argparse.Namespace) -> int:
    from crtool import service
    from crtool.store import pending
    from crtool.store.engine import transaction

    owner = settings.owner
    if args.verb == "list":
        statuses = (pending.HELD, pending.RELEASED, pending.DELETED) if args.all \
            else (pending.HELD,)
        if args.limit < 1 or args.offset < 0:
            raise UsageError("--limit must be at least 1 and --offset at least 0")
        with transaction(_engine(settings), write=False) as session:
            page = pending.page(session, owner, statuses, args.limit, args.offset,
                                where=_filters(owner, args))
        items: list[dict[str, Any]] = [{
            "id": row.id, "sender": row.sender, "from": row.from_header,
            "subject": row.subject, "received_at": _iso(row.received_at), "size": row.size,
            "status": row.status, "reason": row.reason,
            "challenged_at": _iso(row.challenged_at),
        } for row in page.rows]
        if args.json:
            _print_json(items)
            return EXIT_OK
        if not items:
            print("nothing held" if not args.all else "no messages")
            return EXIT_OK
        print(f"{'ID':8}  {'RECEIVED (UTC)':16}  {'STATUS':8}  {'WHY':19}  {'SENDER':30}  SUBJECT")
        for item in items:
            received = (item["received_at"] or "")[:16].replace("T", " ")
            sender = terminal.shown(item["sender"] or "<>", 30)
            print(f"{item['id']:8}  {received:16}  {item['status']:8}  {item['reason'][:19]:19}  "
                  f"{sender:30}  {terminal.shown(item['subject'], 60)}")
        shown = args.offset + len(items)
        if shown < page.total:
            print(f"({page.total - shown} more: --offset {shown})")
        return EXIT_OK
    if args.verb == "show":
        with transaction(_engine(settings), write=False) as session:
            row = pending.get(session, owner, args.id)
            if row is None:
                raise NotFound(f"no message {args.id}")
            if not pending.has_bytes(session, row.id):
                raise NotFound(f"message {row.id} was {row.status}; its bytes are no longer held")
            if args.summary:
                _print_summary(row, pending.head(session, row.id, SUMMARY_BYTES))
                return EXIT_OK
            # Piece by piece, inside one read transaction: a large message is never whole in
            # memory, and a release meanwhile cannot cut it short.
            sys.stdout.flush()
            with closing(pending.chunks(session, row.id)) as pieces:
                for piece in pieces:
                    sys.stdout.buffer.write(piece)
            sys.stdout.buffer.flush()
        return EXIT_OK
    if args.verb == "release":
        if not args.ids and not args.sender:
            raise UsageError("name held messages (ID…) or senders (--sender S)")
        box = _mailbox(settings)
        released = service.release(box, args.ids, whitelist=args.whitelist) if args.ids else []
        if args.sender:
            released += service.release_senders(box, args.sender, args.whitelist)
        for pending_id in released:
            print(f"released: {pending_id}")
        return EXIT_OK
    if args.verb == "delete":
        for pending_id in service.delete_ids(_mailbox(settings), args.ids, args.blacklist):
            print(f"deleted: {pending_id}")
        return EXIT_OK
    # purge
    try:
        age = parse_duration(args.older_than) if args.older_than else settings.hold_ttl
    except ValueError as error:
        raise UsageError(str(error)) from None
    box = _mailbox(settings)
    total = 0
    # Small batches, each its own transaction, so deliveries never wait long for the lock.
    while removed := service.purge_expired(box, age, 500):
        total += removed
    print(f"purged: {total} messages older than {args.older_than or 'hold_ttl'}")
    return EXIT_OK


def _filters(owner: str, args: argparse.Namespace) -> list[Any]:
    """The conditions of `pending list --reason/--sender/--new`."""
    from crtool.store import digests
    from crtool.store.models import Pending

    found: list[Any] = []
    if args.reason:
        found.append(Pending.reason == args.reason)
    if args.sender:
        found.append(Pending.sender_key == addresses.normalize_address(args.sender))
    if args.new:
        found.append(digests.new_condition(owner))
    return found


SUMMARY_LINES = 8
SUMMARY_BYTES = 64 * 1024


def _print_summary(row: Any, raw: bytes) -> None:
    """`pending show --summary`: the headers a person reads and the first lines of the body,
    every character a stranger chose escaped for the terminal."""
    from crtool.message import decode_words, parse_head

    head, _, body = raw.partition(b"\n\n")
    if not _:
        head, _, body = raw.partition(b"\r\n\r\n")
    facts = parse_head(head + b"\n\n")
    for name in ("From", "To", "Subject", "Date"):
        value = decode_words(facts.get(name) or "")
        print(f"{name + ':':9} {terminal.shown(' '.join(value.split()))}")
    print(f"{'Sender:':9} {terminal.shown(row.sender or '<>')}")
    print(f"{'Held:':9} {_iso(row.received_at)} ({row.reason}), {row.size} bytes, {row.status}")
    print()
    text = body.decode("utf-8", "replace")
    for line in text.splitlines()[:SUMMARY_LINES]:
        print(terminal.shown(line.rstrip()))


# digest, check, history -----------------------------------------------------------------------

def digest_command(settings: Settings, args: argparse.Namespace) -> int:
    """`crtool digest`: mail what is new, or print it with --json."""
    from crtool import digest

    box = _mailbox(settings)
    if args.json:
        _stream_json_array(digest.json_items(box))
        return EXIT_OK
    sent = digest.send(box, args.to)
    if not sent.digest_id:
        print("nothing new since the last digest; nothing sent")
    else:
        print(f"digest {sent.digest_id} sent to {sent.recipient}: {sent.held} held messages")
    return EXIT_OK


def check_command(settings: Settings, args: argparse.Namespace) -> int:
    """`crtool check ADDRESS`: the verdict now, from the same policy delivery uses."""
    from crtool import verdicts

    found = verdicts.check(_mailbox(settings), args.address, args.recipient)
    if args.json:
        _print_json(found)
        return EXIT_OK
    print(f"{terminal.shown(args.address)}: {found['verdict']}")
    print(f"  because: {found['why']}")
    return EXIT_OK


def history_command(settings: Settings, args: argparse.Namespace) -> int:
    """`crtool history SENDER`: every recorded decision about him, and what decides now."""
    from crtool import verdicts

    box = _mailbox(settings)
    events = verdicts.history(box, args.sender)
    now = verdicts.check(box, args.sender, None)
    if args.json:
        sys.stdout.write('{"sender": ' + json.dumps(args.sender, ensure_ascii=False)
                         + ', "now": ' + json.dumps(now, ensure_ascii=False) + ', "events": ')
        _stream_json_array(events)
        sys.stdout.write("}\n")
        return EXIT_OK
    shown = 0
    for event in events:
        shown += 1
        by = f" by {event['by']}" if event["by"] else ""
        why = f" ({terminal.shown(event['reason'])})" if event["reason"] else ""
        what = f" {event['pending_id']}" if event["pending_id"] else ""
        print(f"{event['at'][:16].replace('T', ' ')}  {event['kind']}{what}{why}{by}")
    if not shown:
        print(f"nothing recorded about {terminal.shown(args.sender)}")
    print(f"now: {now['verdict']} ({now['why']})")
    return EXIT_OK


# db, keys, stats ------------------------------------------------------------------------------

def db_command(settings: Settings, args: argparse.Namespace) -> int:
    from crtool.store import schema
    from crtool.store.engine import enable_wal

    if args.verb == "upgrade":
        # Never creates a SQLite file: a missing one is to be restored (see init).
        engine = _engine(settings)
        enable_wal(engine)
        schema.upgrade(engine)
        print(f"database at revision {schema.current(engine)}")
        return EXIT_OK
    engine = _engine(settings)
    now, head = schema.current(engine), schema.head()
    state = "up to date" if now == head else f"behind: newest is {head}; run 'crtool db upgrade'"
    print(f"revision {now or '(none)'} ({state})")
    return EXIT_OK


def keys_command(settings: Settings, args: argparse.Namespace) -> int:
    from crtool import tokens

    ring = tokens.load_keys(settings.keys_path)
    new_ring = tokens.rotated(ring, _now(), settings.confirm_ttl)
    tokens.write_keys(settings.keys_path, new_ring)
    dropped = len(ring) + 1 - len(new_ring)
    print(f"new signing key added; {len(new_ring)} keys in the ring"
          + (f", {dropped} expired ones removed" if dropped else ""))
    return EXIT_OK


def web_command(settings: Settings, args: argparse.Namespace) -> int:
    from crtool.web import server

    if args.verb == "login-link":
        print(server.login_link(settings, f"http://{args.listen}"))
        return EXIT_OK
    return server.run(settings, args.listen)


STAT_KINDS = ("delivered", "held", "challenged", "confirmed", "released", "dropped", "bounced",
              "deleted")


def stats_command(settings: Settings, args: argparse.Namespace) -> int:
    from crtool import tally
    from crtool.store import log
    from crtool.store.engine import transaction

    with transaction(_engine(settings), write=False) as session:
        counts = log.event_counts(session, settings.owner)
    totals = {kind: 0 for kind in STAT_KINDS}
    # Whitelisted mail accepted by deliver's fast read path is tallied beside the database.
    totals["delivered"] = tally.tallied_deliveries(settings.home)
    reasons: dict[str, dict[str, int]] = {"held": {}, "dropped": {}}
    for (kind, reason), n in counts.items():
        totals[kind] = totals.get(kind, 0) + n
        if kind in reasons and reason and reason != "challenged":
            reasons[kind][reason] = reasons[kind].get(reason, 0) + n
    if args.json:
        _print_json({"counts": totals, "held_without_challenge": reasons["held"],
                     "dropped_by_reason": reasons["dropped"]})
        return EXIT_OK
    for kind in STAT_KINDS:
        print(f"{kind:12} {totals[kind]}")
    for title, key in (("held without a challenge, by reason", "held"),
                       ("dropped, by reason", "dropped")):
        if reasons[key]:
            print(f"\n{title}:")
            for reason, n in sorted(reasons[key].items(), key=lambda kv: (-kv[1], kv[0])):
                print(f"  {reason:22} {n}")
    return EXIT_OK

