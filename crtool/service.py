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
from contextlib import closing
from dataclasses import dataclass, replace
from typing import assert_never

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from crtool import (
    acceptance,
    addresses,
    challenge,
    entries,
    expect,
    known,
    observe,
    onward,
    policy,
    tokens,
    upstream,
)
from crtool.config import Settings
from crtool.envelope import HEAD_CAP, START_CAP, STORED_CAP, Envelope, Fingerprint, RawMessage
from crtool.errors import BadToken, NotFound
from crtool.exits import Outcome
from crtool.message import Facts, parse_head
from crtool.outbox import Outbox
from crtool.store import lists, log, pending
from crtool.store.engine import transaction
from crtool.store.ledger import Job, Ledger
from crtool.store.models import Pending

KeyLoader = Callable[[], Sequence[bytes]]
# Expired messages a writing delivery deletes after its own commit: enough to keep up with any
# inflow (each such delivery adds one), few enough to keep its transaction short.
PURGE_BATCH = 100

# Who made a decision (events.actor) and where a list entry came from (its source).
SENDER_ACTOR = "sender"
OWNER_ACTOR = "owner"
CONFIRMED_SOURCE = "confirmed"
RELEASED_SOURCE = "released by owner"
REPLY_SOURCE = "reply"


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
    # Where a delivery's after-the-fact records go (store/ledger.py); None: each in its own
    # transaction. The hub passes one shared group commit per database.
    ledger: Ledger | None = None

    @property
    def owner(self) -> str:
        return self.settings.owner

    def now(self) -> int:
        return int(self.clock())

    def write_after(self, job: Job) -> None:
        """Write what is recorded once the mail is safe (a delivered message's log line, a
        challenge marked sent): committed when this returns, or raises what kept it out.
        Never from inside a transaction: the hub's batch may be written by another thread,
        which would wait for the write lock this one holds."""
        (self.ledger or Ledger(self.engine)).write(job)


def open_mailbox(settings: Settings, engine: Engine | None = None,
                 keys: KeyLoader | None = None, clock: Callable[[], float] = time.time,
                 ledger: Ledger | None = None) -> Mailbox:
    """The owner's mailbox, the one place one is built: the configured database, sendmail and
    key ring (read when a token is made or checked, so `keys rotate` counts). A resident
    server passes the engine and the key loader it keeps between deliveries; the hub, the
    group commit its deliveries share."""
    from crtool.outbox import SendmailOutbox
    from crtool.store.engine import make_engine

    return Mailbox(
        settings=settings,
        engine=engine if engine is not None else make_engine(
            settings.database_url, timeout=settings.database_timeout),
        outbox=SendmailOutbox(settings.sendmail, settings.sendmail_timeout),
        keys=keys if keys is not None else (
            lambda: tokens.secrets_of(tokens.load_keys(settings.keys_path))),
        clock=clock,
        ledger=ledger,
    )


# Incoming mail ------------------------------------------------------------------------------

def deliver(box: Mailbox, envelope: Envelope, raw: RawMessage,
            facts: Facts | None = None) -> Result:
    """Decide and carry out one incoming message. Raises TemporaryFailure (or lets a database
    or disk error escape) only when the environment is broken. `facts` are raw.head's, when
    the caller (the fast path) has parsed it already: the head is parsed once per delivery."""
    facts = facts if facts is not None else parse_head(raw.head)
    incoming = acceptance.incoming(box.settings, envelope, facts)
    action = incoming.owner.action(envelope.recipient)
    if action is not None:
        word, token = action
        if word == addresses.CONFIRM_WORD:
            return _purged_after(box, confirm(box, token, Via.mail(envelope, facts)))
        return _purged_after(box, owner_action(box, envelope, word, token))

    if box.settings.spam_header:
        incoming = replace(incoming, spam_flagged=upstream.spam_flagged(
            raw.head, box.settings.spam_header))
    # The decision only reads (but for a tag that does not hold, which is recorded): no
    # write lock is taken before it is known that something must be written, so
    # whitelisted deliveries (most mail) run side by side.
    records = known.records(box.settings, envelope)
    with transaction(box.engine, write=records, one_snapshot=records) as session:
        incoming, _, verdict = judge(box, session, envelope, incoming, record=True)
    if box.settings.mode == observe.OBSERVE and observe.would_stop(verdict):
        with transaction(box.engine) as session:
            return observe.deliver(box, session, envelope, raw, verdict)
    if verdict.action is policy.Action.ACCEPT:
        return _accept(box, envelope, raw, verdict)
    if verdict.action in (policy.Action.BLACKLISTED, policy.Action.DROP):
        with transaction(box.engine) as session:
            return _blacklisted(box, session, envelope, verdict)

    return _purged_after(box, _hold(box, envelope, raw, facts, incoming))


@dataclass(frozen=True)
class Decision:
    """What delivery would do with one message now: policy's verdict, with the rate limits
    already applied to a challenge, and the list entry that matched the sender, if any."""

    verdict: policy.Verdict
    listing: policy.Listing | None


def decide(box: Mailbox, incoming: policy.Incoming) -> Decision:
    """Ask what becomes of a message without delivering it or changing anything: the very
    list look-up, policy and rate-limit counts `deliver` uses, for `check`, the web pages, the
    digest or the hub to call."""
    envelope = Envelope(sender=incoming.sender, recipient=incoming.recipient)
    with transaction(box.engine, write=False) as session:
        incoming, listing, verdict = judge(box, session, envelope, incoming, record=False)
        if verdict.action is policy.Action.CHALLENGE:
            sender_key = addresses.unmangle(incoming.sender, box.settings.subaddress_separators)
            limited = _rate_limited(box, session, sender_key, box.now())
            if limited is not None:
                verdict = replace(verdict, action=policy.Action.HOLD, reason=limited)
    return Decision(verdict, listing)


def judge(box: Mailbox, session: Session, envelope: Envelope, incoming: policy.Incoming,
          record: bool) -> tuple[policy.Incoming, policy.Listing | None, policy.Verdict]:
    """The one judgement `deliver`, `decide` and `crtool simulate` share, in the caller's
    transaction: the owner's own digest, a tagged address or a reply (known.py), the lists,
    an expect window, then policy; no rate limit. `record` lets a tag that does not hold be
    recorded (deliver's, never the others': deciding changes nothing)."""
    facts = incoming.facts
    if _own_digest(box, session, envelope, facts):
        incoming = replace(incoming, own_digest=True)
    incoming = known.enrich(box, session, envelope, facts, incoming, record=record)
    listing = _listing(box, session, incoming)
    if listing is None and expect.expected(session, box.owner, incoming, box.now(),
                                           box.settings.subaddress_separators):
        incoming = replace(incoming, expected=True)
    return incoming, listing, policy.classify(incoming, listing)


def _own_digest(box: Mailbox, session: Session, envelope: Envelope, facts: Facts) -> bool:
    """Whether this is a digest this crtool mailed to its owner, come back through the MTA
    (null sender, a Message-ID signed for this owner). Only then are the keys loaded, and
    the digest module imported: a stranger's hold need not pay for it."""
    if envelope.sender:
        return False
    from crtool import digest

    if not digest.looks_like_own(facts.message_id):
        return False
    return digest.recognise(session, box.owner, box.keys(), facts.message_id, box.now(),
                            box.settings.hold_ttl)


def _listing(box: Mailbox, session: Session,
             incoming: policy.Incoming) -> policy.Listing | None:
    return lists.listing_for(session, box.owner, incoming, box.settings.subaddress_separators)


def _accept(box: Mailbox, envelope: Envelope, raw: RawMessage,
            verdict: policy.Verdict) -> Result:
    """Deliver first, with no database lock held (the Maildir's fsyncs are the slow part),
    then log it in a short write of its own (the hub's deliveries share one, store/ledger.py).
    The mail is safe once delivered: a log that cannot be written then must not turn it into
    a temporary failure, which would make the MTA deliver it twice."""
    key = verdict.listing.key if verdict.listing else verdict.reason
    outcome, detail = acceptance.accept(box.settings, envelope, raw, key)
    now = box.now()

    def record(session: Session) -> None:
        log.record_event(session, box.owner, now, "delivered", key, envelope.sender)
        if verdict.reason == policy.REPLY:
            _whitelist(box, session, envelope.sender, REPLY_SOURCE, now)

    try:
        box.write_after(record)
    except Exception as error:  # noqa: BLE001 - delivered already: a retry would deliver twice
        detail = f"{detail}; not logged ({type(error).__name__})"
    return Result(outcome, detail)


def _blacklisted(box: Mailbox, session: Session, envelope: Envelope,
                 verdict: policy.Verdict) -> Result:
    if verdict.action is policy.Action.DROP:  # never a bounce, whatever blacklist_action says
        log.record_event(session, box.owner, box.now(), "dropped", verdict.reason,
                         envelope.sender)
        return Result(Outcome.DROPPED, f"{verdict.reason}; dropped", reason=verdict.reason)
    key = verdict.listing.key if verdict.listing else ""
    if box.settings.blacklist_action == "bounce":
        log.record_event(session, box.owner, box.now(), "bounced", "blacklisted", envelope.sender)
        return Result(Outcome.BOUNCED, "sender is not accepted by the recipient", reason=key)
    log.record_event(session, box.owner, box.now(), "dropped", "blacklisted", envelope.sender)
    return Result(Outcome.DROPPED, f"blacklisted ({key}); dropped", reason="blacklisted")


def _hold(box: Mailbox, envelope: Envelope, raw: RawMessage, facts: Facts,
          incoming: policy.Incoming) -> Result:
    outgoing: _Outgoing | None = None
    late_accept: policy.Verdict | None = None
    # What a challenge needs and is slow to get (Jinja2's import, the template's compilation,
    # the key ring) is got before the write lock, which 120 concurrent deliveries queue for.
    keys: Sequence[bytes] = ()
    if policy.suppression_reason(incoming) is None:
        challenge.prepare(box.settings)
        keys = box.keys()
    with transaction(box.engine) as session:
        now = box.now()
        pending.lock_owner(session, box.owner, now)
        # Decided again inside the write lock: a list may have changed since the first look.
        verdict = policy.classify(incoming, _listing(box, session, incoming))
        match verdict.action:
            case policy.Action.BLACKLISTED | policy.Action.DROP:
                return _blacklisted(box, session, envelope, verdict)
            case policy.Action.ACCEPT:
                late_accept = verdict
            case policy.Action.CHALLENGE | policy.Action.HOLD:
                result, outgoing = _hold_now(box, session, envelope, raw, facts, verdict,
                                             keys, now)
            case policy.Action.CONFIRM:
                # Action addresses are acted on before any hold is considered.
                raise AssertionError(f"{verdict.action} is not decided late")
            case _:
                assert_never(verdict.action)
    if late_accept is not None:
        # Whitelisted since the first look: delivered outside the write lock, as always.
        return _accept(box, envelope, raw, late_accept)
    _send(box, outgoing)
    return result


def _hold_now(box: Mailbox, session: Session, envelope: Envelope, raw: RawMessage,
              facts: Facts, verdict: policy.Verdict, keys: Sequence[bytes],
              now: int) -> tuple[Result, _Outgoing | None]:
    """Store the message held, inside the hold's write transaction, and prepare its
    challenge when it gets one; the challenge is sent after the commit."""
    outgoing: _Outgoing | None = None
    reason = verdict.reason
    sender_key = addresses.unmangle(envelope.sender, box.settings.subaddress_separators)
    if verdict.action is policy.Action.CHALLENGE:
        reason = _rate_limited(box, session, sender_key, now) or reason
    challenging = reason == "challenged"
    # The bytes stream from stdin into the store; the digest that finds an earlier hold
    # of this very delivery is known only at the end, so the look-up comes after, in the
    # same transaction, and a retry's bytes are discarded there.
    fingerprint = Fingerprint(box.owner, envelope)
    held = Pending(
        owner=box.owner,
        sender=envelope.sender[:STORED_CAP],
        sender_key=sender_key[:STORED_CAP],
        recipient=envelope.recipient[:STORED_CAP],
        from_header=facts.from_header[:STORED_CAP],
        subject=facts.subject[:STORED_CAP],
        message_id=facts.message_id[:STORED_CAP],
        received_at=now,
        mta=box.settings.mta,
        status=pending.HELD,
        reason=reason,
        challenged_at=now if challenging else None,
    )
    row = pending.hold(session, held, fingerprint.through(raw.chunks()),
                       tokens.new_token_id, fingerprint.hexdigest)
    if row is not held:
        # A retry of a delivery already held (a crash or a tempfail came between).
        outgoing = _unsent_challenge(box, session, row, raw.start, facts)
        failed = f"; challenge not sent after {policy.CHALLENGE_TRIES} tries" \
            if row.reason == policy.CHALLENGE_FAILED else ""
        result = Result(Outcome.HELD, f"already held as {row.id}{failed}", row.id,
                        row.reason)
    else:
        if challenging and not keys:
            keys = box.keys()
        log.record_event(session, box.owner, now, "held", reason, envelope.sender, row.id)
        if challenging:
            outgoing = _prepare_challenge(box, session, row, raw.start, facts, keys, now)
            result = Result(Outcome.HELD, f"held as {row.id}; challenge sent to "
                            f"{envelope.sender}", row.id, reason)
        else:
            result = Result(Outcome.HELD, f"held as {row.id} without challenge ({reason})",
                            row.id, reason)
    return result, outgoing


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
    return _Outgoing(challenge_id, row.sender, challenge.compose(
        box.settings, row.sender, facts, data, token, challenged_at, row.id))


def _unsent_challenge(box: Mailbox, session: Session, row: Pending, data: bytes,
                      facts: Facts) -> _Outgoing | None:
    if row.status != pending.HELD or row.challenged_at is None:
        return None
    record = log.unsent_for(session, row.id)
    if record is None:
        return None
    now = box.now()
    if log.send_tries(session, record) >= policy.CHALLENGE_TRIES:
        # sendmail kept failing, or sent and then failed: stop, or one person gets a copy on
        # every retry of the MTA's. The message stays held; the owner sees why.
        log.give_up(session, record)
        row.reason = policy.CHALLENGE_FAILED
        log.record_event(session, box.owner, now, policy.CHALLENGE_FAILED,
                         policy.CHALLENGE_FAILED, row.sender, row.id)
        return None
    log.record_event(session, box.owner, now, log.RETRIED, "", row.sender, row.id)
    return _render(box, record.id, row, data, facts, box.keys())


def _send(box: Mailbox, outgoing: _Outgoing | None) -> None:
    """Send after the commit, then mark it sent. A failure raises TemporaryFailure: the MTA
    retries, the retry finds the held message and sends the challenge then. The mark is a
    record after the fact, like a delivered message's log line, so the hub group-commits it
    with theirs (one commit where each stranger paid one of its own)."""
    if outgoing is None:
        return
    box.outbox.send(outgoing.recipient, outgoing.message)
    box.write_after(lambda session: log.mark_sent(session, outgoing.challenge_id))


# Expiry -------------------------------------------------------------------------------------

def purge_expired(box: Mailbox, older_than: int | None = None, limit: int = PURGE_BATCH) -> int:
    """Delete up to `limit` messages received `older_than` seconds ago (default hold_ttl) or
    earlier, in a short transaction of its own; returns how many went.

    It looks first without the write lock, so that the deliveries calling it queue for the
    lock only when there is something to delete; the owner lock keeps it from deleting a
    message a confirmation is releasing at that moment."""
    before = box.now() - (box.settings.hold_ttl if older_than is None else older_than)
    # One statement: no snapshot to share, so no BEGIN and COMMIT on PostgreSQL either.
    with transaction(box.engine, write=False, one_snapshot=False) as session:
        if not pending.expired_ids(session, box.owner, before, 1):
            return 0
    with transaction(box.engine) as session:
        pending.lock_owner(session, box.owner, box.now())
        return pending.purge_batch(session, box.owner, before, limit)


def _purged_after(box: Mailbox, result: Result) -> Result:
    """A delivery that wrote purges expired mail afterwards, so no cron job is needed. Its
    own work is committed by now: a failure here never turns it into a retry; it is added to
    the delivery's one line instead, and the next writing delivery tries again."""
    try:
        purge_expired(box)
    except Exception as error:  # noqa: BLE001 - the delivery is done whatever went wrong here
        cause = " ".join(str(getattr(error, "orig", None) or error).split())[:200]
        return replace(result, detail=f"{result.detail} (expired mail not purged: {cause})")
    return result


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
            return _refuse(box, via.sender, refusal)
    try:
        token_id, _ = tokens.parse(token)
    except BadToken as error:
        return _refuse(box, via.sender, f"token_{error.reason}")

    outgoing: _Outgoing | None = None
    confirmed: tuple[str, str, str] | None = None  # (id, sender, sender_key) to release
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
            refused = _confirmation_refused(box, session, row)
            if refused is not None:
                reason, detail = refused
                log.record_event(session, box.owner, now, "dropped", reason, row.sender, row.id)
                return Result(Outcome.DROPPED, f"{detail} ({reason}); dropped", row.id, reason)
            _whitelist(box, session, row.sender, CONFIRMED_SOURCE, now)
            # The reason says how he confirmed ("mail" or "web"), for `history` to show.
            log.record_event(session, box.owner, now, "confirmed", via.channel, row.sender,
                             row.id, SENDER_ACTOR)
            confirmed = (row.id, row.sender, row.sender_key)
    _send(box, outgoing)
    if confirmed is None:
        return result
    pending_id, sender, sender_key = confirmed
    released = release_held(box, sender_key, last=pending_id, recheck=True, actor=SENDER_ACTOR)
    return Result(Outcome.CONFIRMED, f"{sender} confirmed; released {len(released)} "
                  f"message(s): {_some(released)}", pending_id)


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


def _refuse(box: Mailbox, sender: str, reason: str) -> Result:
    with transaction(box.engine) as session:
        log.record_event(session, box.owner, box.now(), "dropped", reason, sender)
    return Result(Outcome.DROPPED, f"confirmation refused ({reason}); dropped", reason=reason)


def _confirmation_refused(box: Mailbox, session: Session,
                          row: Pending) -> tuple[str, str] | None:
    """Why a valid token changes nothing now: (reason, detail), or None.

    The token acts once, for a message still held: a replay of a used confirm address must
    not whitelist again a sender the owner has removed since, nor release what was held
    since. And the lists are read again, since the owner may have blacklisted the sender
    after the challenge went out.
    """
    if row.status == pending.DELETED:
        return "message_gone", f"{row.id} was deleted by the owner"
    if row.status != pending.HELD:
        return "token_used", f"{row.id} is no longer held; the token was used"
    if _blacklisted_now(box, session, row.sender):
        return "confirm_blacklisted", f"{row.sender} is blacklisted now; nothing released"
    return None


def _blacklisted_now(box: Mailbox, session: Session, sender: str) -> bool:
    probe = policy.Incoming(sender=sender, sender_valid=True, recipient="", facts=Facts(),
                            owner=box.settings.owner_address)
    listing = _listing(box, session, probe)
    return listing is not None and listing.list_name == policy.BLACK


def _some(ids: Sequence[str], shown: int = 10) -> str:
    """A few ids for a one-line summary; a release of thousands stays one short line."""
    text = " ".join(ids[:shown])
    return f"{text} and {len(ids) - shown} more" if len(ids) > shown else text


def _rechallenge(box: Mailbox, session: Session, row: Pending, now: int,
                 keys: Sequence[bytes]) -> tuple[_Outgoing | None, str]:
    """An expired token for a message still held: a fresh challenge, within the limits, and
    never to a sender the owner has blacklisted since the first one."""
    if _blacklisted_now(box, session, row.sender):
        return None, "confirm token expired; sender now blacklisted, no fresh challenge; dropped"
    limited = _rate_limited(box, session, row.sender_key, now)
    if limited is not None:
        return None, f"confirm token expired; no fresh challenge ({limited}); dropped"
    data = pending.head(session, row.id, START_CAP)
    facts = parse_head(data[:HEAD_CAP])
    row.challenged_at = now
    session.flush()
    return (_prepare_challenge(box, session, row, data, facts, keys, now),
            f"confirm token expired; fresh challenge sent to {row.sender}; dropped")


def _whitelist(box: Mailbox, session: Session, sender: str, note: str, now: int) -> None:
    """Whitelist the sender a confirmation proved, as one exact entry: never read as owner
    syntax, so a sender `*@evil.test` whitelists that address and not the domain. The note
    ("confirmed", "released by owner") is also the entry's source, which history shows."""
    _list_sender(box, session, policy.WHITE, sender, note, now)


def _list_sender(box: Mailbox, session: Session, list_name: str, sender: str, source: str,
                 now: int) -> None:
    pattern = addresses.confirmed_pattern(sender, box.settings.subaddress_separators)
    if pattern is None:  # an odd sender is released but cannot be listed
        return
    lists.add(session, box.owner, list_name, pattern, source, now, source)


# Each batch of a release is its own short transaction: 6,000 messages released at once held
# the write lock for 15 s, and deliveries queued behind it gave up. A batch ends at
# RELEASE_BATCH messages or once it has held the lock RELEASE_SECONDS (Maildir writes are
# fsynced, so their cost depends on the disk).
RELEASE_BATCH = 100
# `pending delete --blacklist` finds a sender's held messages this many at a time.
DELETE_PAGE = 1000
RELEASE_SECONDS = 0.25


def release_held(box: Mailbox, sender_key: str, last: str | None = None,
                 recheck: bool = False, actor: str = OWNER_ACTOR) -> list[str]:
    """Release everything held from one sender, in batches; the ids released, oldest first.

    Each message is written into the Maildir before the batch that marks it released
    commits, so a crash between batches loses nothing: what is left is still held. `last`
    (the confirmed message) goes in the final batch, so until everything else is out its
    token still finds it held and a retry of the confirmation finishes the job. With
    `recheck`, a message whose own sender is blacklisted now stays held. `actor` is who
    released them (history): the sender's confirmation or the owner.
    """
    released: list[str] = []
    after: tuple[int, str] | None = None
    done = False
    while not done:
        with transaction(box.engine) as session:
            now = box.now()
            deadline = time.monotonic() + RELEASE_SECONDS
            pending.lock_owner(session, box.owner, now)
            rows = pending.held_batch(session, box.owner, sender_key, RELEASE_BATCH, after,
                                      exclude=last)
            done = len(rows) < RELEASE_BATCH
            if done and last is not None:
                row = pending.get(session, box.owner, last)
                if row is not None and row.status == pending.HELD:
                    rows.append(row)
            blacklisted: dict[str, bool] = {}
            for number, row in enumerate(rows):
                if number and time.monotonic() > deadline:
                    done = False  # the rest in the next transaction
                    break
                after = (row.received_at, row.id)
                if recheck:
                    if row.sender not in blacklisted:
                        blacklisted[row.sender] = _blacklisted_now(box, session, row.sender)
                    if blacklisted[row.sender]:
                        continue
                released += _release(box, session, [row], now, actor)
    return released


def _release(box: Mailbox, session: Session, rows: list[Pending], now: int,
             actor: str) -> list[str]:
    """Deliver each held message (Maildir or downstream LMTP), then mark it released (same
    transaction); `actor` is who released it: the sender's confirmation or the owner."""
    released = []
    for row in rows:
        if not pending.has_bytes(session, row.id):
            continue
        with closing(pending.chunks(session, row.id)) as pieces:
            onward.deliver(box.settings, row.sender, row.recipient, pieces,
                           acceptance.trace_prefix(row.mta, row.sender, row.recipient),
                           onward.release_name(box.owner, row.id, row.received_at))
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


def release(box: Mailbox, ids: Sequence[str], by: str = OWNER_ACTOR,
            whitelist: bool = False) -> list[str]:
    """Deliver the named held messages, all or none (NotFound names the first no longer
    held); `by` is who released them, as history shows it. With `whitelist`, also everything
    else held from their senders, whom it whitelists (note "released by owner"). The command
    line (`pending release`), the web pages and the digest's addresses all call this."""
    with transaction(box.engine) as session:
        now = box.now()
        rows = _held(session, box.owner, ids)
        released = _release(box, session, rows, now, by)
        if whitelist:
            for row in rows:
                _whitelist(box, session, row.sender, RELEASED_SOURCE, now)
        sender_keys = dict.fromkeys(row.sender_key for row in rows)
    if whitelist:
        for sender_key in sender_keys:
            released += release_held(box, sender_key, actor=by)
    return released


def release_senders(box: Mailbox, senders: Sequence[str], whitelist: bool) -> list[str]:
    """`pending release --sender S…`: everything held from those senders, in batches; with
    `whitelist`, each is whitelisted too (as `pending release ID --whitelist` does)."""
    released: list[str] = []
    for key in _sender_keys(box, senders):
        if whitelist:
            with transaction(box.engine) as session:
                first = pending.held_batch(session, box.owner, key, 1)
                if first:
                    _whitelist(box, session, first[0].sender, RELEASED_SOURCE, box.now())
        released += release_held(box, key)
    if not released:
        raise NotFound(f"nothing held from {', '.join(senders)}")
    return released


def _sender_keys(box: Mailbox, senders: Sequence[str]) -> list[str]:
    """The keys held messages are recorded under for these senders (tags and SRS removed)."""
    separators = box.settings.subaddress_separators
    return list(dict.fromkeys(addresses.unmangle(s, separators) for s in senders))


def delete_ids(box: Mailbox, ids: Sequence[str], blacklist: bool = False) -> list[str]:
    """`pending delete`: the bytes go; the row stays (status deleted) so that a later
    confirmation of it is recognised and dropped. With `blacklist`, everything held from
    those senders goes too and each is blacklisted (an exact entry; source "owner")."""
    with transaction(box.engine) as session:
        now = box.now()
        rows = _held(session, box.owner, ids)
        senders = list(dict.fromkeys(row.sender for row in rows))
        if blacklist:
            found = {row.id: row for row in rows}
            for key in dict.fromkeys(row.sender_key for row in rows):
                after: tuple[int, str] | None = None
                while batch := pending.held_batch(session, box.owner, key, DELETE_PAGE, after):
                    found.update((row.id, row) for row in batch)
                    after = (batch[-1].received_at, batch[-1].id)
            rows = sorted(found.values(), key=lambda row: (row.received_at, row.id))
        for row in rows:
            pending.finish(session, row, pending.DELETED, now)
            log.record_event(session, box.owner, now, "deleted", "", row.sender, row.id,
                             OWNER_ACTOR)
        if blacklist:
            for sender in senders:
                _list_sender(box, session, policy.BLACK, sender, lists.OWNER_SOURCE, now)
        return [row.id for row in rows]


# Release and accept by mail ---------------------------------------------------------------------

def owner_action(box: Mailbox, envelope: Envelope, word: str, token: str) -> Result:
    """Mail to a release or accept address of the owner's digest: exactly `pending release
    ID` (accept: `pending release ID --whitelist`), through `release`. Any sender may use
    it, since the token is the secret. It acts once; afterwards, and for anything wrong, it
    changes nothing, sends nothing and is dropped with the reason logged."""
    try:
        token_id, _ = tokens.parse(token)
    except BadToken as error:
        return _refuse(box, envelope.sender, f"token_{error.reason}")
    with transaction(box.engine, write=False) as session:
        now = box.now()
        row = pending.get(session, box.owner, token_id)
        reason = "token_unknown" if row is None else ""
        if row is not None:
            try:
                tokens.verify(box.keys(), word, box.owner, token, row.sender, row.received_at,
                              now, box.settings.hold_ttl)
            except BadToken as error:
                reason = f"token_{error.reason}"
        ids = [] if row is None or reason else [r.id for r in _acted_on(session, box.owner,
                                                                        word, row)]
    released: list[str] = []
    if ids:
        try:
            released = release(box, ids, whitelist=word == addresses.ACCEPT_WORD)
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
    oldest = pending.held_batch(session, owner, row.sender_key, 1)
    return oldest if oldest and oldest[0].received_at <= row.received_at else []


# The owner's lists ----------------------------------------------------------------------------

def list_add(box: Mailbox, list_name: str, texts: Sequence[str], note: str) -> list[tuple[str,
                                                                                         bool]]:
    """`whitelist add` / `blacklist add` and the web's add form: every pattern or none
    (UsageError names the first bad one); each with whether it was new."""
    patterns = [entries.parse_entry(text) for text in texts]
    with transaction(box.engine) as session:
        return [(p.text, lists.add(session, box.owner, list_name, p, note, box.now()))
                for p in patterns]


def list_remove(box: Mailbox, list_name: str, texts: Sequence[str]) -> tuple[list[str],
                                                                             list[str]]:
    """`whitelist remove` / `blacklist remove` and the web's remove buttons: (removed,
    not listed)."""
    patterns = [entries.parse_entry(text) for text in texts]
    removed, missing = [], []
    with transaction(box.engine) as session:
        for pattern in patterns:
            if lists.remove(session, box.owner, list_name, pattern, box.now()):
                removed.append(pattern.text)
            else:
                missing.append(pattern.text)
    return removed, missing
