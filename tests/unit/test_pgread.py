"""The fast read path on PostgreSQL (pgread.py): its SQL is what SQLAlchemy compiles for psycopg
from the one schema, and its answers are the full path's, on a real PostgreSQL server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.dialects import postgresql

from crtool import addresses, entries, fastpath, lookup_sql, pgread, policy
from crtool.config import Settings
from crtool.envelope import Envelope
from crtool.message import parse_head
from crtool.store import lists, schema
from crtool.store.engine import make_engine, transaction
from tests.support import Mailbox

OWNER = "alice@example.test"
SENDERS = ("bob@example.org", "spam@Example.org", "friend@junk.test", "x@junk.test",
           "nobody@else.test", "not an address", "friend+x@junk.test",
           "prvs=1234abcdef=spam@example.org", "SRS0=hh=tt=junk.test=friend@fwd.test",
           "O'Brien@example.org", "%(owner_1)s@example.org", "bob-news@example.org",
           "bob-news+x@example.org", "carl@lists.test")


@pytest.mark.parametrize(("keys", "probes"), [(k, p) for k in range(1, 13) for p in (1, 2, 3)])
def test_entry_sql_is_what_sqlalchemy_compiles_for_psycopg(keys: int, probes: int) -> None:
    key_list = [f"k{i}" for i in range(keys)]
    probe_list = [f"@p{i}.test" for i in range(probes)]
    statement = lists.entry_statement(OWNER, key_list, probe_list)
    dialect = postgresql.psycopg.dialect()  # type: ignore[attr-defined]
    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    assert str(compiled) == lookup_sql.psycopg_entry(keys, probes)
    assert compiled.params == lookup_sql.psycopg_params(OWNER, key_list, probe_list)
    assert str(statement.compile(dialect=dialect)) == lookup_sql.PSYCOPG_ENTRY
    assert dialect.paramstyle == "pyformat"


@pytest.mark.parametrize("url", [
    "sqlite:////x/crtool.db", "postgresql://u@h/db", "postgresql+psycopg2://u@h/db",
    "mysql://u@h/db",
])
def test_other_urls_go_to_the_full_path(url: str) -> None:
    assert pgread.conninfo(url) is None
    assert pgread.lookup(url, OWNER, ["a@b.test"]) is None


def test_the_uri_keeps_everything_but_the_scheme() -> None:
    assert pgread.conninfo("postgresql+psycopg://u:p%40ss@h:5433/db?options=-csearch_path%3Ds"
                           ) == "postgresql://u:p%40ss@h:5433/db?options=-csearch_path%3Ds"


# Only the PostgreSQL leg of conftest's database_url (a fresh schema), where there is one.
only_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
needs_postgresql = pytest.mark.skipif(not os.environ.get("CRTOOL_TEST_DATABASE_URL"),
                                      reason="CRTOOL_TEST_DATABASE_URL is not set")


@pytest.fixture
def pg_settings(database_url: str, tmp_path: Path) -> Settings:
    engine = make_engine(database_url)
    schema.upgrade(engine)
    with transaction(engine) as session:
        for list_name, text in ((policy.WHITE, "@example.org"), (policy.WHITE, "friend@junk.test"),
                                (policy.BLACK, "spam@example.org"), (policy.BLACK, "@junk.test"),
                                (policy.WHITE, "o'brien@example.org")):
            lists.add(session, OWNER, list_name, addresses.parse_pattern(text), "", 0)
        # A wildcard entry is found by its probe, not its key: the fast path must see it too.
        for list_name, text in ((policy.BLACK, "bob-*@example.org"),
                                (policy.WHITE, "c*l@lists.test")):
            lists.add(session, OWNER, list_name, entries.parse_entry(text), "", 0)
        # Another owner's entries in the same tables are never this owner's.
        lists.add(session, "carol@example.test", policy.WHITE,
                  addresses.parse_pattern("nobody@else.test"), "", 0)
    engine.dispose()
    return Settings(home=tmp_path, address=OWNER, maildir=tmp_path / "Maildir",
                    database_url=database_url)


@needs_postgresql
@only_postgresql
def test_the_full_paths_driver_text_answers_as_the_compiled_statement(
        pg_settings: Settings) -> None:
    # lists.entry_matches hands psycopg lookup_sql.psycopg_entry; SQLAlchemy's own statement,
    # compiled and run the ordinary way, must find the very same rows.
    engine = make_engine(pg_settings.database_url)
    found = 0
    try:
        with transaction(engine, write=False) as session:
            for sender in SENDERS:
                query = entries.query(sender, None)
                rows = sorted(lists.entry_matches(session, OWNER, query.keys, query.probes))
                statement = lists.entry_statement(OWNER, query.keys, query.probes or [""])
                assert rows == sorted(tuple(row) for row in session.execute(statement)), sender
                found += len(rows)
    finally:
        engine.dispose()
    assert found > 3  # the comparison saw entries, not only empty answers


@needs_postgresql
@only_postgresql
def test_its_answers_are_the_full_paths(pg_settings: Settings) -> None:
    engine = make_engine(pg_settings.database_url)
    try:
        for sender in SENDERS:
            query = entries.query(sender, None)
            with transaction(engine, write=False) as session:
                full = sorted(lists.entry_matches(session, OWNER, query.keys, query.probes))
            fast = pgread.lookup(pg_settings.database_url, OWNER, query.keys, probes=query.probes)
            assert fast is not None and sorted(fast) == full, sender
    finally:
        engine.dispose()
    assert pgread.lookup(pg_settings.database_url, OWNER, []) == []


@needs_postgresql
@only_postgresql
def test_the_fast_path_decides_only_whitelisted_on_postgresql(pg_settings: Settings) -> None:
    facts = parse_head(b"From: x@example.org\nSubject: hi\n\nbody\n")

    def key(sender: str, recipient: str = OWNER) -> str | None:
        return fastpath.whitelisted(pg_settings, Envelope(sender, recipient), facts)

    assert key("Bob@Example.ORG") == "@example.org"
    assert key("friend+news@junk.test") == "friend@junk.test"
    assert key("spam@example.org") is None
    assert key("x@junk.test") is None
    assert key("nobody@else.test") is None
    assert key("") is None
    assert key("bob@example.org", "alice-confirm-abcd@example.test") is None
    # The domain is whitelisted, but a blacklisted wildcard is more specific.
    assert key("bob-news@example.org") is None
    assert key("carl@lists.test") == "glob:c*l@lists.test"


def test_an_unreachable_server_leaves_the_decision_to_the_full_path(tmp_path: Path) -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    assert pgread.lookup(url, OWNER, ["a@b.test"], timeout=2) is None
    settings = Settings(home=tmp_path, address=OWNER, maildir=tmp_path / "Maildir",
                        database_url=url, database_timeout=2)
    facts = parse_head(b"From: a@b.test\n\n")
    assert fastpath.whitelisted(settings, Envelope("a@b.test", OWNER), facts) is None


def test_it_imports_psycopg_and_not_sqlalchemy() -> None:
    code = ("import sys, crtool.pgread; crtool.pgread.lookup('postgresql+psycopg://x@127.0.0.1:1/x',"
            " 'o', ['k'], 1); print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'sqlalchemy', 'jinja2', 'itsdangerous', 'alembic', 'psycopg'}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                         text=True, env=env)
    assert out.stdout.strip() == "['psycopg']"


@needs_postgresql
@only_postgresql
def test_a_whitelisted_delivery_on_postgresql_never_imports_sqlalchemy(
        mailbox: Mailbox) -> None:
    from tests.integration.test_serve import HEAVY, STRANGER, _imports

    assert mailbox.database_url.startswith("postgresql")
    mailbox.ok("whitelist", "add", "friend@example.org")
    imported = _imports(mailbox, "friend@example.org")
    assert HEAVY.findall(imported) == []
    assert re.search(r"\| +psycopg$", imported, re.MULTILINE)
    # An unknown sender still goes the full way (SQLAlchemy) and is held.
    assert "sqlalchemy" in HEAVY.findall(_imports(mailbox, STRANGER))
    mailbox.outbox.drain(1)
