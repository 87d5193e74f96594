"""What both delivery paths share once a message is in: the facts policy decides on, and how
an accepted message goes on.

The fast path (fastpath.py, stdlib `sqlite3`) and the full path (`service.deliver`) each decide
"whitelisted"; whichever did, the message is built into `policy.Incoming` and carried out here,
so accepted mail goes the same way. A release (service) writes the same trace lines. Nothing
here imports SQLAlchemy: the fast path pays for every import.
"""

from __future__ import annotations

from crtool import policy
from crtool.config import Settings
from crtool.envelope import Envelope, RawMessage
from crtool.exits import Outcome
from crtool.message import Facts, clean_text


def incoming(settings: Settings, envelope: Envelope, facts: Facts) -> policy.Incoming:
    """What policy needs to know of one message; built alike by both paths."""
    return policy.Incoming(
        sender=envelope.sender,
        sender_valid=envelope.sender_valid,
        recipient=envelope.recipient,
        facts=facts,
        owner=settings.owner_address,
        authserv_id=settings.authserv_id,
    )


def trace_prefix(row_mta: str, sender: str, recipient: str) -> bytes:
    """Return-Path and Delivered-To as qmail's own delivery writes them. A message taken from
    Postfix already carries them (contract §3), so it gets none; one taken over LMTP does not,
    so it gets them as any delivery agent writes them."""
    if row_mta not in ("qmail", "lmtp"):
        return b""
    lines = (f"Return-Path: <{clean_text(sender, 320)}>\n"
             f"Delivered-To: {clean_text(recipient, 320)}\n")
    return lines.encode("utf-8", "replace")


def accept(settings: Settings, envelope: Envelope, raw: RawMessage,
           key: str) -> tuple[Outcome, str]:
    """Carry out "whitelisted": let the MTA's next line deliver, or write the Maildir.

    Side effect with `delivery = "maildir"`: one new file in the Maildir (or one LMTP
    transaction downstream, see onward.py). Both the fast path and `service` call this, so
    accepted mail goes the same way whichever decided.
    """
    if settings.delivery == "continue":
        return Outcome.CONTINUE, f"whitelisted ({key})"
    from crtool import onward

    prefix = trace_prefix(settings.mta, envelope.sender, envelope.recipient)
    where = onward.deliver(settings, envelope.sender, envelope.recipient, raw.chunks(), prefix)
    return Outcome.DELIVERED, f"whitelisted ({key}); {where}"
