"""What a confirmation may trust, and what the lists decide, on a real database (SQLite, and
PostgreSQL when CRTOOL_TEST_DATABASE_URL is set), through the service `crtool deliver` runs:
the whitelist entry a confirmation adds, the lists read again at confirmation, a token that acts
once, a whitelisted address the owner's MTA calls forged, the person behind a tagged sender,
and a release in batches. Each test would fail on the behaviour it names the opposite of."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from crtool import service
from crtool.exits import Outcome
from crtool.store.engine import transaction
from crtool.store.models import Event
from tests.integration.test_backscatter import MX, Service
from tests.integration.test_backscatter import alice as _alice_fixture
from tests.support import Mailbox, confirm_address_of, message

alice = _alice_fixture


def _token_of(challenge: object) -> str:
    return confirm_address_of(challenge).split("-confirm-")[1].split("@")[0]  # type: ignore[arg-type]


def _hold(alice: Service, sender: str, subject: str = "Hello", from_: str | None = None,
          reason: str = "challenged") -> str:
    raw = message(from_ or sender, subject, body=f"{subject} from {sender}\n")
    result = alice.deliver(raw, sender)
    assert (result.outcome, result.reason) == (Outcome.HELD, reason), result
    return result.pending_id


def _challenge_token(alice: Service, sender: str, **kwargs: str) -> str:
    _hold(alice, sender, **kwargs)
    [challenge] = alice.challenges(1)
    assert str(challenge["To"]) == sender
    return _token_of(challenge)


def _confirm(alice: Service, token: str, sender: str, from_: str | None = None,
             **overrides: object) -> service.Result:
    reply = message(from_ or sender, "Re: confirm", to=f"alice-confirm-{token}@example.test")
    return alice.deliver(reply, sender, f"alice-confirm-{token}@example.test", **overrides)


def _listed(alice: Service, list_name: str, address: str) -> bool:
    return alice.files.run(list_name, "check", address).returncode == 0


def _entries(alice: Service, list_name: str = "whitelist") -> list[dict[str, str]]:
    return json.loads(alice.files.ok(list_name, "list", "--json"))  # type: ignore[no-any-return]


def _held(alice: Service) -> list[str]:
    return sorted(m["id"] for m in json.loads(
        alice.files.ok("pending", "list", "--json", "--limit", "1000")))


# The entry a confirmation adds ---------------------------------------------------------------

def test_a_sender_named_star_at_a_domain_whitelists_that_address_not_the_domain(
        alice: Service) -> None:
    token = _challenge_token(alice, "*@evil.test")
    assert _confirm(alice, token, "*@evil.test").outcome is Outcome.CONFIRMED
    [entry] = _entries(alice)
    assert (entry["kind"], entry["note"]) == ("exact", "confirmed")
    assert _listed(alice, "whitelist", "*@evil.test")
    assert not _listed(alice, "whitelist", "other@evil.test")
    # Another sender of the domain is challenged as a stranger, and the exact entry reads back
    # as the same exact entry after export and import.
    _challenge_token(alice, "other@evil.test")
    exported = alice.files.ok("whitelist", "export")
    alice.files.ok("whitelist", "remove", exported.strip())
    alice.files.ok("whitelist", "import", "-", input=exported.encode())
    assert [e["kind"] for e in _entries(alice)] == ["exact"]


def test_the_envelope_sender_is_whitelisted_not_the_from_of_either_message(
        alice: Service) -> None:
    """The held message and the reply both carry a From: that is not the envelope sender:
    the confirmation proved the envelope sender the challenge went to, and nothing else."""
    token = _challenge_token(alice, "bounces-77@lists.remote.test", from_="bob@remote.test")
    result = _confirm(alice, token, "carol@elsewhere.test", from_="mallory@evil.test")
    assert result.outcome is Outcome.CONFIRMED
    assert [e["pattern"] for e in _entries(alice)] == ["bounces-77@lists.remote.test"]
    for other in ("bob@remote.test", "carol@elsewhere.test", "mallory@evil.test"):
        assert not _listed(alice, "whitelist", other)
    assert len(alice.files.maildir_messages()) == 1


# The lists, read again ------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["bob@remote.test", "@remote.test", "*@*.test"])
def test_a_sender_blacklisted_since_the_challenge_confirms_nothing(alice: Service,
                                                                   entry: str) -> None:
    token = _challenge_token(alice, "bob@remote.test")
    held = _held(alice)
    alice.files.ok("blacklist", "add", entry)
    result = _confirm(alice, token, "bob@remote.test")
    assert (result.outcome, result.reason) == (Outcome.DROPPED, "confirm_blacklisted")
    assert alice.files.maildir_messages() == []
    assert _entries(alice) == []
    assert _held(alice) == held
    # Still blacklisted: the next message is dropped, not let through by a new exact entry.
    assert alice.deliver(message("bob@remote.test"), "bob@remote.test").reason == "blacklisted"
    alice.challenges(0)


def test_a_release_leaves_held_a_tagged_address_blacklisted_since(alice: Service) -> None:
    """One person, two tagged addresses: the owner blacklisted one of them exactly after its
    message was held; the person's confirmation releases the other message only."""
    token = _challenge_token(alice, "bob+a@remote.test")
    spam = _hold(alice, "bob+spam@remote.test", reason="sender_rate_limit")
    alice.files.ok("blacklist", "add", "bob+spam@remote.test")
    assert _confirm(alice, token, "bob+a@remote.test").outcome is Outcome.CONFIRMED
    assert len(alice.files.maildir_messages()) == 1
    assert _held(alice) == [spam]
    # The exact entry for the tagged form beats the person's whitelist entry.
    assert alice.deliver(message("bob+spam@remote.test"), "bob+spam@remote.test").reason \
        == "blacklisted"
    assert alice.deliver(message("bob+c@remote.test"), "bob+c@remote.test").outcome \
        is Outcome.CONTINUE


@pytest.mark.parametrize("entry", ["bob@remote.test", "@remote.test", "*@*.remote.test",
                                   "*@*.test"])
def test_the_same_entry_on_both_lists_is_blacklisted(alice: Service, entry: str) -> None:
    alice.files.ok("whitelist", "add", entry)
    alice.files.ok("blacklist", "add", entry)
    covered = [sender for sender in ("bob@remote.test", "bob@mx.remote.test",
                                     "bob+tag@remote.test")
               if _listed(alice, "whitelist", sender)]
    assert covered
    for sender in covered:
        result = alice.deliver(message(sender), sender)
        assert (result.outcome, result.reason) == (Outcome.DROPPED, "blacklisted"), sender
    alice.challenges(0)


# A token acts once ------------------------------------------------------------------------------

def test_a_replayed_confirm_address_changes_nothing(alice: Service) -> None:
    token = _challenge_token(alice, "bob@remote.test")
    assert _confirm(alice, token, "bob@remote.test").outcome is Outcome.CONFIRMED
    # Confirming twice delivers once.
    again = _confirm(alice, token, "bob@remote.test")
    assert (again.outcome, again.reason) == (Outcome.DROPPED, "token_used")
    assert len(alice.files.maildir_messages()) == 1
    # The owner removes bob; bob's next message is held again (within the window: silently).
    alice.files.ok("whitelist", "remove", "bob@remote.test")
    later = _hold(alice, "bob@remote.test", "later", reason="sender_rate_limit")
    replay = _confirm(alice, token, "bob@remote.test")
    assert (replay.outcome, replay.reason) == (Outcome.DROPPED, "token_used")
    assert _entries(alice) == []
    assert _held(alice) == [later]
    assert len(alice.files.maildir_messages()) == 1
    alice.challenges(0)


def test_a_message_the_owner_released_uses_up_its_token(alice: Service) -> None:
    token = _challenge_token(alice, "bob@remote.test")
    [pending_id] = _held(alice)
    alice.files.ok("pending", "release", pending_id)
    result = _confirm(alice, token, "bob@remote.test")
    assert (result.outcome, result.reason) == (Outcome.DROPPED, "token_used")
    assert _entries(alice) == []
    assert len(alice.files.maildir_messages()) == 1


# A whitelisted address the owner's MTA calls forged --------------------------------------------

@pytest.mark.parametrize("results", [
    "dmarc=fail header.from=remote.test",
    "spf=fail smtp.mailfrom=bob@remote.test",
    "spf=fail smtp.mailfrom=bob@remote.test; dkim=pass header.d=evil.test",
])
def test_a_forged_whitelisted_address_is_held_without_a_challenge(alice: Service,
                                                                  results: str) -> None:
    alice.files.ok("whitelist", "add", "bob@remote.test")
    raw = message("bob@remote.test", headers={"Authentication-Results": f"{MX}; {results}"})
    result = alice.deliver(raw, "bob@remote.test")
    assert (result.outcome, result.reason) == (Outcome.HELD, "whitelist_forged")
    alice.challenges(0)
    [held] = json.loads(alice.files.ok("pending", "list", "--json"))
    assert (held["reason"], held["challenged_at"]) == ("whitelist_forged", None)
    # Forwarded mail keeps its signature: SPF fails, DKIM of the sender's domain passes.
    kept = message("bob@remote.test", "fwd", headers={"Authentication-Results": (
        f"{MX}; spf=fail smtp.mailfrom=bob@remote.test; dkim=pass header.d=remote.test")})
    assert alice.deliver(kept, "bob@remote.test").outcome is Outcome.CONTINUE


def test_a_forged_whitelisted_address_is_held_by_a_real_delivery_too(mailbox: Mailbox) -> None:
    """`crtool deliver` as qmail runs it, where the fast path reads the lists first: it must
    not accept the message; the full path holds it."""
    config = mailbox.home / "config.toml"
    config.write_text(config.read_text().replace('authserv_id = ""', f'authserv_id = "{MX}"'))
    mailbox.ok("whitelist", "add", "bob@remote.test")
    raw = message("bob@remote.test",
                  headers={"Authentication-Results": f"{MX}; dmarc=fail header.from=remote.test"})
    result = mailbox.deliver(raw, "bob@remote.test")
    assert result.returncode == 99, result.stderr
    assert b"whitelist_forged" in result.stderr
    [held] = json.loads(mailbox.ok("pending", "list", "--json"))
    assert held["reason"] == "whitelist_forged"
    mailbox.outbox.drain(0)
    assert mailbox.deliver(message("bob@remote.test"), "bob@remote.test").returncode == 0


# One person behind tagged senders ----------------------------------------------------------------

PERSON = ("bob+news@remote.test", "bob+shop@remote.test", "prvs=1234abcdef=bob@remote.test",
          "prvs=2234abcdef=bob+x@remote.test", "SRS0=HHHH=TT=remote.test=bob@fwd.test")


def test_one_person_gets_one_challenge_and_one_confirmation_releases_all(
        alice: Service) -> None:
    results = [alice.deliver(message(s, f"m{n}"), s) for n, s in enumerate(PERSON)]
    assert [r.reason for r in results] == ["challenged"] + ["sender_rate_limit"] * 4
    [challenge] = alice.challenges(1)
    assert str(challenge["To"]) == PERSON[0]
    assert _confirm(alice, _token_of(challenge), PERSON[0]).outcome is Outcome.CONFIRMED
    assert len(alice.files.maildir_messages()) == len(PERSON)
    assert _held(alice) == []
    # The person is whitelisted, not the tag: his next tagged mail passes.
    assert [e["pattern"] for e in _entries(alice)] == ["bob@remote.test"]
    for sender in ("bob+other@remote.test", "prvs=3234abcdef=bob@remote.test"):
        assert alice.deliver(message(sender), sender).outcome is Outcome.CONTINUE
    assert alice.deliver(message("carol@remote.test"), "carol@remote.test").reason \
        == "challenged"


def test_a_confirmation_through_srs_whitelists_the_forwarded_address_only(
        alice: Service) -> None:
    """The forwarder's word about another domain proves nothing there: the exact SRS address
    is whitelisted, not the address it names."""
    srs = "SRS0=HHHH=TT=remote.test=bob@fwd.test"
    token = _challenge_token(alice, srs)
    assert _confirm(alice, token, srs).outcome is Outcome.CONFIRMED
    assert [e["pattern"] for e in _entries(alice)] == [srs.lower()]
    assert not _listed(alice, "whitelist", "bob@remote.test")


def test_subaddress_separators_are_read_from_the_config(alice: Service) -> None:
    first = alice.deliver(message("bob-a@remote.test"), "bob-a@remote.test",
                          subaddress_separators="+-")
    second = alice.deliver(message("bob-b@remote.test", "2"), "bob-b@remote.test",
                           subaddress_separators="+-")
    third = alice.deliver(message("bob-c@remote.test", "3"), "bob-c@remote.test")
    assert [r.reason for r in (first, second, third)] == [
        "challenged", "sender_rate_limit", "challenged"]
    alice.challenges(2)


# Releases in batches ----------------------------------------------------------------------------

def test_a_confirmation_releases_in_batches_with_the_confirmed_message_last(
        alice: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "RELEASE_BATCH", 3)
    token = _challenge_token(alice, "bob@remote.test", subject="first")
    confirmed = _held(alice)[0]
    for n in range(7):
        alice.clock.now += 1
        _hold(alice, "bob@remote.test", f"more {n}", reason="sender_rate_limit")
    result = _confirm(alice, token, "bob@remote.test")
    assert result.outcome is Outcome.CONFIRMED
    assert len(alice.files.maildir_messages()) == 8
    assert _held(alice) == []
    with transaction(alice.box.engine, write=False) as session:
        released = list(session.scalars(select(Event.pending_id).where(
            Event.kind == "released").order_by(Event.id)))
    assert len(released) == 8 and len(set(released)) == 8
    assert released[-1] == confirmed


def test_pending_release_whitelist_releases_everything_from_the_sender(
        alice: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "RELEASE_BATCH", 2)
    _challenge_token(alice, "bob@remote.test")
    for n in range(4):
        _hold(alice, "bob+x@remote.test", f"more {n}", reason="sender_rate_limit")
    _challenge_token(alice, "carol@remote.test")
    [bob_first] = [m["id"] for m in json.loads(alice.files.ok("pending", "list", "--json"))
                   if m["sender"] == "bob@remote.test"]
    service.release(alice.box, [bob_first], whitelist=True)
    assert len(alice.files.maildir_messages()) == 5
    [carol] = _held(alice)
    assert carol != bob_first
    [entry] = _entries(alice)
    assert (entry["pattern"], entry["note"]) == ("bob@remote.test", "released by owner")


def test_release_and_delete_of_a_message_no_longer_held_change_nothing(
        alice: Service) -> None:
    first = _hold(alice, "bob@remote.test")
    second = _hold(alice, "carol@remote.test")
    alice.challenges(2)
    alice.files.ok("pending", "release", first)
    for verb in ("release", "delete"):
        for ids in ([first], [second, first]):
            result = alice.files.run("pending", verb, *ids)
            assert result.returncode == 3, (verb, ids, result.stderr)
            assert f"no held message {first}".encode() in result.stderr
    # All or nothing: the held one named beside it is untouched.
    assert _held(alice) == [second]
    assert len(alice.files.maildir_messages()) == 1
    alice.files.ok("pending", "delete", second)
    for verb in ("release", "delete"):
        assert alice.files.run("pending", verb, second).returncode == 3
    assert len(alice.files.maildir_messages()) == 1

