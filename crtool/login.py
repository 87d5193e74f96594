"""One-time login links for the owner's web pages.

`crtool web login-link` makes one: a row in `logins` with a random id and its issue time, and a
token of purpose `login` over (owner, id, issue time) in the same lowercase base32 form as a
confirm token. The web page verifies it against that row and marks the row used in the same
transaction, so a link logs in once, within LOGIN_TTL, on whichever host serves the web page.
"""

from __future__ import annotations

from sqlalchemy import delete, select

from crtool import tokens
from crtool.errors import BadToken
from crtool.service import Mailbox
from crtool.store.engine import transaction
from crtool.store.models import Login

LOGIN_TTL = 15 * 60
PURPOSE = "login"


def issue(box: Mailbox) -> str:
    """A fresh login token for the owner. Side effect: its row (and old rows are cleared)."""
    keys = box.keys()
    now = box.now()
    with transaction(box.engine) as session:
        # Rows of links that can no longer be used only grow the table.
        session.execute(delete(Login).where(Login.created_at < now - 2 * LOGIN_TTL))
        while True:
            token_id = tokens.new_token_id()
            if session.get(Login, token_id) is None:
                break
        session.add(Login(id=token_id, owner=box.owner, created_at=now))
    return tokens.issue(keys, PURPOSE, box.owner, token_id, "", now)


def use(box: Mailbox, token: str) -> None:
    """Spend a login token; BadToken("malformed" | "unknown" | "forged" | "expired" | "used")
    when it does not log anyone in. Side effect: the row is marked used."""
    token_id, _ = tokens.parse(token)
    keys = box.keys()
    with transaction(box.engine) as session:
        now = box.now()
        row = session.scalar(
            select(Login).where(Login.id == token_id, Login.owner == box.owner)
            .with_for_update())
        if row is None:
            raise BadToken("unknown")
        tokens.verify(keys, PURPOSE, box.owner, token, "", row.created_at, now, LOGIN_TTL,
                      skew=0)
        if row.used_at is not None:
            raise BadToken("used")
        row.used_at = now
