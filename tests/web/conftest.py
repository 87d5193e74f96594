"""Fixtures for the web pages: alice's mailbox with `web_url` set, a stranger's message held and
challenged through the real `crtool deliver`, and the Flask application over that mailbox."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from email.message import EmailMessage

import pytest
from flask import Flask
from flask.testing import FlaskClient

from crtool import service
from crtool.config import load_settings
from crtool.web import create_app
from tests.support import Mailbox, message

WEB_URL = "https://mail.example.test/crtool"
STRANGER = "bob@remote.test"


def set_config(box: Mailbox, **values: object) -> None:
    """Replace settings in config.toml (init writes every one of them)."""
    path = box.home / "config.toml"
    text = path.read_text()
    for key, value in values.items():
        shown = f'"{value}"' if isinstance(value, str) else str(value)
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {shown}", text, flags=re.M)
        assert n == 1, key
    path.write_text(text)


class Clock:
    """A clock the test moves; starts at the real time, since `deliver` ran at it."""

    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Web:
    box: Mailbox
    app: Flask
    clock: Clock

    def client(self) -> FlaskClient:
        return self.app.test_client()

    def hold(self, sender: str = STRANGER, subject: str = "Lunch on Friday?") -> str:
        """A stranger's message through `crtool deliver`: held, challenged; the link's path."""
        result = self.box.deliver(message(sender, subject), sender)
        assert result.returncode == 99, result.stderr
        [(_, challenge)] = self.box.outbox.drain(1)
        return link_path(challenge)


def held(box: Mailbox) -> dict[str, dict[str, str]]:
    """What `pending list --json` would print, by id, read in-process from the same store."""
    from crtool.store import pending
    from crtool.store.engine import make_engine, transaction

    engine = make_engine(box.database_url)
    try:
        with transaction(engine, write=False) as session:
            rows = pending.page(session, box.address, (pending.HELD,), 1000).rows
            return {r.id: {"id": r.id, "sender": r.sender, "subject": r.subject}
                    for r in rows}
    finally:
        engine.dispose()


def listed(box: Mailbox, name: str, address: str) -> bool:
    """What `crtool whitelist|blacklist check ADDRESS` answers, read in-process."""
    from crtool.addresses import lookup_keys
    from crtool.store import lists
    from crtool.store.engine import make_engine, transaction

    engine = make_engine(box.database_url)
    try:
        with transaction(engine, write=False) as session:
            found = lists.matches(session, box.address, lookup_keys(address))
    finally:
        engine.dispose()
    return any(list_name == {"whitelist": "white", "blacklist": "black"}[name]
               for list_name, _ in found)


def link_path(challenge: EmailMessage) -> str:
    """The path of the Confirm page's link in a challenge, below web_url."""
    body = challenge.get_content()
    found = re.findall(re.escape(WEB_URL) + r"(/c/[a-z2-7]+)\b", body)
    assert len(found) == 1, body
    return str(found[0])


@pytest.fixture
def web_box(mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> Mailbox:
    set_config(mailbox, web_url=WEB_URL)
    # The web process sends (fresh challenges) through the same capture sendmail.
    monkeypatch.setenv("CRTOOL_TEST_OUTBOX", str(mailbox.outbox.path))
    return mailbox


@pytest.fixture
def make_web(web_box: Mailbox) -> Iterator[Callable[..., Web]]:
    """The application over alice's mailbox, with a clock the test can move."""
    made: list[service.Mailbox] = []

    def make(**settings: object) -> Web:
        if settings:
            set_config(web_box, **settings)
        clock = Clock()
        box = replace(service.open_mailbox(load_settings(web_box.home)), clock=clock)
        made.append(box)
        app = create_app(box)
        app.testing = True
        return Web(web_box, app, clock)

    yield make
    for box in made:
        box.engine.dispose()


@pytest.fixture
def web(make_web: Callable[..., Web]) -> Web:
    return make_web()
