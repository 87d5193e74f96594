"""The fast read path (contract §10): the SQL it runs is what SQLAlchemy compiles from the one
schema, it reads the lists exactly as the full path does, and it only ever says "whitelisted"."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.dialects import sqlite

from crtool import acceptance, addresses, entries, fastpath, lookup_sql, policy, tally
from crtool.config import Settings
from crtool.envelope import Envelope
from crtool.message import parse_head
from crtool.store import lists, schema
from crtool.store.engine import enable_wal, make_engine, sqlite_path, transaction

OWNER = "alice@example.test"


def test_match_sql_is_what_sqlalchemy_compiles() -> None:
    # The committed text must follow the model: a renamed column or table fails here. (It is
    # the first half of SQLITE_ENTRY, whose expanded forms the next test checks.)
    statement = lists.match_statement(OWNER, ["k0", "k1"])
    assert str(statement.compile(dialect=sqlite.dialect())) == lookup_sql.SQLITE_MATCH


@pytest.mark.parametrize(("keys", "probes"), [(1, 1), (3, 2), (9, 3), (12, 1)])
def test_entry_sql_is_what_sqlalchemy_compiles(keys: int, probes: int) -> None:
    # The look-up of every kind of entry, wildcards by their probe (crtool/entries.py).
    key_list = [f"k{i}" for i in range(keys)]
    probe_list = [f"@p{i}" for i in range(probes)]
    statement = lists.entry_statement(OWNER, key_list, probe_list)
    compiled = statement.compile(dialect=sqlite.dialect(),
                                 compile_kwargs={"render_postcompile": True})
    assert str(compiled) == lookup_sql.sqlite_entry(keys, probes)
    assert [compiled.params[name] for name in compiled.positiontup or []] == [
        OWNER, *key_list, OWNER, *probe_list]
    assert str(statement.compile(dialect=sqlite.dialect())) == lookup_sql.SQLITE_ENTRY


@pytest.mark.parametrize("url", [
    "sqlite:////var/lib/crtool/crtool.db",
    "sqlite:///relative/crtool.db",
    "sqlite+pysqlite:////abs/crtool.db",
    "sqlite:////home/a b/crtool.db",
])
def test_sqlite_file_agrees_with_sqlalchemy(url: str) -> None:
    assert fastpath.sqlite_file(url) == sqlite_path(url)


@pytest.mark.parametrize("url", [
    "sqlite://", "sqlite:///:memory:", "postgresql://u@h/db",
    "sqlite:////x/crtool.db?timeout=5", "sqlite:////x/100%25.db",
])
def test_urls_it_will_not_interpret_go_to_the_full_path(url: str) -> None:
    assert fastpath.sqlite_file(url) is None


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    path = tmp_path / "crtool.db"
    engine = make_engine(f"sqlite:///{path}", create=True)
    schema.upgrade(engine)
    enable_wal(engine)
    with transaction(engine) as session:
        for list_name, text in ((policy.WHITE, "@example.org"), (policy.WHITE, "friend@junk.test"),
                                (policy.BLACK, "spam@example.org"), (policy.BLACK, "@junk.test")):
            lists.add(session, OWNER, list_name, addresses.parse_pattern(text), "", 0)
        for list_name, text in ((policy.WHITE, "news-*@wild.test"),
                                (policy.BLACK, "news-spam?@wild.test"),
                                (policy.WHITE, "list:announce.lists.test"),
                                (policy.WHITE, "from:carol@friends.test"),
                                (policy.WHITE, "from:*-bot@friends.test")):
            lists.add(session, OWNER, list_name, entries.parse_entry(text), "", 0)
    engine.dispose()
    return Settings(home=tmp_path, address=OWNER, maildir=tmp_path / "Maildir",
                    database_url=f"sqlite:///{path}")


def _key(settings: Settings, sender: str, recipient: str = OWNER) -> str | None:
    facts = parse_head(b"From: x@example.org\nSubject: hi\n\nbody\n")
    return fastpath.whitelisted(settings, Envelope(sender, recipient), facts)


def test_lookup_returns_what_the_full_path_returns(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    for sender in ("bob@example.org", "spam@Example.org", "friend@junk.test", "x@junk.test",
                   "nobody@else.test", "not an address", "friend+x@junk.test",
                   "prvs=1234abcdef=spam@example.org", "SRS0=hh=tt=junk.test=friend@fwd.test"):
        keys = addresses.lookup_keys(sender)
        with transaction(engine, write=False) as session:
            full = sorted(lists.matches(session, OWNER, keys))
        assert sorted(fastpath.lookup(Path(settings.database_url[10:]), OWNER, keys) or []) \
            == full
    engine.dispose()


def test_the_full_paths_driver_text_answers_as_the_compiled_statement(
        settings: Settings) -> None:
    # lists.entry_matches hands the driver lookup_sql.sqlite_entry; SQLAlchemy's own statement,
    # compiled and run the ordinary way, must find the very same rows.
    engine = make_engine(settings.database_url)
    heads = (b"From: x@y.test\n", b"From: Carol <carol@friends.test>\n",
             b"From: ci-bot@friends.test\nList-Id: <announce.lists.test>\n")
    senders = ("bob@example.org", "spam@Example.org", "friend+x@junk.test", "x@junk.test",
               "news-daily@wild.test", "news-spam1@wild.test", "nobody@else.test")
    found = 0
    with transaction(engine, write=False) as session:
        for sender in senders:
            for head in heads:
                query = entries.query(sender, parse_head(head + b"\nbody\n"))
                rows = sorted(lists.entry_matches(session, OWNER, query.keys, query.probes))
                statement = lists.entry_statement(OWNER, query.keys, query.probes or [""])
                assert rows == sorted(tuple(row) for row in session.execute(statement)), \
                    (sender, head)
                found += len(rows)
    engine.dispose()
    assert found > len(senders)  # the comparison saw entries, not only empty answers


@pytest.mark.parametrize(("sender", "head", "expected"), [
    ("news-daily@wild.test", b"From: x@y.test\n", "glob:news-*@wild.test"),
    ("news-spam1@wild.test", b"From: x@y.test\n", None),  # the blacklist wildcard is closer
    ("news@wild.test", b"From: x@y.test\n", None),
    ("bounce@lists.test", b"List-Id: Announce <announce.lists.test>\n",
     "list:announce.lists.test"),
    ("a@fwd.test", b"From: Carol <carol@friends.test>\n", "from:carol@friends.test"),
    ("a@fwd.test", b"From: ci-bot@friends.test\n", "from:glob:*-bot@friends.test"),
    ("a@fwd.test", b"From: ci-bot@other.test\n", None),
])
def test_richer_entries_are_found_alike_by_both_paths(settings: Settings, sender: str,
                                                      head: bytes,
                                                      expected: str | None) -> None:
    facts = parse_head(head + b"Subject: hi\n\nbody\n")
    message = acceptance.incoming(settings, Envelope(sender, OWNER), facts)
    query = entries.query(sender, facts)
    engine = make_engine(settings.database_url)
    with transaction(engine, write=False) as session:
        full = lists.listing_for(session, OWNER, message)
        rows = sorted(lists.entry_matches(session, OWNER, query.keys, query.probes))
    engine.dispose()
    fast = fastpath.lookup(Path(settings.database_url[10:]), OWNER, query.keys, 30.0,
                           query.probes)
    assert sorted(fast or []) == rows
    assert entries.decide(rows, query) == full
    verdict = policy.classify(message, full)
    accepted = full.key if verdict.action is policy.Action.ACCEPT and full else None
    assert fastpath.whitelisted(settings, Envelope(sender, OWNER), facts) == accepted
    assert accepted == expected


def test_only_a_plain_whitelisted_sender_is_decided(settings: Settings) -> None:
    assert _key(settings, "Bob@Example.ORG") == "@example.org"
    assert _key(settings, "friend@junk.test") == "friend@junk.test"
    # Blacklisted, unknown, null sender and confirm replies are left to the full path.
    assert _key(settings, "spam@example.org") is None
    assert _key(settings, "x@junk.test") is None
    assert _key(settings, "stranger@remote.test") is None
    assert _key(settings, "") is None
    assert _key(settings, "bob@example.org", "alice-confirm-abcd@example.test") is None


def test_a_tagged_sender_is_looked_up_as_the_person(settings: Settings) -> None:
    assert _key(settings, "friend+news@junk.test") == "friend@junk.test"
    assert _key(settings, "prvs=1234abcdef=friend@junk.test") == "friend@junk.test"
    # The blacklisted exact address stays blacklisted under any tag.
    assert _key(settings, "spam+x@example.org") is None
    assert _key(settings, "prvs=1234abcdef=spam@example.org") is None


def _forged_key(settings: Settings, results: str, authserv_id: str = "mx.example.test",
                sender: str = "bob@example.org") -> str | None:
    facts = parse_head(
        f"Authentication-Results: mx.example.test; {results}\n"
        f"From: {sender}\nSubject: hi\n\nbody\n".encode())
    settings = replace(settings, authserv_id=authserv_id)
    return fastpath.whitelisted(settings, Envelope(sender, OWNER), facts)


def test_a_whitelisted_address_the_mta_calls_forged_is_never_accepted_here(
        settings: Settings) -> None:
    # The fast path asks the same policy.classify as the full path: it declines, and the full
    # path holds the message (whitelist_forged).
    assert _forged_key(settings, "dmarc=fail header.from=example.org") is None
    assert _forged_key(settings, "spf=fail smtp.mailfrom=bob@example.org") is None
    assert _forged_key(settings, "spf=fail smtp.mailfrom=bob@example.org; "
                                 "dkim=pass header.d=evil.test") is None
    # Forwarded mail: SPF fails, the sender's own signature verifies.
    assert _forged_key(settings, "spf=fail smtp.mailfrom=bob@example.org; "
                                 "dkim=pass header.d=example.org") == "@example.org"
    # An SRS address naming a whitelisted sender: only his own domain's signature counts.
    srs = "SRS0=hh=tt=example.org=bob@fwd.test"
    assert _forged_key(settings, "spf=pass smtp.mailfrom=" + srs, sender=srs) is None
    assert _forged_key(settings, "dkim=pass header.d=example.org", sender=srs) == "@example.org"
    # Without authserv_id no header is trusted, so nothing is judged forged.
    assert _forged_key(settings, "dmarc=fail header.from=example.org",
                       authserv_id="") == "@example.org"


def test_an_unreadable_database_leaves_the_decision_to_the_full_path(
        settings: Settings, tmp_path: Path) -> None:
    missing = Settings(home=tmp_path, address=OWNER, maildir=tmp_path / "Maildir",
                       database_url=f"sqlite:///{tmp_path / 'missing.db'}")
    assert _key(missing, "bob@example.org") is None
    assert not (tmp_path / "missing.db").exists()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    foreign = Settings(home=tmp_path, address=OWNER, maildir=tmp_path / "Maildir",
                       database_url=f"sqlite:///{empty}")
    assert _key(foreign, "bob@example.org") is None


def test_the_tally_counts_each_accepted_message(tmp_path: Path) -> None:
    assert tally.tallied_deliveries(tmp_path) == 0
    for _ in range(3):
        tally.count_delivery(tmp_path)
    assert tally.tallied_deliveries(tmp_path) == 3
    assert (tmp_path / tally.TALLY_NAME).stat().st_mode & 0o777 == 0o600


def test_the_lean_modules_import_nothing_heavy() -> None:
    # What `crtool deliver` imports before it knows it needs SQLAlchemy, Jinja2 or itsdangerous.
    code = ("import sys, crtool.cli, crtool.client, crtool.delivery, crtool.fastpath, "
            "crtool.acceptance, crtool.tally; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('sqlalchemy', 'jinja2', 'itsdangerous', 'alembic')]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    assert out.stdout.strip() == "[]"


def test_every_kind_of_entry_is_found_through_an_index(settings: Settings) -> None:
    # The look-up of every kind, wildcards included, is two index searches, never a scan:
    # what keeps its cost flat from ten entries to a million (bench/fewer.py measures it).
    import sqlite3

    connection = sqlite3.connect(settings.database_url[10:])
    plan = [row[-1] for row in connection.execute(
        "EXPLAIN QUERY PLAN " + lookup_sql.sqlite_entry(3, 2),
        [OWNER, "a@b.test", "@b.test", "list:x", OWNER, "@b.test", "from:@c.test"])]
    connection.close()
    searches = [step for step in plan if step.startswith(("SEARCH", "SCAN"))]
    assert len(searches) == 2, plan
    assert all(step.startswith("SEARCH") and "INDEX" in step for step in searches), plan
    assert any("ix_address_entries_probe" in step for step in searches), plan


def test_the_full_path_does_not_depend_on_the_fast_one() -> None:
    # The optimisation reads through the core, never the other way round.
    code = ("import sys, crtool.service, crtool.commands, crtool.serve, crtool.verdicts; "
            "print('crtool.fastpath' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    assert out.stdout.strip() == "False"
