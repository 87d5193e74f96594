"""The owner's questions about one sender: what would delivery do now (`crtool check`), and
what was decided so far, by whom (`crtool history`).

`check` asks the same `policy.classify` that delivery asks, with the same list look-up and
rate-limit counts, so its answer cannot drift from what `deliver` does. It changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from crtool import addresses, observe, policy
from crtool.envelope import valid_mailbox
from crtool.message import Facts
from crtool.store import lists, log
from crtool.store.engine import transaction

if TYPE_CHECKING:
    from crtool.service import Mailbox

# How `history` names who decided (events.actor, list entries' source).
ACTORS = {
    "": "crtool",
    "sender": "the sender",
    "owner": "the owner",
    "confirmed": "the sender's confirmation",
    "released by owner": "the owner's release",
    "sent": "sendmail (the owner wrote to him)",
    "reply": "a reply to the owner's mail",
    "learned": "learn",
}
_RULES = {rule.reason: rule.trigger for rule in policy.SUPPRESSION_RULES}
_RULES.update(dict(policy.RATE_LIMIT_RULES))


def _iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def check(box: Mailbox, sender: str, recipient: str | None) -> dict[str, Any]:
    """{"verdict", "why", "list", "entry", "source", "note", "reason"} for mail from `sender`
    now. Header rules (lists, bulk, Auto-Submitted) need a message and are not guessed: the
    answer is for a plain personal message whose From: is the sender."""
    settings = box.settings
    incoming = policy.Incoming(
        sender=sender, sender_valid=not sender or valid_mailbox(sender),
        recipient=recipient or settings.address,
        facts=Facts(headers={"from": [sender]}, has_header_block=True),
        owner=settings.owner_address, authserv_id=settings.authserv_id)
    found: dict[str, Any] = {"sender": sender, "list": "", "entry": "", "source": "",
                             "note": "", "reason": ""}
    from crtool import service

    # The very look-up, policy and rate-limit count that delivery makes.
    decision = service.decide(box, incoming)
    verdict, listing = decision.verdict, decision.listing
    if listing is not None:
        with transaction(box.engine, write=False) as session:
            entry = lists.entry(session, box.owner, listing.list_name, listing.key)
        found.update(list=listing.list_name,
                     entry=addresses.Pattern(entry.kind, entry.key).text if entry else "",
                     source=entry.source if entry else "", note=entry.note if entry else "")
    entry_text = f"{found['list']}list entry {found['entry']}" + (
        f" (added by {ACTORS.get(found['source'], found['source'])})" if found["source"] else "")
    unasked = {**policy.TAG_REASONS, **policy.REPLY_REASONS}
    if verdict.action is policy.Action.ACCEPT and verdict.reason in unasked:
        found.update(verdict="deliver", reason=verdict.reason,
                     why=f"{verdict.reason}: {unasked[verdict.reason]}")
    elif verdict.action is policy.Action.DROP:
        found.update(verdict="drop", reason=verdict.reason,
                     why=f"{verdict.reason}: {unasked[verdict.reason]}")
    elif verdict.action is policy.Action.ACCEPT and verdict.reason == "expected":
        found.update(verdict="deliver", reason="expected",
                     why="an expect window is open for its domain ('crtool expect')")
    elif verdict.action is policy.Action.ACCEPT:
        found.update(verdict="deliver", why=f"whitelisted: {entry_text}")
    elif verdict.action is policy.Action.BLACKLISTED:
        found.update(verdict=settings.blacklist_action, why=f"blacklisted: {entry_text}")
    elif verdict.action is policy.Action.CONFIRM:
        found.update(verdict=f"act on the {verdict.reason} token",
                     why=f"{incoming.recipient} is a {verdict.reason} address")
    elif verdict.action is policy.Action.HOLD:
        found.update(verdict="hold without challenge", reason=verdict.reason,
                     why=f"{verdict.reason}: {_RULES.get(verdict.reason, '')}")
    else:
        found.update(verdict="hold and challenge", reason="challenged",
                     why="on neither list; no rule forbids a challenge")
    if settings.mode == observe.OBSERVE and observe.would_stop(verdict):
        # Observe mode delivers it; say what enforce would do, which `crtool report` counts.
        found.update(verdict=f"deliver (observe mode; enforce would {found['verdict']})")
    return found


def history(box: Mailbox, sender: str) -> Iterator[dict[str, Any]]:
    """Every recorded event about `sender` (and list entries of patterns that match him),
    oldest first, streamed."""
    keys = addresses.lookup_keys(sender, box.settings.subaddress_separators) or [
        addresses.normalize_address(sender)]
    keys += ["*@" + key for key in keys if key.startswith("*.")]
    with transaction(box.engine, write=False) as session:
        for event in log.history(session, box.owner, keys):
            yield {"at": _iso(event.at), "kind": event.kind, "reason": event.reason,
                   "sender": event.sender, "pending_id": event.pending_id,
                   "actor": event.actor, "by": _by(event.kind, event.actor)}


def _by(kind: str, actor: str) -> str:
    if not actor and kind in ("held", "delivered", "challenged", "dropped", "bounced"):
        return ""
    return ACTORS.get(actor, actor)
