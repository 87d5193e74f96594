"""The decision vocabulary service offers every front end, on a real database: `decide` (what
delivery would do, changing nothing), `release(ids, by=...)` and `delete_ids` acting on held
messages only, all or none, and what a hold stores of a message's envelope and head."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from crtool import policy, service
from crtool.addresses import OwnerAddress
from crtool.errors import NotFound
from crtool.exits import Outcome
from crtool.message import Facts
from crtool.store import pending
from crtool.store.engine import transaction
from crtool.store.models import Event, Owner
from tests.integration.test_backscatter import Service
from tests.integration.test_backscatter import alice as _alice_fixture
from tests.support import message

alice = _alice_fixture


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
    from dataclasses import replace

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
