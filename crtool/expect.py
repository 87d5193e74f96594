"""Expected mail (`crtool expect DOMAIN --for 2h`): a window for sign-ups and password resets.

While a window is open, mail from the domain or any of its subdomains is accepted, automated
mail included (a password reset comes from `noreply@`, with `Auto-Submitted`, often through a
bulk sender's envelope): the envelope sender's domain counts, and so does the From: domain
unless the owner's MTA says DMARC failed for it. The window closes by itself; nothing is
whitelisted for good.

The look-up is one indexed query on (owner, domain, expires_at) over the message's domain and
its parent domains, made only for a message no list entry decided.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from crtool import addresses, policy
from crtool.errors import UsageError
from crtool.store.models import Expectation

DEFAULT_WINDOW = 2 * 3600
MAX_WINDOW = 30 * 86400
_DOMAIN = re.compile(r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def parse_domain(text: str) -> str:
    """The domain the owner typed (`example.com`, `@example.com`, `*@example.com`)."""
    domain = text.strip().lower().lstrip("*").lstrip("@").rstrip(".")
    if not domain or len(domain) > 253 or not _DOMAIN.fullmatch(domain):
        raise UsageError(f"not a domain: {text!r} (use e.g. example.com)")
    return domain


def open_window(session: Session, owner: str, domain: str, now: int, seconds: int) -> int:
    """Open (or extend) the window for `domain`; returns when it ends. Side effect: one row,
    and the windows of this owner that ended are deleted."""
    if not 0 < seconds <= MAX_WINDOW:
        raise UsageError("--for must be more than 0s and at most 30d")
    session.execute(delete(Expectation).where(Expectation.owner == owner,
                                              Expectation.expires_at <= now))
    until = now + seconds
    session.add(Expectation(owner=owner, domain=domain, created_at=now, expires_at=until))
    return until


def close_window(session: Session, owner: str, domain: str) -> int:
    result = session.execute(delete(Expectation).where(Expectation.owner == owner,
                                                       Expectation.domain == domain))
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True)
class Window:
    domain: str
    created_at: int
    expires_at: int


def windows(session: Session, owner: str, now: int) -> list[Window]:
    """The open windows, the one that ends first first."""
    rows = session.execute(
        select(Expectation.domain, Expectation.created_at, Expectation.expires_at)
        .where(Expectation.owner == owner, Expectation.expires_at > now)
        .order_by(Expectation.expires_at)).all()
    return [Window(*row) for row in rows]


def _domains(message: policy.Incoming, separators: str) -> list[str]:
    found = []
    if message.sender:
        found.append(addresses.split_address(addresses.normalize_address(message.sender))[1])
        found.append(addresses.split_address(addresses.unmangle(message.sender, separators))[1])
    from_address = message.facts.from_address
    if from_address and not policy.dmarc_failed(message):
        found.append(addresses.split_address(from_address)[1])
    names: list[str] = []
    for domain in found:
        labels = domain.rstrip(".").split(".")
        names += [".".join(labels[i:]) for i in range(len(labels)) if labels[i:] != [""]]
    return list(dict.fromkeys(n for n in names if n))


def expected(session: Session, owner: str, message: policy.Incoming, now: int,
             separators: str = "+") -> bool:
    """Whether an open window covers this message's envelope or (trusted) From: domain."""
    domains = _domains(message, separators)
    if not domains:
        return False
    return session.scalar(
        select(Expectation.id).where(Expectation.owner == owner,
                                     Expectation.domain.in_(domains),
                                     Expectation.expires_at > now).limit(1)) is not None
