"""The decision vocabulary service offers every front end, on a real database: `decide` (what
delivery would do, changing nothing), `release(ids, by=...)` and `delete_ids` acting on held
messages only, all or none, and what a hold stores of a message's envelope and head."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from crtool import acceptance, digest, expect, policy, service, tag_service, tokens
from crtool.addresses import OwnerAddress
from crtool.envelope import Envelope, RawMessage
from crtool.errors import NotFound, TemporaryFailure
from crtool.exits import Outcome
from crtool.message import Facts, parse_head
from crtool.outbox import SendmailOutbox
from crtool.store import lists, pending, sent
from crtool.store.engine import make_engine, transaction
from crtool.store.ledger import Ledger
from crtool.store.models import Event, Owner
from tests.integration.test_backscatter import Service
from tests.integration.test_backscatter import alice as _alice_fixture
from tests.support import confirm_address_of, message

alice = _alice_fixture
# SQLite's one write lock, busy timeout and read-only mode are what some tests are about.
only_sqlite = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
only_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def _incoming(sender: str, recipient: str = "alice@example.test") -> policy.Incoming:
    return policy.Incoming(sender=sender, sender_valid=True, recipient=recipient,
                           facts=Facts(headers={"from": [sender]}, has_header_block=True),
                           owner=OwnerAddress("alice@example.test"))


def _events(alice: Service) -> list[tuple[str, str, str]]:
    with transaction(alice.box.engine, write=False) as session:
        return [(e.kind, e.pending_id, e.actor) for e in session.scalars(
            select(Event).order_by(Event.id))]


def _hold(alice: Service, sender: str, subject: str = "Hello") -> str:
    result = alice.deliver(message(sender, subject), sender)
    assert result.outcome is Outcome.HELD, result
    return result.pending_id


def _status(alice: Service, pending_id: str) -> str:
    with transaction(alice.box.engine, write=False) as session:
        row = pending.get(session, alice.box.owner, pending_id)
        assert row is not None
        return row.status


def test_decide_answers_as_delivery_would_and_changes_nothing(alice: Service) -> None:
    box = alice.box
    first = service.decide(box, _incoming("bob@remote.test"))
    assert (first.verdict.action, first.verdict.reason, first.listing) == (
        policy.Action.CHALLENGE, "challenged", None)
    _hold(alice, "bob@remote.test")
    alice.challenges(1)
    # One challenge went to bob: the next would be over the per-sender limit.
    again = service.decide(box, _incoming("bob+tag@remote.test"))
    assert (again.verdict.action, again.verdict.reason) == (policy.Action.HOLD,
                                                            "sender_rate_limit")
    assert service.decide(box, _incoming("carol@remote.test")).verdict.action is \
        policy.Action.CHALLENGE
    service.list_add(box, policy.WHITE, ["@friends.test"], "")
    service.list_add(box, policy.BLACK, ["spam@friends.test"], "")
    white = service.decide(box, _incoming("ann@friends.test"))
    assert (white.verdict.action, white.listing) == (
        policy.Action.ACCEPT, policy.Listing(policy.WHITE, "@friends.test"))
    black = service.decide(box, _incoming("spam@friends.test"))
    assert (black.verdict.action, black.listing) == (
        policy.Action.BLACKLISTED, policy.Listing(policy.BLACK, "spam@friends.test"))
    # An action address is acted on by its token whoever sends it; the listing is still told.
    confirm = service.decide(box, _incoming("ann@friends.test", "alice-confirm-x@example.test"))
    assert (confirm.verdict.action, confirm.listing) == (policy.Action.CONFIRM, white.listing)
    assert service.decide(box, _incoming("")).verdict.reason == "null_sender"
    assert [kind for kind, _, _ in _events(alice) if kind != "listed"] == ["held", "challenged"]


def test_the_global_limit_holds_a_new_sender_too(alice: Service) -> None:
    box = alice.box
    settings = box.settings
    limited = replace(box, settings=replace(settings, challenge_global_limit=1))
    _hold(alice, "bob@remote.test")
    alice.challenges(1)
    decision = service.decide(limited, _incoming("carol@remote.test"))
    assert (decision.verdict.action, decision.verdict.reason) == (policy.Action.HOLD,
                                                                  "global_rate_limit")


def test_release_records_who_released(alice: Service) -> None:
    first = _hold(alice, "bob@remote.test")
    second = _hold(alice, "carol@remote.test")
    alice.challenges(2)
    assert service.release(alice.box, [first], by=service.SENDER_ACTOR) == [first]
    assert service.release(alice.box, [second]) == [second]
    released = [(pid, actor) for kind, pid, actor in _events(alice) if kind == "released"]
    assert released == [(first, "sender"), (second, "owner")]
    assert len(alice.files.maildir_messages()) == 2


def test_release_with_whitelist_releases_the_rest_by_the_same_actor(alice: Service) -> None:
    first = _hold(alice, "bob@remote.test", "one")
    second = _hold(alice, "bob+x@remote.test", "two")
    alice.challenges(1)
    assert service.release(alice.box, [first], by="sender", whitelist=True) == [first, second]
    assert [actor for kind, _, actor in _events(alice) if kind == "released"] == [
        "sender", "sender"]
    decision = service.decide(alice.box, _incoming("bob@remote.test"))
    assert decision.verdict.action is policy.Action.ACCEPT


def test_release_and_delete_act_on_held_messages_only_all_or_none(alice: Service) -> None:
    gone = _hold(alice, "bob@remote.test", "one")
    kept = _hold(alice, "carol@remote.test", "two")
    other = _hold(alice, "dave@remote.test", "three")
    alice.challenges(3)
    assert service.release(alice.box, [gone]) == [gone]
    for act in (lambda ids: service.release(alice.box, ids),
                lambda ids: service.delete_ids(alice.box, ids)):
        with pytest.raises(NotFound, match=f"no held message {gone}"):
            act([kept, gone])
        assert _status(alice, kept) == pending.HELD  # nothing of the batch was done
    assert service.delete_ids(alice.box, [kept]) == [kept]
    with pytest.raises(NotFound, match=f"no held message {kept}"):
        service.release(alice.box, [kept])
    with pytest.raises(NotFound, match="no held message nosuchid"):
        service.delete_ids(alice.box, ["nosuchid"])
    assert (_status(alice, gone), _status(alice, kept), _status(alice, other)) == (
        pending.RELEASED, pending.DELETED, pending.HELD)
    assert len(alice.files.maildir_messages()) == 1


def test_a_hold_stores_at_most_320_characters_of_the_envelope_and_200_of_the_head(
        alice: Service) -> None:
    sender = "b" * 400 + "@remote.test"
    recipient = "alice-" + "r" * 400 + "@example.test"
    result = alice.deliver(message(sender, "s" * 400), sender, recipient)
    assert (result.outcome, result.reason) == (Outcome.HELD, "invalid_sender")
    with transaction(alice.box.engine, write=False) as session:
        row = pending.get(session, alice.box.owner, result.pending_id)
        assert row is not None
        assert (row.sender, row.sender_key) == (sender[:320], sender[:320])
        assert row.recipient == recipient[:320]
        assert (row.subject, row.from_header) == ("s" * 200, sender[:200])
        assert row.message_id == "<m1@remote.test>"


def test_confirm_makes_the_owner_row_it_locks(alice: Service) -> None:
    """The first writing transaction of an owner makes the row every later one locks
    (PostgreSQL serialises an owner's rate-limit counts on it), a confirmation included."""
    result = service.confirm(alice.box, "a" * 24, service.Via("web"))
    assert (result.outcome, result.reason) == (Outcome.DROPPED, "token_unknown")
    with transaction(alice.box.engine, write=False) as session:
        assert session.scalar(select(func.count()).select_from(Owner)) == 1


# Mail to the digest's release and accept addresses (owner_action) ---------------------------

def _owner_token(alice: Service, word: str, pending_id: str) -> str:
    with transaction(alice.box.engine, write=False) as session:
        row = pending.get(session, alice.box.owner, pending_id)
        assert row is not None
        return tokens.issue(alice.box.keys(), word, alice.box.owner, row.id, row.sender,
                            row.received_at)


def _to_action(alice: Service, word: str, token: str,
               sender: str = "anyone@elsewhere.test") -> service.Result:
    address = f"alice-{word}-{token}@example.test"
    return alice.deliver(message(sender, "release", to=address), sender, address)


def test_a_release_address_releases_its_message_once(alice: Service) -> None:
    first = _hold(alice, "bob@remote.test", "one")
    alice.clock.now += 10
    second = _hold(alice, "bob@remote.test", "two")
    alice.challenges(1)
    token = _owner_token(alice, "release", first)
    result = _to_action(alice, "release", token)
    assert (result.outcome, result.pending_id) == (Outcome.CONFIRMED, first)
    assert result.detail == f"release by the owner: released 1 message(s): {first}"
    assert (_status(alice, first), _status(alice, second)) == (pending.RELEASED, pending.HELD)
    again = _to_action(alice, "release", token)
    assert (again.outcome, again.reason, again.pending_id) == (Outcome.DROPPED, "token_used",
                                                               first)
    assert again.detail == "release address: token_used; dropped"
    assert _events(alice)[-1] == ("dropped", first, "owner")
    assert service.decide(alice.box, _incoming("bob@remote.test")).verdict.action is not \
        policy.Action.ACCEPT


def test_an_accept_address_releases_the_sender_and_whitelists_him(alice: Service) -> None:
    first = _hold(alice, "bob@remote.test", "one")
    alice.clock.now += 10
    second = _hold(alice, "bob+x@remote.test", "two")
    alice.challenges(1)
    token = _owner_token(alice, "accept", second)
    result = _to_action(alice, "accept", token)
    # It acts on the sender's oldest held message, and the rest follow.
    assert (result.outcome, result.pending_id) == (Outcome.CONFIRMED, first)
    assert result.detail == f"accept by the owner: released 2 message(s): {first} {second}"
    assert (_status(alice, first), _status(alice, second)) == (pending.RELEASED,
                                                               pending.RELEASED)
    assert service.decide(alice.box, _incoming("bob@remote.test")).verdict.action is \
        policy.Action.ACCEPT
    assert _to_action(alice, "accept", token).reason == "token_used"


def test_an_accept_address_of_an_older_message_is_used_once_it_is_released(
        alice: Service) -> None:
    first = _hold(alice, "bob@remote.test", "one")
    alice.clock.now += 10
    second = _hold(alice, "bob@remote.test", "two")
    alice.challenges(1)
    token = _owner_token(alice, "accept", first)
    service.release(alice.box, [first])
    result = _to_action(alice, "accept", token)
    assert (result.outcome, result.reason) == (Outcome.DROPPED, "token_used")
    assert _status(alice, second) == pending.HELD


def test_a_bad_action_token_changes_nothing(alice: Service) -> None:
    held = _hold(alice, "bob@remote.test")
    alice.challenges(1)
    good = _owner_token(alice, "release", held)
    forged = good[:8] + ("a" if good[8] != "a" else "b") + good[9:]
    unknown = "a" * 24
    for token, reason in (("short", "token_malformed"), (forged, "token_forged"),
                          (unknown, "token_unknown"),
                          (_owner_token(alice, "accept", held), "token_forged")):
        result = _to_action(alice, "release", token)
        assert (result.outcome, result.reason) == (Outcome.DROPPED, reason), token
    assert _status(alice, held) == pending.HELD
    alice.clock.now += alice.box.settings.hold_ttl + 301
    expired = _to_action(alice, "release", good)
    assert (expired.outcome, expired.reason, expired.pending_id) == (
        Outcome.DROPPED, "token_expired", held)
    assert [e for e in _events(alice) if e[0] == "released"] == []


# Confirmations ---------------------------------------------------------------------------------

def _confirm_token(alice: Service) -> str:
    [challenge] = alice.challenges(1)
    return confirm_address_of(challenge).split("-confirm-")[1].split("@")[0]


def test_preview_tells_the_page_what_a_token_names_and_changes_nothing(alice: Service) -> None:
    held = _hold(alice, "bob@remote.test")
    token = _confirm_token(alice)
    ready = service.preview(alice.box, token)
    assert ready.state == "ready" and ready.row is not None and ready.row.id == held
    assert service.preview(alice.box, token.upper()).state == "ready"
    for bad in ("", "short", "a" * 24, token[:-1] + ("a" if token[-1] != "a" else "b")):
        assert service.preview(alice.box, bad) == service.Preview("invalid")
    alice.clock.now += alice.box.settings.confirm_ttl + 301
    expired = service.preview(alice.box, token)
    assert expired.state == "expired" and expired.row is not None
    alice.clock.now -= alice.box.settings.confirm_ttl + 301
    assert _status(alice, held) == pending.HELD
    assert service.confirm(alice.box, token, service.Via.web()).outcome is Outcome.CONFIRMED
    used = service.preview(alice.box, token)
    assert used.state == "used" and used.row is not None
    alice.clock.now += alice.box.settings.confirm_ttl + 301
    assert service.preview(alice.box, token).state == "invalid"  # expired and not held


def test_an_automated_reply_confirms_nothing(alice: Service) -> None:
    held = _hold(alice, "bob@remote.test")
    token = _confirm_token(alice)
    address = f"alice-confirm-{token}@example.test"
    reply = message("bob@remote.test", "Re", headers={"Auto-Submitted": "auto-replied"},
                    to=address)
    result = alice.deliver(reply, "bob@remote.test", address)
    assert (result.outcome, result.reason) == (Outcome.DROPPED, "confirm_automated")
    assert result.detail == "confirmation refused (confirm_automated); dropped"
    assert _events(alice)[-1] == ("dropped", "", "")
    with transaction(alice.box.engine, write=False) as session:
        last = session.scalars(select(Event).order_by(Event.id.desc())).first()
        assert last is not None
        assert (last.reason, last.sender) == ("confirm_automated", "bob@remote.test")
    assert _status(alice, held) == pending.HELD


# The owner's commands ---------------------------------------------------------------------------

def test_delete_with_blacklist_takes_everything_from_the_sender(alice: Service) -> None:
    first = _hold(alice, "bob@remote.test", "one")
    alice.clock.now += 10
    second = _hold(alice, "bob+news@remote.test", "two")
    other = _hold(alice, "carol@remote.test", "three")
    alice.challenges(2)
    # Without --blacklist only the named message goes, and nobody is listed.
    assert service.delete_ids(alice.box, [other]) == [other]
    assert service.decide(alice.box, _incoming("carol@remote.test")).listing is None
    assert service.delete_ids(alice.box, [second], blacklist=True) == [first, second]
    assert (_status(alice, first), _status(alice, second)) == (pending.DELETED,
                                                               pending.DELETED)
    deleted = [(pid, actor) for kind, pid, actor in _events(alice) if kind == "deleted"]
    assert deleted == [(other, "owner"), (first, "owner"), (second, "owner")]
    # The person behind the tag is listed, exactly: not his domain.
    for sender in ("bob+news@remote.test", "bob@remote.test"):
        decision = service.decide(alice.box, _incoming(sender))
        assert decision.listing == policy.Listing(policy.BLACK, "bob@remote.test")
    assert service.decide(alice.box, _incoming("ann@remote.test")).listing is None


def test_release_by_sender_releases_everything_held_from_them(alice: Service) -> None:
    first = _hold(alice, "bob@remote.test", "one")
    alice.clock.now += 10
    second = _hold(alice, "bob+x@remote.test", "two")
    other = _hold(alice, "carol@remote.test", "three")
    alice.challenges(2)
    assert service.release_senders(alice.box, ["BOB+y@remote.test"], whitelist=False) == [
        first, second]
    assert service.decide(alice.box, _incoming("bob@remote.test")).listing is None
    with pytest.raises(NotFound, match="nothing held from bob@remote.test, x@y.test"):
        service.release_senders(alice.box, ["bob@remote.test", "x@y.test"], whitelist=True)
    assert service.release_senders(alice.box, ["carol@remote.test"], whitelist=True) == [other]
    assert service.decide(alice.box, _incoming("carol@remote.test")).listing == \
        policy.Listing(policy.WHITE, "carol@remote.test")


def test_list_add_and_remove_say_what_changed(alice: Service) -> None:
    box = alice.box
    assert service.list_add(box, policy.WHITE, ["bob@remote.test", "@example.org"], "n") == [
        ("bob@remote.test", True), ("@example.org", True)]
    assert service.list_add(box, policy.WHITE, ["BOB@remote.test"], "") == [
        ("bob@remote.test", False)]
    assert service.list_remove(box, policy.WHITE, ["bob@remote.test", "x@y.test"]) == (
        ["bob@remote.test"], ["x@y.test"])
    assert service.list_remove(box, policy.BLACK, ["@example.org"]) == ([], ["@example.org"])
    unlisted = _last_event(alice)
    assert (unlisted.kind, unlisted.at) == ("unlisted", alice.clock.now)
    with transaction(box.engine, write=False) as session:
        entry = lists.entry(session, box.owner, policy.WHITE, "@example.org")
        assert entry is not None and entry.note == "n"
    assert service.decide(box, _incoming("z@example.org")).listing == policy.Listing(
        policy.WHITE, "@example.org")


def test_open_mailbox_uses_the_settings_or_what_it_is_given(alice: Service) -> None:
    settings = alice.box.settings
    box = service.open_mailbox(settings)
    try:
        assert str(box.engine.url) == settings.database_url
        assert isinstance(box.outbox, SendmailOutbox)
        assert (box.outbox.command, box.outbox.timeout) == (settings.sendmail,
                                                            settings.sendmail_timeout)
        assert box.keys() == alice.box.keys()
        assert abs(box.now() - time.time()) < 5
    finally:
        box.engine.dispose()
    given = service.open_mailbox(settings, alice.box.engine, lambda: [b"k"], lambda: 7.5)
    assert (given.engine, given.keys(), given.now(), given.owner) == (
        alice.box.engine, [b"k"], 7, "alice@example.test")


# A verdict that changed under the write lock ------------------------------------------------------

def test_a_list_changed_before_the_lock_is_obeyed(alice: Service) -> None:
    """Between the first look and the hold's write lock the owner may list the sender: the
    hold reads the lists again and carries out the new verdict instead."""
    box = replace(alice.box, settings=replace(alice.box.settings, delivery="maildir"))
    for list_name, outcome, kind in ((policy.WHITE, Outcome.DELIVERED, "delivered"),
                                     (policy.BLACK, Outcome.DROPPED, "dropped")):
        sender = f"{kind}@remote.test"
        envelope = Envelope(sender, "alice@example.test")
        raw = RawMessage.from_bytes(message(sender))
        facts = parse_head(raw.head)
        incoming = acceptance.incoming(box.settings, envelope, facts)
        service.list_add(box, list_name, [sender], "")
        result = service._hold(box, envelope, raw, facts, incoming)
        assert result.outcome is outcome
        assert _events(alice)[-1][0] == kind
    assert alice.files.outbox.drain(0) == []
    [delivered] = alice.files.maildir_messages()
    assert delivered.endswith(message("delivered@remote.test"))


# Challenges sendmail could not take --------------------------------------------------------------

def _last_event(alice: Service) -> Event:
    with transaction(alice.box.engine, write=False) as session:
        last = session.scalars(select(Event).order_by(Event.id.desc())).first()
        assert last is not None
        session.expunge(last)
        return last


def test_a_challenge_sendmail_refused_is_sent_on_the_retry_then_given_up(
        alice: Service) -> None:
    alice.box = replace(alice.box, settings=replace(alice.box.settings,
                                                    challenge_excerpt_lines=2))
    failing = replace(alice.box, outbox=SendmailOutbox("/bin/false", 5))
    raw = message("bob@remote.test", body="First line of the body\nsecond\n")
    with pytest.raises(TemporaryFailure, match="exited 1"):
        service.deliver(failing, Envelope("bob@remote.test", "alice@example.test"),
                        RawMessage.from_bytes(raw))
    # The MTA's retry finds the message held and sends the challenge recorded for it.
    retry = alice.deliver(raw, "bob@remote.test")
    assert (retry.outcome, retry.reason) == (Outcome.HELD, "challenged")
    assert retry.detail == f"already held as {retry.pending_id}"
    [challenge] = alice.challenges(1)
    assert "First line of the body" in challenge.as_string()
    assert [k for k, _, _ in _events(alice)] == ["held", "challenged", "challenge_retry"]
    retried = _last_event(alice)
    assert (retried.reason, retried.sender, retried.pending_id) == (
        "", "bob@remote.test", retry.pending_id)
    # Once sent, a further retry sends nothing again.
    assert alice.deliver(raw, "bob@remote.test").detail == f"already held as {retry.pending_id}"
    assert alice.files.outbox.drain(0) == []


def test_a_challenge_is_tried_three_times_then_the_message_stays_held(alice: Service) -> None:
    failing = replace(alice.box, outbox=SendmailOutbox("/bin/false", 5))
    raw = message("bob@remote.test")
    envelope = Envelope("bob@remote.test", "alice@example.test")
    for _ in range(policy.CHALLENGE_TRIES):
        with pytest.raises(TemporaryFailure):
            service.deliver(failing, envelope, RawMessage.from_bytes(raw))
    result = service.deliver(failing, envelope, RawMessage.from_bytes(raw))
    assert (result.outcome, result.reason) == (Outcome.HELD, "challenge_failed")
    assert result.detail == (f"already held as {result.pending_id}; challenge not sent after "
                             f"{policy.CHALLENGE_TRIES} tries")
    assert [k for k, _, _ in _events(alice)] == [
        "held", "challenged", "challenge_retry", "challenge_retry", "challenge_failed"]
    failed = _last_event(alice)
    assert (failed.owner, failed.at, failed.reason, failed.sender, failed.pending_id) == (
        "alice@example.test", alice.clock.now, "challenge_failed", "bob@remote.test",
        result.pending_id)
    assert _status(alice, result.pending_id) == pending.HELD


def test_a_release_address_names_its_own_message_not_the_oldest(alice: Service) -> None:
    first = _hold(alice, "bob@remote.test", "one")
    alice.clock.now += 10
    second = _hold(alice, "bob@remote.test", "two")
    alice.challenges(1)
    result = _to_action(alice, "release", _owner_token(alice, "release", second))
    assert (result.outcome, result.pending_id) == (Outcome.CONFIRMED, second)
    assert (_status(alice, first), _status(alice, second)) == (pending.HELD, pending.RELEASED)
    unknown = _to_action(alice, "release", "b" * 24)
    assert (unknown.reason, unknown.pending_id) == ("token_unknown", "")


def test_an_accept_address_of_the_only_held_message_acts(alice: Service) -> None:
    only = _hold(alice, "bob@remote.test")
    alice.challenges(1)
    result = _to_action(alice, "accept", _owner_token(alice, "accept", only))
    assert (result.outcome, result.pending_id) == (Outcome.CONFIRMED, only)


def test_an_expired_confirmation_gets_one_fresh_challenge_within_the_limits(
        alice: Service) -> None:
    alice.box = replace(alice.box, settings=replace(
        alice.box.settings, challenge_excerpt_lines=1, challenge_window=3600))
    held = _hold(alice, "bob@remote.test")
    token = _confirm_token(alice)
    alice.clock.now += alice.box.settings.confirm_ttl + 301
    # The window is over, so one more challenge is allowed; it quotes the held message.
    first = service.confirm(alice.box, token, service.Via.web())
    assert (first.outcome, first.reason, first.pending_id) == (Outcome.DROPPED,
                                                               "token_expired", held)
    assert first.detail == ("confirm token expired; fresh challenge sent to bob@remote.test; "
                            "dropped")
    [fresh] = alice.challenges(1)
    assert "Hi Alice" in fresh.as_string()
    # The fresh challenge's time is the row's: the old token no longer verifies at all.
    assert service.confirm(alice.box, token, service.Via.web()).reason == "token_forged"
    new_token = confirm_address_of(fresh).split("-confirm-")[1].split("@")[0]
    alice.clock.now += alice.box.settings.confirm_ttl + 301
    strict = replace(alice.box, settings=replace(alice.box.settings, challenge_limit=0))
    limited = service.confirm(strict, new_token, service.Via.web())
    assert limited.detail == ("confirm token expired; no fresh challenge (sender_rate_limit); "
                              "dropped")
    service.list_add(alice.box, policy.BLACK, ["bob@remote.test"], "")
    blacklisted = service.confirm(alice.box, new_token, service.Via.web())
    assert blacklisted.detail == ("confirm token expired; sender now blacklisted, no fresh "
                                  "challenge; dropped")
    assert alice.files.outbox.drain(0) == []


def test_release_by_several_senders_releases_each(alice: Service) -> None:
    first = _hold(alice, "bob@remote.test", "one")
    second = _hold(alice, "carol@remote.test", "two")
    alice.challenges(2)
    assert sorted(service.release_senders(alice.box, ["bob@remote.test", "carol@remote.test"],
                                          whitelist=True)) == sorted([first, second])


def test_a_deleted_message_is_stamped_and_logged_plainly(alice: Service) -> None:
    held = _hold(alice, "bob@remote.test")
    alice.challenges(1)
    alice.clock.now += 60
    service.delete_ids(alice.box, [held])
    deleted = _last_event(alice)
    assert (deleted.kind, deleted.reason, deleted.at) == ("deleted", "", alice.clock.now)
    with transaction(alice.box.engine, write=False) as session:
        row = pending.get(session, alice.box.owner, held)
        assert row is not None and row.released_at == alice.clock.now


def test_delete_with_blacklist_pages_through_everything_held_from_the_sender(
        alice: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """More held than one page: every page is taken, none twice, oldest first."""
    monkeypatch.setattr(service, "DELETE_PAGE", 2)
    held = []
    for n in range(5):
        held.append(_hold(alice, "bob@remote.test", f"number {n}"))
        alice.clock.now += 1
    alice.challenges(1)
    assert service.delete_ids(alice.box, [held[2]], blacklist=True) == held
    assert {_status(alice, pid) for pid in held} == {pending.DELETED}


def test_release_by_sender_removes_the_owners_own_subaddress_separators(
        alice: Service) -> None:
    alice.box = replace(alice.box, settings=replace(alice.box.settings,
                                                    subaddress_separators="-"))
    held = _hold(alice, "bob-news@remote.test")
    alice.challenges(1)
    assert service.release_senders(alice.box, ["bob-other@remote.test"], whitelist=True) == [
        held]
    assert service.decide(alice.box, _incoming("bob-news@remote.test")).listing == \
        policy.Listing(policy.WHITE, "bob@remote.test")


def test_the_confirmed_event_says_how_the_sender_confirmed(alice: Service) -> None:
    _hold(alice, "bob@remote.test")
    by_web = service.confirm(alice.box, _confirm_token(alice), service.Via.web())
    assert by_web.outcome is Outcome.CONFIRMED
    _hold(alice, "carol@remote.test")
    [challenge] = alice.challenges(1)
    by_mail = alice.deliver(message("carol@remote.test", "Re: confirm"), "carol@remote.test",
                            confirm_address_of(challenge))
    assert by_mail.outcome is Outcome.CONFIRMED
    with transaction(alice.box.engine, write=False) as session:
        said = [(e.sender, e.reason) for e in session.scalars(
            select(Event).where(Event.kind == "confirmed").order_by(Event.id))]
    assert said == [("bob@remote.test", "web"), ("carol@remote.test", "mail")]


def test_a_released_message_gets_no_challenge_left_unsent_on_the_mtas_retry(
        alice: Service) -> None:
    """sendmail failed, so the MTA will deliver again; the owner released it meanwhile."""
    failing = replace(alice.box, outbox=SendmailOutbox("/bin/false", 5))
    raw = message("bob@remote.test")
    with pytest.raises(TemporaryFailure):
        service.deliver(failing, Envelope("bob@remote.test", "alice@example.test"),
                        RawMessage.from_bytes(raw))
    with transaction(alice.box.engine, write=False) as session:
        [held] = session.scalars(select(pending.Pending.id)).all()
    assert service.release(alice.box, [held]) == [held]
    retry = alice.deliver(raw, "bob@remote.test")
    assert (retry.outcome, retry.detail) == (Outcome.HELD, f"already held as {held}")
    assert alice.files.outbox.drain(0) == []
    assert [k for k, _, _ in _events(alice)] == ["held", "challenged", "released"]


@only_sqlite
def test_open_mailbox_waits_for_a_writer_as_long_as_the_settings_say(alice: Service) -> None:
    settings = replace(alice.box.settings, database_timeout=2.5)
    box = service.open_mailbox(settings)
    try:
        with box.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2500
    finally:
        box.engine.dispose()


@contextmanager
def _another_process_writing(alice: Service) -> Iterator[service.Mailbox]:
    """alice's mailbox with a 0.2 s busy timeout, while another connection holds SQLite's
    write lock: what needs the lock fails fast, what only reads goes on."""
    impatient = make_engine(alice.box.settings.database_url, timeout=0.2)
    writer = make_engine(alice.box.settings.database_url)
    try:
        with writer.connect() as other:
            other.exec_driver_sql("UPDATE owners SET created_at = created_at")
            yield replace(alice.box, engine=impatient)
            other.rollback()
    finally:
        impatient.dispose()
        writer.dispose()


@only_sqlite
def test_a_preview_is_not_kept_waiting_by_a_writer(alice: Service) -> None:
    """Link scanners and the sender's page read while deliveries write: a preview takes no
    write lock, so another process holding SQLite's does not stall it."""
    held = _hold(alice, "bob@remote.test")
    token = _confirm_token(alice)
    with _another_process_writing(alice) as box:
        seen = service.preview(box, token)
        decided = service.decide(box, _incoming("carol@remote.test"))
    assert (seen.state, seen.row.id if seen.row else None) == ("ready", held)
    assert decided.verdict.action is policy.Action.CHALLENGE


def test_decide_reads_a_tagged_address_as_delivery_does_and_records_nothing(
        alice: Service) -> None:
    address, _ = tag_service.sender(alice.box, "bob@remote.test", False)
    for sender, action in (("bob@remote.test", policy.Action.ACCEPT),
                           ("carol@remote.test", policy.Action.CHALLENGE)):
        decision = service.decide(alice.box, _incoming(sender, address))
        assert decision.verdict.action is action, (sender, decision)
    assert _events(alice) == []


def test_decide_counts_challenges_to_the_person_behind_the_owners_separators(
        alice: Service) -> None:
    alice.box = replace(alice.box, settings=replace(alice.box.settings,
                                                    subaddress_separators="-"))
    _hold(alice, "bob@remote.test")
    alice.challenges(1)
    decision = service.decide(alice.box, _incoming("bob-lists@remote.test"))
    assert (decision.verdict.action, decision.verdict.reason) == (policy.Action.HOLD,
                                                                  "sender_rate_limit")


def test_an_expired_confirmation_counts_the_challenges_already_sent_to_its_sender(
        alice: Service) -> None:
    alice.box = replace(alice.box, settings=replace(
        alice.box.settings, challenge_limit=1, challenge_window=30 * 86400))
    held = _hold(alice, "bob@remote.test")
    token = _confirm_token(alice)
    alice.clock.now += alice.box.settings.confirm_ttl + 301
    result = service.confirm(alice.box, token, service.Via.web())
    assert (result.reason, result.pending_id) == ("token_expired", held)
    assert result.detail == ("confirm token expired; no fresh challenge (sender_rate_limit); "
                             "dropped")
    assert alice.files.outbox.drain(0) == []


def test_a_malformed_action_token_is_dropped_with_its_sender_logged(alice: Service) -> None:
    result = _to_action(alice, "release", "not-a-token")
    assert (result.outcome, result.reason) == (Outcome.DROPPED, "token_malformed")
    last = _last_event(alice)
    assert (last.kind, last.reason, last.sender) == ("dropped", "token_malformed",
                                                     "anyone@elsewhere.test")


def test_a_delivery_is_logged_with_its_sender_and_the_entry_that_let_it_in(
        alice: Service) -> None:
    service.list_add(alice.box, policy.WHITE, ["@friends.test"], "")
    result = alice.deliver(message("ann@friends.test"), "ann@friends.test")
    assert (result.outcome, result.detail.split(";")[0]) == (Outcome.CONTINUE,
                                                              "whitelisted (@friends.test)")
    last = _last_event(alice)
    assert (last.kind, last.reason, last.sender, last.at) == (
        "delivered", "@friends.test", "ann@friends.test", alice.clock.now)
    assert "not logged" not in result.detail


def test_a_reply_to_the_owners_mail_is_delivered_and_whitelists_its_sender(
        alice: Service) -> None:
    with transaction(alice.box.engine) as session:
        sent.record(session, alice.box.owner, ["<out.1@example.test>"], alice.clock.now)
    reply = message("bob@remote.test", "Re: lunch",
                    headers={"In-Reply-To": "<out.1@example.test>"})
    result = alice.deliver(reply, "bob@remote.test")
    assert (result.outcome, result.detail.split(";")[0]) == (Outcome.CONTINUE,
                                                              "whitelisted (reply)")
    with transaction(alice.box.engine, write=False) as session:
        logged = [(e.kind, e.reason, e.sender) for e in session.scalars(
            select(Event).order_by(Event.id))]
    assert logged == [("delivered", "reply", "bob@remote.test"),
                      ("listed", "white", "bob@remote.test")]
    with transaction(alice.box.engine, write=False) as session:
        entry = lists.entry(session, alice.box.owner, policy.WHITE, "bob@remote.test")
        assert entry is not None and (entry.source, entry.created_at) == ("reply",
                                                                          alice.clock.now)
    # A delivery for another reason whitelists nobody.
    service.list_add(alice.box, policy.WHITE, ["@friends.test"], "")
    alice.deliver(message("ann@friends.test"), "ann@friends.test")
    assert service.decide(alice.box, _incoming("ann@friends.test")).listing == \
        policy.Listing(policy.WHITE, "@friends.test")


@only_sqlite
def test_a_delivered_message_whose_log_cannot_be_written_says_so(alice: Service) -> None:
    service.list_add(alice.box, policy.WHITE, ["ann@friends.test"], "")
    read_only = make_engine(alice.box.settings.database_url, read_only=True)
    try:
        box = replace(alice.box, ledger=Ledger(read_only))
        result = service.deliver(box, Envelope("ann@friends.test", "alice@example.test"),
                                 RawMessage.from_bytes(message("ann@friends.test")))
    finally:
        read_only.dispose()
    assert result.outcome is Outcome.CONTINUE
    assert result.detail == "whitelisted (ann@friends.test); not logged (TemporaryFailure)"


def test_a_confirmation_releasing_many_names_ten_and_counts_the_rest(alice: Service) -> None:
    def held_then_confirmed(sender: str, count: int) -> tuple[list[str], str]:
        held = []
        for n in range(count):
            held.append(_hold(alice, sender, f"number {n}"))
            alice.clock.now += 1
        result = service.confirm(alice.box, _confirm_token(alice), service.Via.web())
        # The confirmed message (the first, which was challenged) is released last.
        return held[1:] + held[:1], result.detail

    released, detail = held_then_confirmed("bob@remote.test", 12)
    assert detail == (f"bob@remote.test confirmed; released 12 message(s): "
                      f"{' '.join(released[:10])} and 2 more")
    released, detail = held_then_confirmed("dave@remote.test", 10)
    assert detail == f"dave@remote.test confirmed; released 10 message(s): {' '.join(released)}"


def test_the_owner_releases_a_sender_he_has_blacklisted_since_when_he_asks_to(
        alice: Service) -> None:
    """Only a confirmation rechecks the blacklist; the owner's own release is his word."""
    held = _hold(alice, "bob@remote.test")
    alice.challenges(1)
    service.list_add(alice.box, policy.BLACK, ["bob@remote.test"], "")
    assert service.release_senders(alice.box, ["bob@remote.test"], whitelist=False) == [held]
    assert _status(alice, held) == pending.RELEASED


def test_a_blacklisted_sender_is_dropped_or_bounced_as_the_owner_chose(alice: Service) -> None:
    service.list_add(alice.box, policy.BLACK, ["@spam.test"], "")
    dropped = alice.deliver(message("ann@spam.test"), "ann@spam.test")
    assert dropped == service.Result(Outcome.DROPPED, "blacklisted (@spam.test); dropped",
                                     reason="blacklisted")
    last = _last_event(alice)
    assert (last.kind, last.reason, last.sender, last.at, last.owner) == (
        "dropped", "blacklisted", "ann@spam.test", alice.clock.now, "alice@example.test")
    alice.clock.now += 5
    bounced = alice.deliver(message("bea@spam.test"), "bea@spam.test",
                            blacklist_action="bounce")
    assert bounced == service.Result(Outcome.BOUNCED, "sender is not accepted by the recipient",
                                     reason="@spam.test")
    last = _last_event(alice)
    assert (last.kind, last.reason, last.sender, last.at) == (
        "bounced", "blacklisted", "bea@spam.test", alice.clock.now)
    assert alice.files.outbox.drain(0) == []


def test_mail_to_a_revoked_keyword_is_dropped_never_bounced(alice: Service) -> None:
    address, _ = tag_service.keyword(alice.box, "shop")
    tag_service.revoke_keyword(alice.box, "shop")
    alice.clock.now += 5
    result = alice.deliver(message("news@shop.test", to=address), "news@shop.test", address,
                           blacklist_action="bounce")
    assert result == service.Result(Outcome.DROPPED, "keyword_revoked; dropped",
                                    reason="keyword_revoked")
    last = _last_event(alice)
    assert (last.kind, last.reason, last.sender, last.at, last.owner) == (
        "dropped", "keyword_revoked", "news@shop.test", alice.clock.now, "alice@example.test")


def test_a_confirmation_used_or_of_a_sender_blacklisted_since_changes_nothing(
        alice: Service) -> None:
    held = _hold(alice, "bob@remote.test")
    token = _confirm_token(alice)
    assert service.confirm(alice.box, token, service.Via.web()).outcome is Outcome.CONFIRMED
    again = service.confirm(alice.box, token, service.Via.web())
    assert again == service.Result(
        Outcome.DROPPED, f"{held} is no longer held; the token was used (token_used); dropped",
        held, "token_used")
    other = _hold(alice, "carol@remote.test")
    token = _confirm_token(alice)
    service.list_add(alice.box, policy.BLACK, ["carol@remote.test"], "")
    refused = service.confirm(alice.box, token, service.Via.web())
    assert refused == service.Result(
        Outcome.DROPPED, "carol@remote.test is blacklisted now; nothing released "
        "(confirm_blacklisted); dropped", other, "confirm_blacklisted")
    last = _last_event(alice)
    assert (last.kind, last.reason, last.sender, last.pending_id) == (
        "dropped", "confirm_blacklisted", "carol@remote.test", other)
    assert _status(alice, other) == pending.HELD


def _confirm_by_mail(alice: Service, token: str, sender: str = "bob@remote.test",
                     ) -> service.Result:
    address = f"alice-confirm-{token}@example.test"
    return alice.deliver(message(sender, "Re: confirm", to=address), sender, address)


def _dropped(alice: Service) -> tuple[str, str, str, str, int, str]:
    last = _last_event(alice)
    return last.kind, last.reason, last.sender, last.pending_id, last.at, last.owner


def test_each_confirmation_that_fails_says_why_in_its_answer_and_its_event(
        alice: Service) -> None:
    held = _hold(alice, "bob@remote.test")
    token = _confirm_token(alice)
    owner, now = "alice@example.test", alice.clock.now
    unknown = _confirm_by_mail(alice, "a" * 8 + token[8:])
    assert unknown == service.Result(
        Outcome.DROPPED, "confirm token matches no held message; dropped",
        reason="token_unknown")
    assert _dropped(alice) == ("dropped", "token_unknown", "bob@remote.test", "", now, owner)
    forged = _confirm_by_mail(alice, token[:8] + "a" * 16)
    assert forged == service.Result(Outcome.DROPPED, "confirm token forged; dropped", held,
                                    "token_forged")
    assert _dropped(alice) == ("dropped", "token_forged", "bob@remote.test", held, now, owner)
    alice.clock.now += alice.box.settings.confirm_ttl + 301
    expired = _confirm_by_mail(alice, token)
    assert (expired.outcome, expired.pending_id, expired.reason) == (
        Outcome.DROPPED, held, "token_expired")
    assert _dropped(alice) == ("dropped", "token_expired", "bob@remote.test", held,
                               alice.clock.now, owner)
    fresh = confirm_address_of(alice.challenges(1)[0]).split("-confirm-")[1].split("@")[0]
    assert _confirm_by_mail(alice, fresh).outcome is Outcome.CONFIRMED
    used = _confirm_by_mail(alice, fresh, "carol@remote.test")
    assert used == service.Result(
        Outcome.DROPPED, f"{held} is no longer held; the token was used (token_used); dropped",
        held, "token_used")
    # The event names the sender of the held message, whoever sent the reply.
    assert _dropped(alice) == ("dropped", "token_used", "bob@remote.test", held,
                               alice.clock.now, owner)


def test_a_released_message_lands_under_its_own_name_with_its_envelope(
        alice: Service) -> None:
    alice.box = replace(alice.box, settings=replace(alice.box.settings, delivery="maildir"))
    held = _hold(alice, "bob@remote.test", "kept")
    alice.challenges(1)
    with transaction(alice.box.engine, write=False) as session:
        row = pending.get(session, alice.box.owner, held)
        assert row is not None
        received_at = row.received_at
    alice.clock.now += 60
    assert service.release(alice.box, [held]) == [held]
    [path] = sorted((alice.files.maildir / "new").iterdir())
    assert path.name == f"{received_at}.R{held}.alice_example_test.crtool"
    body = path.read_bytes()
    assert body.startswith(b"Return-Path: <bob@remote.test>\n"
                           b"Delivered-To: alice@example.test\nFrom: bob@remote.test\n")
    assert b"Subject: kept" in body
    with transaction(alice.box.engine, write=False) as session:
        row = pending.get(session, alice.box.owner, held)
        assert row is not None and (row.status, row.released_at) == (pending.RELEASED,
                                                                      alice.clock.now)
        assert not pending.has_bytes(session, held)
    last = _last_event(alice)
    assert (last.kind, last.reason, last.sender, last.pending_id, last.actor) == (
        "released", "", "bob@remote.test", held, "owner")


def _logged(alice: Service) -> list[tuple[str, str, str, str]]:
    with transaction(alice.box.engine, write=False) as session:
        return [(e.kind, e.reason, e.sender, e.pending_id) for e in session.scalars(
            select(Event).order_by(Event.id))]


def test_a_hold_says_what_it_did_in_its_answer_and_its_events(alice: Service) -> None:
    challenged = alice.deliver(message("bob@remote.test"), "bob@remote.test")
    held = challenged.pending_id
    assert challenged == service.Result(
        Outcome.HELD, f"held as {held}; challenge sent to bob@remote.test", held, "challenged")
    silent = alice.deliver(message("news@list.test", headers={"Precedence": "bulk"}),
                           "news@list.test")
    quiet = silent.pending_id
    assert silent == service.Result(
        Outcome.HELD, f"held as {quiet} without challenge (bulk_precedence)", quiet,
        "bulk_precedence")
    assert _logged(alice) == [("held", "challenged", "bob@remote.test", held),
                              ("challenged", "", "bob@remote.test", held),
                              ("held", "bulk_precedence", "news@list.test", quiet)]


def test_purging_takes_what_is_older_than_asked_and_says_how_many(alice: Service) -> None:
    ids = []
    for n in range(3):
        ids.append(_hold(alice, f"s{n}@remote.test"))
        alice.clock.now += 10
    alice.challenges(3)
    # Now is 30 s after the first: 15 s or older are the first two.
    assert service.purge_expired(alice.box, older_than=15) == 2
    assert service.purge_expired(alice.box, older_than=15) == 0
    with transaction(alice.box.engine, write=False) as session:
        left = [pending.get(session, alice.box.owner, pid) for pid in ids]
    assert [row.status if row else None for row in left] == [None, None, pending.HELD]
    assert service.purge_expired(alice.box) == 0
    alice.clock.now += alice.box.settings.hold_ttl
    assert service.purge_expired(alice.box) == 1


@only_sqlite
def test_a_purge_that_cannot_run_is_said_after_the_delivery_never_raised(
        alice: Service) -> None:
    """The delivery is committed before the purge runs: a purge kept out by another writer
    adds its cause (the driver's words, one line) to the answer and changes nothing else."""
    _hold(alice, "old@remote.test")
    alice.challenges(1)
    alice.clock.now += alice.box.settings.hold_ttl + 1
    done = service.Result(Outcome.HELD, "held as x", "x", "challenged")
    with _another_process_writing(alice) as box:
        said = service._purged_after(box, done)
    assert said == replace(done, detail="held as x (expired mail not purged: database is "
                                        "locked)")
    assert service._purged_after(alice.box, done) == done
    assert service.purge_expired(alice.box) == 0


def test_observe_mode_delivers_what_enforce_would_stop_and_says_why(alice: Service) -> None:
    alice.box = replace(alice.box, settings=replace(alice.box.settings, mode="observe",
                                                    delivery="maildir"))
    result = alice.deliver(message("bob@remote.test", "observed"), "bob@remote.test")
    assert (result.outcome, result.reason) == (Outcome.DELIVERED, "challenged")
    assert result.detail.startswith("whitelisted (observe mode: challenged); delivered to ")
    [body] = alice.files.maildir_messages()
    assert b"Subject: observed" in body
    assert _logged(alice) == [("observed", "challenged", "bob@remote.test", "")]
    assert alice.files.outbox.drain(0) == []


@only_sqlite
def test_a_whitelisted_delivery_writes_its_message_and_takes_no_lock_to_decide(
        alice: Service) -> None:
    """Deciding only reads: another process holding SQLite's write lock keeps a whitelisted
    message from nothing but its log line."""
    alice.box = replace(alice.box, settings=replace(alice.box.settings, delivery="maildir"))
    service.list_add(alice.box, policy.WHITE, ["ann@friends.test"], "")
    with _another_process_writing(alice) as box:
        result = service.deliver(box, Envelope("ann@friends.test", "alice@example.test"),
                                 RawMessage.from_bytes(message("ann@friends.test", "hi")))
    assert result.outcome is Outcome.DELIVERED
    assert result.detail.endswith("; not logged (OperationalError)"), result.detail
    [body] = alice.files.maildir_messages()
    assert body.startswith(b"Return-Path: <ann@friends.test>\n") and b"Subject: hi" in body


@only_postgresql
def test_reads_without_a_shared_snapshot_skip_begin_and_commit_on_postgresql(
        database_url: str) -> None:
    """READ COMMITTED gives each statement its own snapshot inside a transaction too, so a
    reading block that asks for none runs in autocommit: no BEGIN and COMMIT round trips.
    Every other block is still one transaction, on the same pooled connection after it."""
    from psycopg.pq import TransactionStatus

    engine = make_engine(database_url)

    def status(session: Session) -> TransactionStatus:
        session.execute(select(1))
        return session.connection().connection.driver_connection.info.transaction_status  # type: ignore[union-attr]

    try:
        with transaction(engine, write=False, one_snapshot=False) as session:
            assert status(session) is TransactionStatus.IDLE
        for write in (False, True, False):
            with transaction(engine, write=write) as session:
                assert status(session) is TransactionStatus.INTRANS
        with transaction(engine, write=True, one_snapshot=False) as session:
            assert status(session) is TransactionStatus.INTRANS  # a writer always has one
    finally:
        engine.dispose()


def test_a_delivery_decides_without_a_shared_snapshot_unless_it_may_record(
        alice: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision of plain mail only reads, statement by statement; one to a tagged
    address may record that the tag did not hold, so it decides in a transaction."""
    asked: list[tuple[bool, bool]] = []
    real = service.transaction

    def spy(engine: Engine, write: bool = True, one_snapshot: bool = True) -> Any:
        asked.append((write, one_snapshot))
        return real(engine, write, one_snapshot)

    service.list_add(alice.box, policy.WHITE, ["ann@friends.test"], "")
    address, _ = tag_service.sender(alice.box, "ann@friends.test", False)
    monkeypatch.setattr(service, "transaction", spy)
    assert alice.deliver(message("ann@friends.test"), "ann@friends.test").outcome \
        is Outcome.CONTINUE
    assert asked[0] == (False, False)
    asked.clear()
    alice.deliver(message("ann@friends.test", to=address), "ann@friends.test", address)
    assert asked[0] == (True, True)


def test_mail_to_a_tag_that_does_not_hold_is_recorded_as_such(alice: Service) -> None:
    address, _ = tag_service.sender(alice.box, "bob@remote.test", False)
    result = alice.deliver(message("carol@remote.test", to=address), "carol@remote.test",
                           address)
    assert (result.outcome, result.reason) == (Outcome.HELD, "challenged")
    assert _logged(alice)[0] == ("tagged", "sender_mismatch", "carol@remote.test", "")


def test_the_owners_own_digest_coming_back_is_delivered_and_a_lookalike_is_not(
        alice: Service) -> None:
    """Null sender and Auto-Submitted would hold it; its signed Message-ID lets it in."""
    _hold(alice, "bob@remote.test")
    alice.challenges(1)
    digest.send(alice.box)
    [(_, mail)] = alice.files.outbox.drain(1)
    raw = mail.as_bytes()
    result = alice.deliver(raw, "")
    assert (result.outcome, result.detail) == (Outcome.CONTINUE, "whitelisted (own_digest)")
    lookalike = raw.replace(b"Message-ID: <", b"Message-ID: <x", 1)
    assert alice.deliver(lookalike, "").outcome is Outcome.HELD
    # Past hold_ttl its id is no longer honoured.
    alice.clock.now += alice.box.settings.hold_ttl + 400
    assert alice.deliver(raw, "").outcome is Outcome.HELD


def test_an_expected_domain_is_let_in_while_its_window_is_open(alice: Service) -> None:
    with transaction(alice.box.engine) as session:
        expect.open_window(session, alice.box.owner, "shop.test", alice.clock.now, 3600)
    result = alice.deliver(message("orders@shop.test"), "orders@shop.test")
    assert (result.outcome, result.detail) == (Outcome.CONTINUE, "whitelisted (expected)")
    alice.box = replace(alice.box, settings=replace(alice.box.settings,
                                                    subaddress_separators="-"))
    tagged = alice.deliver(message("SRS0=hh=tt=shop.test=orders-9@fwd.test"),
                           "SRS0=hh=tt=shop.test=orders-9@fwd.test")
    assert tagged.detail == "whitelisted (expected)"
    # A listed sender is decided by his entry, not the window.
    service.list_add(alice.box, policy.BLACK, ["spam@shop.test"], "")
    assert alice.deliver(message("spam@shop.test"), "spam@shop.test").outcome is \
        Outcome.DROPPED
    alice.clock.now += 3601
    assert alice.deliver(message("late@shop.test"), "late@shop.test").outcome is Outcome.HELD


def test_a_confirmation_leaves_held_what_came_from_an_address_blacklisted_since(
        alice: Service) -> None:
    """bob confirms; what his tagged address sent stays held once the owner blacklisted it."""
    mine = _hold(alice, "bob@remote.test", "one")
    alice.clock.now += 1
    tagged = _hold(alice, "bob+shop@remote.test", "two")
    token = _confirm_token(alice)
    service.list_add(alice.box, policy.BLACK, ["bob+shop@remote.test"], "")
    result = service.confirm(alice.box, token, service.Via.web())
    assert (result.outcome, result.pending_id) == (Outcome.CONFIRMED, mine)
    assert (_status(alice, mine), _status(alice, tagged)) == (pending.RELEASED, pending.HELD)
