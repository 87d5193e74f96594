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
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from crtool import addresses, challenge, fastpath, maildir, policy, tokens
from crtool.config import Settings
from crtool.envelope import STORED_CAP, Envelope, RawMessage, digest
from crtool.errors import BadToken, NotFound
from crtool.exits import Outcome
from crtool.fastpath import trace_prefix
from crtool.message import Facts, parse_head
from crtool.outbox import Outbox
from crtool.store import lists, log, pending
from crtool.store.engine import transaction
from crtool.store.models import Pending

KeyLoader = Callable[[], Sequence[bytes]]


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


def open_mailbox(settings: Settings) -> Mailbox:
    """The owner's mailbox as the commands and the web pages use it: the configured database,
    sendmail and key ring (read when a token is made or checked, so `keys rotate` counts)."""
    from crtool.outbox import SendmailOutbox
    from crtool.store.engine import make_engine

    return Mailbox(
        settings=settings,
        engine=make_engine(settings.database_url, timeout=settings.database_timeout),
        outbox=SendmailOutbox(settings.sendmail, settings.sendmail_timeout),
        keys=lambda: tokens.secrets_of(tokens.load_keys(settings.keys_path)),
    )


# Incoming mail ------------------------------------------------------------------------------

def deliver(box: Mailbox, envelope: Envelope, raw: RawMessage) -> Result:
    """Decide and carry out one incoming message. Raises TemporaryFailure (or lets a database
    or disk error escape) only when the environment is broken."""
    facts = parse_head(raw.head)
    incoming = fastpath.incoming(box.settings, envelope, facts)
    token = addresses.parse_confirm(envelope.recipient, box.settings.address,
                                    box.settings.delimiter)
    if token is not None:
        return confirm(box, token, Via.mail(envelope, facts))

    with transaction(box.engine) as session:
        verdict = policy.classify(incoming, _listing(session, box.owner, envelope.sender))
        if verdict.action is policy.Action.ACCEPT:
            return _accept(box, session, envelope, raw, verdict)
        if verdict.action is policy.Action.BLACKLISTED:
            return _blacklisted(box, session, envelope, verdict)

    return _hold(box, envelope, raw, facts, incoming)


def _listing(session: Session, owner: str, sender: str) -> policy.Listing | None:
    if not sender:
        return None
    return policy.decide_listing(lists.matches(session, owner, sender))


def _accept(box: Mailbox, session: Session, envelope: Envelope, raw: RawMessage,
            verdict: policy.Verdict) -> Result:
    key = verdict.listing.key if verdict.listing else ""
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
    fingerprint = digest(box.owner, envelope, data)
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

@dataclass(frozen=True)
class Via:
    """How a confirmation arrived. A reply by mail brings its envelope sender and header facts,
    because an automated reply (a vacation program at a forged sender's address) must confirm
    nothing; the web page brings neither, and its POST is a person pressing a button."""

    channel: str
    sender: str = ""
    facts: Facts | None = None

    @classmethod
    def mail(cls, envelope: Envelope, facts: Facts) -> Via:
        return cls("mail", envelope.sender, facts)

    @classmethod
    def web(cls) -> Via:
        return cls("web")


def confirm(box: Mailbox, token: str, via: Via) -> Result:
    """A reply to a confirm address, or the web page's Confirm button: verify, release
    everything held from that sender and whitelist it. Anything wrong releases nothing, sends
    nothing and is dropped (logged)."""
    if via.facts is not None:
        refusal = policy.confirm_reply_refusal(via.facts, via.sender)
        if refusal is not None:
            return _refuse(box, via, refusal)
    try:
        token_id, _ = tokens.parse(token)
    except BadToken as error:
        return _refuse(box, via, f"token_{error.reason}")

    outgoing: _Outgoing | None = None
    with transaction(box.engine) as session:
        now = box.now()
        pending.lock_owner(session, box.owner, now)
        row = _challenged(session, box.owner, token_id)
        if row is None:
            log.record_event(session, box.owner, now, "dropped", "token_unknown", via.sender)
            return Result(Outcome.DROPPED, "confirm token matches no held message; dropped",
                          reason="token_unknown")
        keys = box.keys()
        try:
            _verify(box, keys, token, row, now)
        except BadToken as error:
            if error.reason == "expired" and row.status == pending.HELD:
                outgoing, detail = _rechallenge(box, session, row, now, keys)
                log.record_event(session, box.owner, now, "dropped", "token_expired",
                                 via.sender, row.id)
                result = Result(Outcome.DROPPED, detail, row.id, "token_expired")
            else:
                reason = f"token_{error.reason}"
                log.record_event(session, box.owner, now, "dropped", reason, via.sender,
                                 row.id)
                return Result(Outcome.DROPPED, f"confirm token {error.reason}; dropped", row.id,
                              reason)
        else:
            result = _confirmed(box, session, row, now)
    _send(box, outgoing)
    return result


def _challenged(session: Session, owner: str, token_id: str) -> Pending | None:
    """The held message a confirm token names, if it was ever challenged."""
    row = pending.get(session, owner, token_id)
    return row if row is not None and row.challenged_at is not None else None


def _verify(box: Mailbox, keys: Sequence[bytes], token: str, row: Pending, now: int) -> None:
    """BadToken unless `token` is the confirm token of this row's current challenge."""
    if row.challenged_at is None:
        raise BadToken("unknown")
    tokens.verify(keys, "confirm", box.owner, token, row.sender, row.challenged_at, now,
                  box.settings.confirm_ttl)


@dataclass(frozen=True)
class Preview:
    """What the web page shows for a confirm token before anyone presses anything.

    `state`: "ready" (valid, its message still held), "used" (valid, nothing of it is held any
    more), "expired" (`row` still held: pressing the button asks for a fresh challenge) or
    "invalid" (malformed, forged or unknown: nothing about any message is shown)."""

    state: str
    row: Pending | None = None


def preview(box: Mailbox, token: str) -> Preview:
    """Look a confirm token up without changing anything: link scanners fetch every link, so
    only `confirm` (a POST on the web) may act on it."""
    try:
        token_id, _ = tokens.parse(token)
    except BadToken:
        return Preview("invalid")
    with transaction(box.engine, write=False) as session:
        row = _challenged(session, box.owner, token_id)
        if row is None:
            return Preview("invalid")
        try:
            _verify(box, box.keys(), token, row, box.now())
        except BadToken as error:
            if error.reason == "expired" and row.status == pending.HELD:
                return Preview("expired", row)
            return Preview("invalid")
        return Preview("ready" if row.status == pending.HELD else "used", row)


def _refuse(box: Mailbox, via: Via, reason: str) -> Result:
    with transaction(box.engine) as session:
        log.record_event(session, box.owner, box.now(), "dropped", reason, via.sender)
    return Result(Outcome.DROPPED, f"confirmation refused ({reason}); dropped", reason=reason)


def _confirmed(box: Mailbox, session: Session, row: Pending, now: int) -> Result:
    if row.status == pending.DELETED:
        log.record_event(session, box.owner, now, "dropped", "message_gone", row.sender, row.id)
        return Result(Outcome.DROPPED, f"{row.id} was deleted by the owner; dropped", row.id,
                      "message_gone")
    released = _release(box, session, pending.held_from(session, box.owner, row.sender_key), now)
    _whitelist(session, box.owner, row.sender, now)
    log.record_event(session, box.owner, now, "confirmed", "" if released else "repeat",
                     row.sender, row.id)
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


def _whitelist(session: Session, owner: str, sender: str, now: int) -> None:
    _list_sender(session, owner, policy.WHITE, sender, "confirmed", now)


def _list_sender(session: Session, owner: str, list_name: str, sender: str, note: str,
                 now: int) -> None:
    try:
        pattern = addresses.parse_pattern(sender)
    except Exception:  # noqa: BLE001 - an odd sender is released but cannot be listed
        return
    lists.add(session, owner, list_name, pattern, note, now)


def _release(box: Mailbox, session: Session, rows: list[Pending], now: int) -> list[str]:
    """Write each held message into the Maildir, then mark it released (same transaction)."""
    released = []
    for row in rows:
        data = pending.raw_bytes(session, row.id)
        if data is None:
            continue
        maildir.deliver(box.settings.maildir, [data],
                        trace_prefix(row.mta, row.sender, row.recipient))
        pending.finish(session, row, pending.RELEASED, now)
        log.record_event(session, box.owner, now, "released", "", row.sender, row.id)
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


def release_ids(box: Mailbox, ids: Sequence[str], whitelist: bool) -> list[str]:
    """`pending release`: deliver the named held messages, optionally whitelisting senders."""
    with transaction(box.engine) as session:
        now = box.now()
        rows = _held(session, box.owner, ids)
        released = _release(box, session, rows, now)
        if whitelist:
            for row in rows:
                _whitelist(session, box.owner, row.sender, now)
        return released


def delete_ids(box: Mailbox, ids: Sequence[str], blacklist: bool = False) -> list[str]:
    """`pending delete`: the bytes go; the row stays (status deleted) so that a later
    confirmation of it is recognised and dropped. `blacklist` also blacklists each sender."""
    with transaction(box.engine) as session:
        now = box.now()
        rows = _held(session, box.owner, ids)
        for row in rows:
            pending.finish(session, row, pending.DELETED, now)
            log.record_event(session, box.owner, now, "deleted", "", row.sender, row.id)
            if blacklist and row.sender:
                _list_sender(session, box.owner, policy.BLACK, row.sender, "deleted by owner",
                             now)
        return [row.id for row in rows]


# The owner's lists ----------------------------------------------------------------------------

def list_add(box: Mailbox, list_name: str, texts: Sequence[str], note: str) -> list[tuple[str,
                                                                                         bool]]:
    """`whitelist add` / `blacklist add` and the web's add form: every pattern or none
    (UsageError names the first bad one); each with whether it was new."""
    patterns = [addresses.parse_pattern(text) for text in texts]
    with transaction(box.engine) as session:
        return [(p.text, lists.add(session, box.owner, list_name, p, note, box.now()))
                for p in patterns]


def list_remove(box: Mailbox, list_name: str, texts: Sequence[str]) -> tuple[list[str],
                                                                             list[str]]:
    """`whitelist remove` / `blacklist remove` and the web's remove buttons: (removed,
    not listed)."""
    patterns = [addresses.parse_pattern(text) for text in texts]
    removed, missing = [], []
    with transaction(box.engine) as session:
        for pattern in patterns:
            if lists.remove(session, box.owner, list_name, pattern):
                removed.append(pattern.text)
            else:
                missing.append(pattern.text)
    return removed, missing
