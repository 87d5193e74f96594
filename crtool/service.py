"""One delivery carried out: the glue between envelope, policy, store, Maildir and outbox.

Each delivery runs in one write transaction (BEGIN IMMEDIATE on SQLite, the owner's row locked on
PostgreSQL), so decisions and counts are exact under concurrency. What must be durable before the
MTA is told "done" is committed before this returns; a challenge is recorded in that transaction
and sent after the commit, and a retried delivery (found by its digest) sends a challenge that
was recorded but never sent. Mail goes into the Maildir before the commit that marks it released,
so a crash can at worst deliver a message twice, never lose it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from crtool import addresses, challenge, digest, fastpath, maildir, policy, tokens
from crtool.config import Settings
from crtool.envelope import STORED_CAP, Envelope, RawMessage
from crtool.envelope import digest as fingerprint_of
from crtool.errors import BadToken, NotFound
from crtool.exits import Outcome
from crtool.fastpath import trace_prefix
from crtool.message import Facts, parse_head
from crtool.outbox import Outbox
from crtool.store import lists, log, pending
from crtool.store.engine import transaction
from crtool.store.models import Pending

KeyLoader = Callable[[], Sequence[bytes]]

# Who made a decision (events.actor) and where a list entry came from (its source).
SENDER_ACTOR = "sender"
OWNER_ACTOR = "owner"
CONFIRMED_SOURCE = "confirmed"
RELEASED_SOURCE = "released by owner"


@dataclass(frozen=True)
class Result:
    """What became of one delivery, and the one line that says so."""

    outcome: Outcome
    detail: str
    pending_id: str = ""
    reason: str = ""


@dataclass(frozen=True)
class _Outgoing:
    challenge_id: int
    recipient: str
    message: bytes


@dataclass
class Mailbox:
    """The environment one delivery runs in; the clock and the outbox are passed in."""

    settings: Settings
    engine: Engine
    outbox: Outbox
    keys: KeyLoader
    clock: Callable[[], float] = time.time

    @property
    def owner(self) -> str:
        return self.settings.owner

    def now(self) -> int:
        return int(self.clock())


# Incoming mail ------------------------------------------------------------------------------

def deliver(box: Mailbox, envelope: Envelope, raw: RawMessage) -> Result:
    """Decide and carry out one incoming message. Raises TemporaryFailure (or lets a database
    or disk error escape) only when the environment is broken."""
    facts = parse_head(raw.head)
    incoming = fastpath.incoming(box.settings, envelope, facts)
    action = addresses.parse_action(envelope.recipient, box.settings.address,
                                    box.settings.delimiter)
    if action is not None:
        word, token = action
        if word == addresses.CONFIRM_WORD:
            return confirm(box, envelope, facts, token)
        return owner_action(box, envelope, word, token)

    with transaction(box.engine) as session:
        if _own_digest(box, session, envelope, facts):
            incoming = replace(incoming, own_digest=True)
        verdict = policy.classify(incoming, _listing(session, box.owner, envelope.sender))
        if verdict.action is policy.Action.ACCEPT:
            return _accept(box, session, envelope, raw, verdict)
        if verdict.action is policy.Action.BLACKLISTED:
            return _blacklisted(box, session, envelope, verdict)

    return _hold(box, envelope, raw, facts, incoming)


def _own_digest(box: Mailbox, session: Session, envelope: Envelope, facts: Facts) -> bool:
    """Whether this is a digest this crtool mailed to its owner, come back through the MTA
    (null sender, a Message-ID signed for this owner). Only then are the keys loaded."""
    if envelope.sender or not digest.looks_like_own(facts.message_id):
        return False
    return digest.recognise(session, box.owner, box.keys(), facts.message_id, box.now(),
                            box.settings.confirm_ttl)


def _listing(session: Session, owner: str, sender: str) -> policy.Listing | None:
    if not sender:
        return None
    return policy.decide_listing(lists.matches(session, owner, sender))


def _accept(box: Mailbox, session: Session, envelope: Envelope, raw: RawMessage,
            verdict: policy.Verdict) -> Result:
    key = verdict.listing.key if verdict.listing else verdict.reason
    log.record_event(session, box.owner, box.now(), "delivered", key, envelope.sender)
    outcome, detail = fastpath.accept(box.settings, envelope, raw, key)
    return Result(outcome, detail)


def _blacklisted(box: Mailbox, session: Session, envelope: Envelope,
                 verdict: policy.Verdict) -> Result:
    key = verdict.listing.key if verdict.listing else ""
    if box.settings.blacklist_action == "bounce":
        log.record_event(session, box.owner, box.now(), "bounced", "blacklisted", envelope.sender)
        return Result(Outcome.BOUNCED, "sender is not accepted by the recipient", reason=key)
    log.record_event(session, box.owner, box.now(), "dropped", "blacklisted", envelope.sender)
    return Result(Outcome.DROPPED, f"blacklisted ({key}); dropped", reason="blacklisted")


def _hold(box: Mailbox, envelope: Envelope, raw: RawMessage, facts: Facts,
          incoming: policy.Incoming) -> Result:
    data = raw.whole()
    fingerprint = fingerprint_of(box.owner, envelope, data)
    outgoing: _Outgoing | None = None
    # What a challenge needs and is slow to get (Jinja2's import, the template's compilation,
    # the key ring) is got before the write lock, which 120 concurrent deliveries queue for.
    keys: Sequence[bytes] = ()
    if policy.suppression_reason(incoming) is None:
        challenge.prepare(box.settings)
        keys = box.keys()
    with transaction(box.engine) as session:
        now = box.now()
        pending.lock_owner(session, box.owner, now)
        existing = pending.by_digest(session, box.owner, fingerprint)
        if existing is not None:
            # A retry of a delivery already held (a crash or a tempfail came between).
            outgoing = _unsent_challenge(box, session, existing, data, facts)
            result = Result(Outcome.HELD, f"already held as {existing.id}", existing.id,
                            existing.reason)
        else:
            # Decided again inside the write lock: a list may have changed since the first look.
            verdict = policy.classify(incoming, _listing(session, box.owner, envelope.sender))
            if verdict.action is not policy.Action.CHALLENGE and verdict.action is not \
                    policy.Action.HOLD:
                return _decided_late(box, session, envelope, raw, verdict)
            reason = verdict.reason
            sender_key = addresses.normalize_address(envelope.sender)
            if verdict.action is policy.Action.CHALLENGE:
                reason = _rate_limited(box, session, sender_key, now) or reason
            challenging = reason == "challenged"
            if challenging and not keys:
                keys = box.keys()
            row = pending.hold(session, Pending(
                owner=box.owner,
                sender=envelope.sender[:STORED_CAP],
                sender_key=sender_key[:STORED_CAP],
                recipient=envelope.recipient[:STORED_CAP],
                from_header=facts.from_header[:STORED_CAP],
                subject=facts.subject[:STORED_CAP],
                message_id=facts.message_id[:STORED_CAP],
                received_at=now,
                size=len(data),
                digest=fingerprint,
                mta=box.settings.mta,
                status=pending.HELD,
                reason=reason,
                challenged_at=now if challenging else None,
            ), data, tokens.new_token_id)
            log.record_event(session, box.owner, now, "held", reason, envelope.sender, row.id)
            if challenging:
                outgoing = _prepare_challenge(box, session, row, data, facts, keys, now)
                result = Result(Outcome.HELD, f"held as {row.id}; challenge sent to "
                                f"{envelope.sender}", row.id, reason)
            else:
                result = Result(Outcome.HELD, f"held as {row.id} without challenge ({reason})",
                                row.id, reason)
    _send(box, outgoing)
    return result


def _decided_late(box: Mailbox, session: Session, envelope: Envelope, raw: RawMessage,
                  verdict: policy.Verdict) -> Result:
    if verdict.action is policy.Action.ACCEPT:
        return _accept(box, session, envelope, raw, verdict)
    return _blacklisted(box, session, envelope, verdict)


def _rate_limited(box: Mailbox, session: Session, sender_key: str, now: int) -> str | None:
    settings = box.settings
    counts = policy.ChallengeCounts(
        to_sender_in_window=log.challenges_since(
            session, box.owner, now - settings.challenge_window, sender_key),
        in_last_hour=log.challenges_since(session, box.owner, now - 3600),
    )
    return policy.rate_limit_reason(counts, settings.challenge_limit,
                                    settings.challenge_global_limit)


def _prepare_challenge(box: Mailbox, session: Session, row: Pending, data: bytes, facts: Facts,
                       keys: Sequence[bytes], now: int) -> _Outgoing:
    """Record the challenge and render it, inside the hold's transaction: a template that
    fails rolls the hold back and the MTA retries."""
    record = log.record_challenge(session, box.owner, row.sender_key, row.id, now)
    log.record_event(session, box.owner, now, "challenged", "", row.sender, row.id)
    return _render(box, record.id, row, data, facts, keys)


def _render(box: Mailbox, challenge_id: int, row: Pending, data: bytes, facts: Facts,
            keys: Sequence[bytes]) -> _Outgoing:
    challenged_at = row.challenged_at if row.challenged_at is not None else box.now()
    token = tokens.issue(keys, "confirm", box.owner, row.id, row.sender, challenged_at)
    context = challenge.context_for(box.settings, row.sender, facts, data, token,
                                    challenged_at, row.id)
    body = challenge.render(box.settings, context)
    return _Outgoing(challenge_id, row.sender,
                     challenge.build(box.settings, context, body, challenged_at))


def _unsent_challenge(box: Mailbox, session: Session, row: Pending, data: bytes,
                      facts: Facts) -> _Outgoing | None:
    if row.status != pending.HELD or row.challenged_at is None:
        return None
    record = log.unsent_for(session, row.id)
    if record is None:
        return None
    return _render(box, record.id, row, data, facts, box.keys())


def _send(box: Mailbox, outgoing: _Outgoing | None) -> None:
    """Send after the commit, then mark it sent. A failure raises TemporaryFailure: the MTA
    retries, the retry finds the held message and sends the challenge then."""
    if outgoing is None:
        return
    box.outbox.send(outgoing.recipient, outgoing.message)
    with transaction(box.engine) as session:
        log.mark_sent(session, outgoing.challenge_id)


# Confirmation -------------------------------------------------------------------------------

def confirm(box: Mailbox, envelope: Envelope, facts: Facts, token: str) -> Result:
    """A reply to a confirm address: verify, release everything held from that sender and
    whitelist it. Anything wrong releases nothing, sends nothing and is dropped (logged)."""
    refusal = policy.confirm_reply_refusal(facts, envelope.sender)
    if refusal is not None:
        return _refuse(box, envelope, refusal)
    try:
        token_id, _ = tokens.parse(token)
    except BadToken as error:
        return _refuse(box, envelope, f"token_{error.reason}")

    outgoing: _Outgoing | None = None
    with transaction(box.engine) as session:
        now = box.now()
        pending.lock_owner(session, box.owner, now)
        row = pending.get(session, box.owner, token_id)
        if row is None or row.challenged_at is None:
            log.record_event(session, box.owner, now, "dropped", "token_unknown", envelope.sender)
            return Result(Outcome.DROPPED, "confirm token matches no held message; dropped",
                          reason="token_unknown")
        keys = box.keys()
        try:
            tokens.verify(keys, "confirm", box.owner, token, row.sender, row.challenged_at,
                          now, box.settings.confirm_ttl)
        except BadToken as error:
            if error.reason == "expired" and row.status == pending.HELD:
                outgoing, detail = _rechallenge(box, session, row, now, keys)
                log.record_event(session, box.owner, now, "dropped", "token_expired",
                                 envelope.sender, row.id)
                result = Result(Outcome.DROPPED, detail, row.id, "token_expired")
            else:
                reason = f"token_{error.reason}"
                log.record_event(session, box.owner, now, "dropped", reason, envelope.sender,
                                 row.id)
                return Result(Outcome.DROPPED, f"confirm token {error.reason}; dropped", row.id,
                              reason)
        else:
            result = _confirmed(box, session, row, now)
    _send(box, outgoing)
    return result


def _refuse(box: Mailbox, envelope: Envelope, reason: str) -> Result:
    with transaction(box.engine) as session:
        log.record_event(session, box.owner, box.now(), "dropped", reason, envelope.sender)
    return Result(Outcome.DROPPED, f"confirmation refused ({reason}); dropped", reason=reason)


def _confirmed(box: Mailbox, session: Session, row: Pending, now: int) -> Result:
    if row.status == pending.DELETED:
        log.record_event(session, box.owner, now, "dropped", "message_gone", row.sender, row.id)
        return Result(Outcome.DROPPED, f"{row.id} was deleted by the owner; dropped", row.id,
                      "message_gone")
    released = _release(box, session, pending.held_from(session, box.owner, row.sender_key), now,
                        SENDER_ACTOR)
    _whitelist(session, box.owner, row.sender, now, CONFIRMED_SOURCE)
    log.record_event(session, box.owner, now, "confirmed", "" if released else "repeat",
                     row.sender, row.id, SENDER_ACTOR)
    if not released:
        return Result(Outcome.CONFIRMED, f"{row.sender} confirmed again; nothing more held",
                      row.id, "repeat")
    return Result(Outcome.CONFIRMED, f"{row.sender} confirmed; released "
                  f"{len(released)} message(s): {' '.join(released)}", row.id)


def _rechallenge(box: Mailbox, session: Session, row: Pending, now: int,
                 keys: Sequence[bytes]) -> tuple[_Outgoing | None, str]:
    """An expired token for a message still held: a fresh challenge, within the limits, and
    never to a sender the owner has blacklisted since the first one."""
    listing = _listing(session, box.owner, row.sender)
    if listing is not None and listing.list_name == policy.BLACK:
        return None, "confirm token expired; sender now blacklisted, no fresh challenge; dropped"
    limited = _rate_limited(box, session, row.sender_key, now)
    if limited is not None:
        return None, f"confirm token expired; no fresh challenge ({limited}); dropped"
    data = pending.raw_bytes(session, row.id) or b""
    facts = parse_head(data[: 256 * 1024])
    row.challenged_at = now
    session.flush()
    return (_prepare_challenge(box, session, row, data, facts, keys, now),
            f"confirm token expired; fresh challenge sent to {row.sender}; dropped")


def _whitelist(session: Session, owner: str, sender: str, now: int, source: str) -> None:
    _list_sender(session, owner, policy.WHITE, sender, now, source)


def _list_sender(session: Session, owner: str, list_name: str, sender: str, now: int,
                 source: str) -> None:
    """List one recorded sender, `source` saying who decided (history shows it)."""
    try:
        pattern = addresses.parse_pattern(sender)
    except Exception:  # noqa: BLE001 - an odd sender is released but cannot be listed
        return
    lists.add(session, owner, list_name, pattern, source, now, source)


def _release(box: Mailbox, session: Session, rows: list[Pending], now: int,
             actor: str) -> list[str]:
    """Write each held message into the Maildir, then mark it released (same transaction);
    `actor` is who released it: the sender's confirmation or the owner."""
    released = []
    for row in rows:
        data = pending.raw_bytes(session, row.id)
        if data is None:
            continue
        maildir.deliver(box.settings.maildir, [data],
                        trace_prefix(row.mta, row.sender, row.recipient))
        pending.finish(session, row, pending.RELEASED, now)
        log.record_event(session, box.owner, now, "released", "", row.sender, row.id, actor)
        released.append(row.id)
    return released


# The owner's commands -------------------------------------------------------------------------

def _held(session: Session, owner: str, ids: Sequence[str]) -> list[Pending]:
    """The named messages, each still held; NotFound names the first that is not, so a
    command acts on all of them or on none."""
    rows = []
    for pending_id in ids:
        row = pending.get(session, owner, pending_id)
        if row is None or row.status != pending.HELD:
            raise NotFound(f"no held message {pending_id}")
        rows.append(row)
    return rows


def _held_from_senders(session: Session, owner: str, senders: Sequence[str]) -> list[Pending]:
    """Everything still held from these senders (their recorded keys), oldest first."""
    rows: dict[str, Pending] = {}
    for key in dict.fromkeys(addresses.normalize_address(s) for s in senders):
        for row in pending.held_from(session, owner, key):
            rows[row.id] = row
    return sorted(rows.values(), key=lambda r: (r.received_at, r.id))


def _release_by_owner(box: Mailbox, session: Session, rows: list[Pending], now: int,
                      whitelist: bool) -> list[str]:
    """The owner's release, whichever way he asks (`pending release`, a release or accept
    address): with `whitelist`, everything held from those senders goes and each is
    whitelisted (source "released by owner")."""
    senders = list(dict.fromkeys(row.sender for row in rows))
    if whitelist:
        rows = _held_from_senders(session, box.owner, senders)
    released = _release(box, session, rows, now, OWNER_ACTOR)
    if whitelist:
        for sender in senders:
            _whitelist(session, box.owner, sender, now, RELEASED_SOURCE)
    return released


def release_ids(box: Mailbox, ids: Sequence[str], whitelist: bool) -> list[str]:
    """`pending release ID…`: deliver the named held messages; with `whitelist`, everything
    held from their senders too, and whitelist those senders."""
    with transaction(box.engine) as session:
        now = box.now()
        rows = _held(session, box.owner, ids)
        return _release_by_owner(box, session, rows, now, whitelist)


def release_senders(box: Mailbox, senders: Sequence[str], whitelist: bool) -> list[str]:
    """`pending release --sender S…`: everything held from those senders."""
    with transaction(box.engine) as session:
        now = box.now()
        rows = _held_from_senders(session, box.owner, senders)
        if not rows:
            raise NotFound(f"nothing held from {', '.join(senders)}")
        return _release_by_owner(box, session, rows, now, whitelist)


def delete_ids(box: Mailbox, ids: Sequence[str], blacklist: bool = False) -> list[str]:
    """`pending delete`: the bytes go; the row stays (status deleted) so that a later
    confirmation of it is recognised and dropped. With `blacklist`, everything held from
    those senders goes too and each is blacklisted (an exact entry; source "owner")."""
    with transaction(box.engine) as session:
        now = box.now()
        rows = _held(session, box.owner, ids)
        senders = list(dict.fromkeys(row.sender for row in rows))
        if blacklist:
            rows = _held_from_senders(session, box.owner, senders)
        for row in rows:
            pending.finish(session, row, pending.DELETED, now)
            log.record_event(session, box.owner, now, "deleted", "", row.sender, row.id,
                             OWNER_ACTOR)
        if blacklist:
            for sender in senders:
                _list_sender(session, box.owner, policy.BLACK, sender, now, lists.OWNER_SOURCE)
        return [row.id for row in rows]


# Release and accept by mail ---------------------------------------------------------------------

def owner_action(box: Mailbox, envelope: Envelope, word: str, token: str) -> Result:
    """Mail to a release or accept address of the owner's digest: exactly `pending release
    ID` (accept: `pending release ID --whitelist`), through `release_ids`. Any sender may use
    it, since the token is the secret. It acts once; afterwards, and for anything wrong, it
    changes nothing, sends nothing and is dropped with the reason logged."""
    try:
        token_id, _ = tokens.parse(token)
    except BadToken as error:
        return _refuse(box, envelope, f"token_{error.reason}")
    with transaction(box.engine, write=False) as session:
        now = box.now()
        row = pending.get(session, box.owner, token_id)
        reason = "token_unknown" if row is None else ""
        if row is not None:
            try:
                tokens.verify(box.keys(), word, box.owner, token, row.sender, row.received_at,
                              now, box.settings.confirm_ttl)
            except BadToken as error:
                reason = f"token_{error.reason}"
        ids = [] if row is None or reason else [r.id for r in _acted_on(session, box.owner,
                                                                        word, row)]
    released: list[str] = []
    if ids:
        try:
            released = release_ids(box, ids, whitelist=word == addresses.ACCEPT_WORD)
        except NotFound:
            pass  # released or deleted since the look above: the token has nothing to do
    if not released:
        reason = reason or "token_used"
        pending_id = row.id if row is not None else ""
        with transaction(box.engine) as session:
            log.record_event(session, box.owner, box.now(), "dropped", reason, envelope.sender,
                             pending_id, OWNER_ACTOR)
        return Result(Outcome.DROPPED, f"{word} address: {reason}; dropped", pending_id, reason)
    return Result(Outcome.CONFIRMED, f"{word} by the owner: released {len(released)} "
                  f"message(s): {' '.join(released)}", ids[0])


def _acted_on(session: Session, owner: str, word: str, row: Pending) -> list[Pending]:
    """What a valid release or accept token still acts on; nothing once it has acted.

    A release token names one message, still held. An accept token names the newest
    message of its sender that the digest listed: it acts while that one or an earlier one
    from the sender is still held, so once it has released them it reads as used.
    """
    if word == addresses.RELEASE_WORD:
        return [row] if row.status == pending.HELD else []
    earlier = [r for r in pending.held_from(session, owner, row.sender_key)
               if r.received_at <= row.received_at]
    return earlier[:1]
