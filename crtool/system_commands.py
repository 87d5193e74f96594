"""The command line in system mode (`crtool --config FILE …`): the host's own commands (init,
db, keys, owner) and every owner command of the single-owner mode, run for `--owner ADDR`.

Thin like commands.py: an owner command gets the owner's Settings (owners.py) and then runs the
very handler it runs for a single owner's config.toml.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from crtool import owners
from crtool.config import Settings
from crtool.errors import NotFound, UsageError
from crtool.exits import EXIT_OK

Handler = Callable[[Settings, argparse.Namespace], int]
System = owners.System


def run(args: argparse.Namespace, handlers: Mapping[str, Handler]) -> int:
    system = owners.load_system(Path(args.config))
    if args.command == "init":
        return init(system)
    if args.command == "owner":
        return owner_command(system, args)
    if args.command in ("db", "keys"):
        return handlers[args.command](owners.host_settings(system), args)
    address = getattr(args, "owner", None)
    if not address:
        raise UsageError(f"'{args.command}' needs --owner ADDR in system mode (--config)")
    return handlers[args.command](settings_of(system, address), args)


def _engine(system: System, create: bool = False) -> Any:
    from crtool.store.engine import make_engine

    return make_engine(system.database_url, create=create, timeout=system.database_timeout)


def settings_of(system: System, address: str) -> Settings:
    """The named owner's settings; NotFound when the database has no such owner."""
    from crtool.store import owners as rows
    from crtool.store.engine import transaction

    key = address.strip().lower()
    with transaction(_engine(system), write=False) as session:
        row = rows.get(session, key)
        if row is None:
            raise NotFound(f"no owner {address} (crtool --config FILE owner add)")
        return owners.owner_settings(system, row.address, row.maildir, row.lmtp_next,
                                     row.overrides)


def init(system: System) -> int:
    """Create the key ring (never touching an existing one) and the database at the newest
    revision; idempotent. Side effects: the keys file (0600), the database."""
    from crtool import tokens
    from crtool.store import schema
    from crtool.store.engine import enable_wal

    if not system.keys.exists():
        system.keys.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tokens.write_keys(system.keys, tokens.new_ring(int(time.time())))
    engine = _engine(system, create=True)
    enable_wal(engine)
    schema.upgrade(engine)
    print(f"crtool system mode is set up from {system.path}.")
    print(f"Database: {system.database_url}\nKeys:     {system.keys}")
    print("Add owners with: crtool --config FILE owner add ADDR --maildir DIR")
    return EXIT_OK


def owner_command(system: System, args: argparse.Namespace) -> int:
    from crtool import addresses
    from crtool.onward import split_target
    from crtool.store import owners as rows
    from crtool.store.engine import transaction

    engine = _engine(system)
    if args.verb == "list":
        with transaction(engine, write=False) as session:
            found = rows.all_served(session)
        items = [{"address": row.address, "maildir": row.maildir, "lmtp_next": row.lmtp_next,
                  "overrides": json.loads(row.overrides) if row.overrides else {}}
                 for row in found]
        if args.json:
            json.dump(items, sys.stdout, indent=2, ensure_ascii=False)
            sys.stdout.write("\n")
        elif not items:
            print("no owners")
        for item in items if not args.json else []:
            target = f"maildir {item['maildir']}" if item["maildir"] else \
                f"lmtp {item['lmtp_next']}"
            extra = "".join(f" {k}={v}" for k, v in sorted(item["overrides"].items()))
            print(f"{item['address']}  {target}{extra}")
        return EXIT_OK
    address = args.address.strip().lower()
    try:
        pattern = addresses.parse_pattern(address)
    except UsageError:
        raise UsageError(f"not an address: {args.address!r}") from None
    if pattern.kind != addresses.EXACT:
        raise UsageError(f"not an address: {args.address!r}")
    if args.verb == "remove":
        with transaction(engine) as session:
            if not rows.unserve(session, address):
                raise NotFound(f"no owner {address} is served")
        print(f"removed: {address} (its lists and held mail are kept)")
        return EXIT_OK
    # add: exactly one target.
    if bool(args.maildir) == bool(args.lmtp_next):
        raise UsageError("owner add needs exactly one of --maildir DIR or --lmtp-next TARGET")
    maildir = str(Path(args.maildir).expanduser().absolute()) if args.maildir else None
    if args.lmtp_next:
        try:
            split_target(args.lmtp_next)
        except ValueError as error:
            raise UsageError(f"--lmtp-next: {error}") from None
    overrides = owners.parse_overrides(args.set or [], system, address)
    with transaction(engine) as session:
        new = rows.put(session, address, maildir, args.lmtp_next or None,
                       json.dumps(overrides, sort_keys=True) if overrides else "",
                       int(time.time()))
    print(f"{'added' if new else 'updated'}: {address}")
    return EXIT_OK
