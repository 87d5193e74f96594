"""`crtool simulate MAILDIR|MBOX`: the owner's existing mail through today's lists and rules.

Each message is decided by the judgement a delivery makes (`service.judge`: the owner's own
digest, tagged addresses and replies, every kind of list entry, `expect` windows, then policy,
with the owner's spam filter's header), in one read-only transaction: nothing is written,
held, sent or delivered. The envelope sender is the message's Return-Path (what the MTA
recorded at delivery), else its From: address; the recipient is the owner. Rate limits are
left out, so "challenged" counts every message enforce would challenge, and the distinct
senders are counted apart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy.orm import Session

from crtool import acceptance, addresses, policy, service, sources, upstream
from crtool.envelope import Envelope
from crtool.message import Facts, parse_head
from crtool.service import Mailbox
from crtool.store.engine import transaction


@dataclass
class Tally:
    messages: int = 0
    delivered: Counter[str] = field(default_factory=Counter)  # by why: whitelisted, expected
    held: Counter[str] = field(default_factory=Counter)  # by reason, without challenge
    challenged: int = 0
    challenged_senders: set[str] = field(default_factory=set)
    dropped: int = 0  # blacklisted
    skipped: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, object]:
        return {"messages": self.messages, "delivered": sum(self.delivered.values()),
                "delivered_by": dict(self.delivered), "held": sum(self.held.values()),
                "held_by_reason": dict(self.held), "challenged": self.challenged,
                "challenged_senders": len(self.challenged_senders), "dropped": self.dropped,
                "skipped": dict(self.skipped)}


def envelope_sender(facts: Facts) -> str:
    """Return-Path's address ("" for `<>`), else From:'s."""
    value = facts.get("return-path")
    if value is not None:
        value = value.strip()
        start, end = value.find("<"), value.rfind(">")
        if 0 <= start < end:
            return value[start + 1:end].strip()
        return value
    return facts.from_address


def decide(box: Mailbox, session: Session, head: bytes) -> policy.Verdict:
    """One message's verdict, by the judgement delivery makes (service.judge), without rate
    limits and recording nothing."""
    facts = parse_head(head)
    envelope = Envelope(sender=envelope_sender(facts), recipient=box.settings.address)
    incoming = acceptance.incoming(box.settings, envelope, facts)
    if box.settings.spam_header:
        incoming = replace(incoming, spam_flagged=upstream.spam_flagged(
            head, box.settings.spam_header))
    return service.judge(box, session, envelope, incoming, record=False)[2]


def simulate(box: Mailbox, path: Path,
             say: Callable[[str], None] = lambda _line: None) -> Tally:
    settings = box.settings
    tally = Tally()
    with transaction(box.engine, write=False) as session:
        for item in sources.messages(path):
            if isinstance(item, sources.Skip):
                tally.skipped[item.reason] += 1
                say(f"skipped: {item.where}: {item.reason}")
                continue
            if not isinstance(item, sources.Mail):
                continue
            tally.messages += 1
            verdict = decide(box, session, item.head)
            if verdict.action is policy.Action.ACCEPT:
                tally.delivered[verdict.reason] += 1
            elif verdict.action is policy.Action.BLACKLISTED:
                tally.dropped += 1
            elif verdict.action is policy.Action.CHALLENGE:
                tally.challenged += 1
                sender = envelope_sender(parse_head(item.head))
                tally.challenged_senders.add(addresses.unmangle(
                    sender, settings.subaddress_separators))
            else:
                tally.held[verdict.reason] += 1
            say(f"{item.where}: {verdict.action.value} ({verdict.reason})")
    return tally


def lines(tally: Tally) -> list[str]:
    out = [f"messages: {tally.messages}",
           f"delivered: {sum(tally.delivered.values())}"
           + "".join(f"  {reason} {n}" for reason, n in tally.delivered.most_common()),
           f"challenged: {tally.challenged} messages from {len(tally.challenged_senders)} "
           "senders",
           f"held without challenge: {sum(tally.held.values())}"]
    out += [f"  {n:7d}  {reason}" for reason, n in tally.held.most_common()]
    out.append(f"dropped (blacklisted): {tally.dropped}")
    if tally.skipped:
        out.append(f"skipped: {sum(tally.skipped.values())}")
        out += [f"  {n:7d}  {reason}" for reason, n in tally.skipped.most_common()]
    return out
