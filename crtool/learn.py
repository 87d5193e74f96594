"""`crtool learn`: the lists from the owner's existing mail and address books.

From each message of a Maildir or an mbox it takes, by default, the From: address; with
`--sent` the recipients (To, Cc, Bcc) of the owner's sent mail; with `--lists` the List-Id of
each list the owner keeps mail from. A vCard file gives its EMAIL addresses, a TMDA list file
its patterns (translated; `foe@x bounce` goes to the blacklist).

Idempotent: an entry already listed is left as it is, and an address whose sender the
blacklist matches is never whitelisted. Streaming: sources are read message by message (see
sources.py) and entries written in batches of BATCH, each its own short transaction, so a
1 GB mbox is learnt in flat memory without holding the write lock for long. Every entry it
adds has source "learned". `--dry-run` counts what would be added and writes nothing.

Bad input is counted, not fatal: a message without a From:, an automated message (list
headers, Auto-Submitted, no-reply: their From: is no correspondent), a vCard without an
address, a TMDA line with no crtool equivalent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.utils import getaddresses
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from crtool import addresses, entries, policy, sources
from crtool.config import Settings
from crtool.errors import UsageError
from crtool.message import Facts, parse_head
from crtool.store.engine import transaction
from crtool.store.models import AddressEntry

BATCH = 1000
SOURCE = "learned"
RECIPIENT_HEADERS = ("to", "cc", "bcc")


@dataclass
class Counts:
    sources: int = 0
    messages: int = 0
    cards: int = 0
    lines: int = 0
    found: int = 0  # entries harvested (repeats included)
    new: Counter[str] = field(default_factory=Counter)  # by list
    known: Counter[str] = field(default_factory=Counter)
    blacklisted: int = 0  # whitelist entries not added: the blacklist matches them
    skipped: Counter[str] = field(default_factory=Counter)  # by reason

    @property
    def read(self) -> int:
        """Sources read, in full or in part: 0 means nothing could be read at all."""
        return self.sources


@dataclass(frozen=True)
class Options:
    sent: bool = False
    lists: bool = False
    dry_run: bool = False


def _own(settings: Settings, address: str) -> bool:
    owner_local, owner_domain = addresses.split_address(settings.owner)
    local, domain = addresses.split_address(address)
    return domain == owner_domain and (
        local == owner_local or local.startswith(owner_local + settings.delimiter))


def _exact(settings: Settings, address: str) -> addresses.Pattern | None:
    pattern = addresses.exact_pattern(address)
    if pattern is None or _own(settings, pattern.key) \
            or pattern.key.startswith(addresses.RESERVED_PREFIXES):
        return None
    return pattern


def harvest(settings: Settings, facts: Facts, options: Options) -> Iterator[
        addresses.Pattern | str]:
    """The whitelist entries one message gives, or the reasons it gives none."""
    if not facts.has_header_block:
        yield "no header block"
        return
    given = False
    if options.lists:
        list_id = entries.list_id_of(facts.get("list-id") or "")
        if list_id:
            given = True
            yield addresses.Pattern(addresses.LIST, addresses.LIST_PREFIX + list_id)
    if options.sent:
        for value in (v for name in RECIPIENT_HEADERS for v in facts.all(name)):
            try:
                found = getaddresses([value])
            except Exception:  # noqa: BLE001, S112 - a hostile header is a fact, not an error
                continue
            for _, address in found:
                pattern = _exact(settings, address) if "@" in address else None
                if pattern is not None:
                    given = True
                    yield pattern
    if not options.sent and not options.lists:
        sender = facts.from_address
        pattern = _exact(settings, sender) if sender else None
        if pattern is None:
            yield "no From: address to learn" if not sender else "From: is the owner's own"
            return
        automated = policy.suppression_reason(policy.Incoming(
            sender=sender, sender_valid=True, recipient=settings.address, facts=facts,
            owner=settings.owner_address))
        if automated is not None:
            yield f"automated ({automated}): From: not learned"
            return
        given = True
        yield pattern
    if not given:
        yield "no List-Id" if options.lists and not options.sent else "nothing to learn"


def _entries(settings: Settings, paths: Iterable[Path], options: Options, counts: Counts,
             say: Callable[[str], None]) -> Iterator[tuple[str, addresses.Pattern]]:
    for path in paths:
        got = False
        try:
            for item in sources.items(path):
                if not got:
                    got = True
                    counts.sources += 1
                if isinstance(item, sources.Skip):
                    counts.skipped[item.reason] += 1
                    say(f"skipped: {item.where}: {item.reason}")
                elif isinstance(item, sources.Mail):
                    counts.messages += 1
                    for found in harvest(settings, parse_head(item.head), options):
                        if isinstance(found, str):
                            counts.skipped[found] += 1
                            say(f"skipped: {item.where}: {found}")
                        else:
                            yield policy.WHITE, found
                elif isinstance(item, sources.Card):
                    counts.cards += 1
                    patterns = [p for p in map(lambda a: _exact(settings, a), item.addresses)
                                if p is not None]
                    if not patterns:
                        counts.skipped["vcard without a usable address"] += 1
                        say(f"skipped: {item.where}: vcard without a usable address")
                    for pattern in patterns:
                        yield policy.WHITE, pattern
                else:
                    counts.lines += 1
                    yield item.list_name, item.pattern
            if not got:
                counts.sources += 1  # read, and empty
        except (UsageError, OSError) as error:
            reason = str(error) if isinstance(error, UsageError) else \
                f"{path}: cannot be read: {error.strerror}"
            counts.skipped["source not readable"] += 1
            say(f"skipped: {reason}")


def learn(settings: Settings, engine: Engine, paths: Iterable[Path], options: Options,
          say: Callable[[str], None] = lambda _line: None, now: int = 0) -> Counts:
    """Read every source and add what it gives to the lists (nothing with dry_run).
    `say` receives one line per skipped item (--verbose)."""
    counts = Counts()
    batch: dict[tuple[str, str], addresses.Pattern] = {}
    planned: set[tuple[str, str]] = set()  # dry run: what an earlier batch would have added

    def flush() -> None:
        if not batch:
            return
        with transaction(engine, write=not options.dry_run) as session:
            _write(session, settings, batch, options, counts, planned, now)
        batch.clear()

    for list_name, pattern in _entries(settings, paths, options, counts, say):
        counts.found += 1
        batch[(list_name, pattern.key)] = pattern
        if len(batch) >= BATCH:
            flush()
    flush()
    return counts


def _write(session: Session, settings: Settings, batch: dict[tuple[str, str], addresses.Pattern],
           options: Options, counts: Counts, planned: set[tuple[str, str]], now: int) -> None:
    owner = settings.owner
    keys = {key for _, key in batch}
    # What each address's blacklist look-up would match: its own key, its domains.
    black_keys = set(keys)
    for key in keys:
        if "@" in key and not key.startswith("@"):
            black_keys.update(addresses.lookup_keys(key, settings.subaddress_separators))
    present: set[tuple[str, str]] = set()
    for chunk in _chunks(sorted(black_keys), 500):
        present.update(session.execute(
            select(AddressEntry.list_name, AddressEntry.key)
            .where(AddressEntry.owner == owner, AddressEntry.key.in_(chunk))).tuples().all())
    black = {key for name, key in present if name == policy.BLACK}
    fresh: dict[str, list[addresses.Pattern]] = {}
    for (list_name, key), pattern in batch.items():
        if (list_name, key) in present or (list_name, key) in planned:
            counts.known[list_name] += 1
            continue
        if list_name == policy.WHITE and (key in black or any(
                k in black for k in addresses.lookup_keys(key, settings.subaddress_separators))):
            counts.blacklisted += 1
            continue
        fresh.setdefault(list_name, []).append(pattern)
    for list_name, patterns in fresh.items():
        counts.new[list_name] += len(patterns)
        if options.dry_run:
            planned.update((list_name, p.key) for p in patterns)
        else:
            _insert(session, owner, list_name, patterns, now)


def _insert(session: Session, owner: str, list_name: str, patterns: list[addresses.Pattern],
            now: int) -> None:
    """Add entries known to be new; one that a concurrent command added meanwhile is kept."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    rows = [dict(owner=owner, list_name=list_name, key=p.key, kind=p.kind, note="",
                 created_at=now, source=SOURCE, probe=entries.probe_of(p.key))
            for p in patterns]
    session.execute(insert(AddressEntry).on_conflict_do_nothing(
        index_elements=["owner", "key", "list_name"]), rows)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def summary(counts: Counts, dry_run: bool) -> list[str]:
    """The counts as the owner reads them."""
    would = "would be " if dry_run else ""
    lines = [f"read: {counts.sources} sources, {counts.messages} messages, {counts.cards} "
             f"vcards, {counts.lines} list lines; {counts.found} entries found",
             f"whitelist: {counts.new[policy.WHITE]} {would}added, "
             f"{counts.known[policy.WHITE]} already listed, {counts.blacklisted} not added "
             "(blacklisted)"]
    if counts.new[policy.BLACK] or counts.known[policy.BLACK]:
        lines.append(f"blacklist: {counts.new[policy.BLACK]} {would}added, "
                     f"{counts.known[policy.BLACK]} already listed")
    lines.append(f"skipped: {sum(counts.skipped.values())}")
    for reason, number in counts.skipped.most_common():
        lines.append(f"  {number:7d}  {reason}")
    return lines
