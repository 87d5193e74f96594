"""Fixtures: a protected mailbox per test, on SQLite and, when CRTOOL_TEST_DATABASE_URL is set,
on PostgreSQL too (each test in its own schema), and the CI rule that a skip is a failure."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Mailbox, stop_autostarted

PG_URL = os.environ.get("CRTOOL_TEST_DATABASE_URL", "")
REQUIRE_E2E = os.environ.get("CRTOOL_REQUIRE_E2E") == "1"
BACKENDS = ["sqlite", "postgresql"] if PG_URL else ["sqlite"]


def pytest_configure(config: pytest.Config) -> None:
    if REQUIRE_E2E and not PG_URL:
        raise pytest.UsageError(
            "CRTOOL_REQUIRE_E2E=1 needs CRTOOL_TEST_DATABASE_URL: the PostgreSQL leg must run")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CRTOOL_REQUIRE_E2E=1 (CI) a skipped test is a failed one: the real MTA and the
    real PostgreSQL server must have run."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_E2E and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CRTOOL_REQUIRE_E2E=1: {reason}"


@pytest.fixture(autouse=True)
def _no_server_left_behind(tmp_path: Path) -> Iterator[None]:
    """A `crtool serve` a delivery started for a home of this test does not outlive it (test
    homes set serve_idle = 0; this catches one that did not)."""
    yield
    stop_autostarted(tmp_path)


def _pg_schema_url(schema: str) -> str:
    from sqlalchemy import make_url

    url = make_url(PG_URL)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file in tmp_path, or a PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'alice' / '.crtool' / 'crtool.db'}"
        return
    from sqlalchemy import create_engine, text

    schema = "t_" + secrets.token_hex(6)
    admin = create_engine(PG_URL)
    try:
        with admin.begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"PostgreSQL at CRTOOL_TEST_DATABASE_URL is unreachable: {error}")
    try:
        yield _pg_schema_url(schema)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def mailbox(tmp_path: Path, database_url: str) -> Mailbox:
    """alice@example.test, set up with `crtool init`; challenges go to the capture outbox."""
    user_home = tmp_path / "alice"
    user_home.mkdir(mode=0o755)
    box = Mailbox(user_home=user_home, database_url=database_url)
    box.init()
    return box
