"""The list look-up as text for the two drivers: what SQLAlchemy compiles from
`store.lists.entry_statement` for SQLite and for psycopg, kept as constants.

Three callers run it through the driver alone: the fast read paths (fastpath.py on sqlite3,
pgread.py on psycopg), which must not import SQLAlchemy at all, and the full path's
`lists.entry_matches`, which every delivery of a resident server runs and where building,
caching and compiling the statement anew cost more than the query. The schema keeps one source
of truth: tests/unit/test_fastpath.py and test_pgread.py prove each text is still what
SQLAlchemy compiles, and that it answers as the compiled statement does. Standard library only.
"""

from __future__ import annotations

# str(lists.match_statement(owner, keys).compile(dialect=sqlite)), with the expanding IN
# parameter as SQLAlchemy leaves it before the number of keys is known.
SQLITE_MATCH = (
    'SELECT address_entries.list_name, address_entries."key" \n'
    "FROM address_entries \n"
    'WHERE address_entries.owner = ? AND address_entries."key" IN (__[POSTCOMPILE_key_1])'
)
# str(lists.entry_statement(owner, keys, probes).compile(dialect=sqlite)): every kind of entry,
# wildcards found by their probe (crtool/entries.py).
SQLITE_ENTRY = (
    SQLITE_MATCH + " UNION ALL "
    'SELECT address_entries.list_name, address_entries."key" \n'
    "FROM address_entries \n"
    "WHERE address_entries.owner = ? AND address_entries.probe IN (__[POSTCOMPILE_probe_1])"
)
# str(lists.entry_statement(owner, keys, probes).compile(dialect=postgresql.psycopg.dialect())),
# with the expanding IN parameters as SQLAlchemy leaves them before their counts are known:
# the look-up keys by equality UNION ALL the wildcard probes by equality (entries.py).
PSYCOPG_ENTRY = (
    "SELECT address_entries.list_name, address_entries.key \n"
    "FROM address_entries \n"
    "WHERE address_entries.owner = %(owner_1)s::VARCHAR "
    "AND address_entries.key IN (__[POSTCOMPILE_key_1]) UNION ALL "
    "SELECT address_entries.list_name, address_entries.key \n"
    "FROM address_entries \n"
    "WHERE address_entries.owner = %(owner_2)s::VARCHAR "
    "AND address_entries.probe IN (__[POSTCOMPILE_probe_1])"
)
_KEYS = "__[POSTCOMPILE_key_1]"
_PROBES = "__[POSTCOMPILE_probe_1]"


def sqlite_entry(keys: int, probes: int) -> str:
    """SQLITE_ENTRY for `keys` keys and `probes` probes, as SQLAlchemy renders it."""
    return (SQLITE_ENTRY.replace(_KEYS, ", ".join(["?"] * keys))
            .replace(_PROBES, ", ".join(["?"] * probes)))


def sqlite_params(owner: str, keys: list[str], probes: list[str]) -> tuple[str, ...]:
    """The parameters of sqlite_entry(len(keys), len(probes)), in order."""
    return (owner, *keys, owner, *probes)


def psycopg_entry(keys: int, probes: int) -> str:
    """PSYCOPG_ENTRY for `keys` keys and `probes` probes, as SQLAlchemy renders it
    (render_postcompile)."""
    return (PSYCOPG_ENTRY
            .replace(_KEYS, ", ".join(f"%(key_1_{n})s::VARCHAR" for n in range(1, keys + 1)))
            .replace(_PROBES, ", ".join(
                f"%(probe_1_{n})s::VARCHAR" for n in range(1, probes + 1))))


def psycopg_params(owner: str, keys: list[str], probes: list[str]) -> dict[str, str]:
    """The parameters of psycopg_entry(len(keys), len(probes)), named as SQLAlchemy names
    them."""
    params = {"owner_1": owner, "owner_2": owner}
    params.update((f"key_1_{n}", key) for n, key in enumerate(keys, 1))
    params.update((f"probe_1_{n}", probe) for n, probe in enumerate(probes, 1))
    return params
