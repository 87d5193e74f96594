"""Never a backscatter source: every rule of the checklist, the rate limits and the refusals at
the confirm address, carried out by the real service on a real database (SQLite, and PostgreSQL
when CRTOOL_TEST_DATABASE_URL is set), with the challenge handed to the sendmail stand-in.

The big table runs in-process through `service.deliver`, the function `crtool deliver` calls
once it has read the envelope, because a subprocess per row would cost seconds; what only a real
`crtool deliver` shows (exit codes, `pending list`, `stats`) is checked by subprocess once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from sqlalchemy import Engine

from crtool import policy, service, tokens
from crtool.config import load_settings
from crtool.envelope import Envelope, RawMessage
from crtool.exits import Outcome
from crtool.outbox import SendmailOutbox
from crtool.store.engine import make_engine
from crtool.tokens import load_keys, secrets_of
from tests.support import CAPTURE_SENDMAIL, Mailbox, confirm_address_of, message

MX = "mx.example.test"
START = 1_790_000_000
DAY = 86400


class Clock:
    """The service's clock, passed in (STYLE: the clock is a value), moved by the test."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> float:
        return float(self.now)


@dataclass
class Service:
    """alice's mailbox driven in-process: the same service `crtool deliver` runs."""

    files: Mailbox
    box: service.Mailbox
    clock: Clock

    def deliver(self, raw: bytes, sender: str, recipient: str = "alice@example.test",
                **overrides: Any) -> service.Result:
        box = replace(self.box, settings=replace(self.box.settings, **overrides)) \
            if overrides else self.box
        return service.deliver(box, Envelope(sender, recipient), RawMessage.from_bytes(raw))

    def challenges(self, count: int) -> list[Any]:
        return [m for _, m in self.files.outbox.drain(count)]


@pytest.fixture
def alice(mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    # The stand-in is a separate process started by SendmailOutbox; it finds its directory here.
    monkeypatch.setenv("CRTOOL_TEST_OUTBOX", str(mailbox.outbox.path))
    settings = replace(load_settings(mailbox.home), authserv_id=MX)
    engine: Engine = make_engine(settings.database_url)
    clock = Clock(START)
    box = service.Mailbox(settings=settings, engine=engine,
                          outbox=SendmailOutbox(str(CAPTURE_SENDMAIL), 30),
                          keys=lambda: secrets_of(load_keys(settings.keys_path)), clock=clock)
    yield Service(mailbox, box, clock)
    engine.dispose()


def ar(result: str, serv: str = MX) -> dict[str, str]:
    return {"Authentication-Results": f"{serv}; {result}"}


# One row per rule: (row id, envelope sender, envelope recipient, extra headers, reason).
# "challenged" means held and challenged; every sender is new, so no row limits another.
ROWS: list[tuple[str, str, str, dict[str, str], str]] = [
    ("ordinary", "r0@remote.test", "alice@example.test", {}, "challenged"),
    ("extension recipient", "r1@remote.test", "alice-work@example.test", {}, "challenged"),
    ("null_sender", "", "alice@example.test", {}, "null_sender"),
    ("double_bounce", "#@[]", "alice@example.test", {}, "double_bounce"),
    ("mailer_daemon", "MAILER-DAEMON@remote.test", "alice@example.test", {}, "mailer_daemon"),
    ("invalid_sender", "r2@remote.test -oQ/tmp", "alice@example.test", {}, "invalid_sender"),
    ("own_address", "ALICE@example.test", "alice@example.test", {}, "own_address"),
    ("to_confirm_address", "r3@remote.test", "alice-confirm-abc@alias.test", {},
     "to_confirm_address"),
    ("challenge_sender", "carol-confirm-123.abc@other.test", "alice@example.test", {},
     "challenge_sender"),
    ("auto_submitted", "r4@remote.test", "alice@example.test",
     {"Auto-Submitted": "auto-replied (vacation)"}, "auto_submitted"),
    ("response_suppressed", "r5@remote.test", "alice@example.test",
     {"X-Auto-Response-Suppress": "OOF, AutoReply"}, "response_suppressed"),
    ("challenge_headers", "r6@remote.test", "alice@example.test",
     {"X-Crtool-Challenge": "x"}, "challenge_headers"),
    ("list_headers", "r7@remote.test", "alice@example.test",
     {"List-Post": "<mailto:dev@lists.test>"}, "list_headers"),
    ("bulk_precedence", "r8@remote.test", "alice@example.test", {"Precedence": "list"},
     "bulk_precedence"),
    ("list_sender", "dev-request@lists.test", "alice@example.test", {}, "list_sender"),
    ("noreply_sender", "noreply@shop.test", "alice@example.test", {}, "noreply_sender"),
    ("spf_fail", "r9@remote.test", "alice@example.test",
     ar("spf=fail smtp.mailfrom=r9@remote.test"), "spf_fail"),
    ("spf_fail forged header ignored", "r10@remote.test", "alice@example.test",
     ar("spf=fail smtp.mailfrom=r10@remote.test", serv="mx.remote.test"), "challenged"),
    ("dmarc_fail", "bounce-r11@forwarder.test", "alice@example.test",
     {**ar("dmarc=fail header.from=remote.test"), "From": "r11@remote.test"}, "dmarc_fail"),
]
SENDER_LIMIT_ROW = "sender_rate_limit"
GLOBAL_LIMIT_ROW = "global_rate_limit"
NO_HEADER_ROW = "no_header_block"
SPAM_ROW = "spam_flagged"


def test_every_rule_holds_with_its_reason_and_only_the_challenged_are_answered(
        alice: Service) -> None:
    outcomes: dict[str, tuple[str, str]] = {}
    for name, sender, recipient, headers, _ in ROWS:
        extra = dict(headers)
        raw = message(extra.pop("From", sender or "x@y.test"), subject=name, headers=extra)
        result = alice.deliver(raw, sender, recipient)
        outcomes[name] = (result.outcome.value, result.reason)
    result = alice.deliver(b"no header block at all\n", "r12@remote.test")
    outcomes[NO_HEADER_ROW] = (result.outcome.value, result.reason)
    # The owner's own spam filter's mark (here with no Received line: the whole head is his).
    outcomes[SPAM_ROW] = _pair(alice.deliver(
        message("r14@remote.test", headers={"X-Spam-Flag": "YES"}), "r14@remote.test",
        spam_header="X-Spam-Flag: YES"))
    # The same sender again within the window, then a new one once the hour's budget is spent.
    outcomes[SENDER_LIMIT_ROW] = _pair(alice.deliver(message("r0@remote.test", "again"),
                                                     "r0@remote.test"))
    spent = sum(1 for _, reason in outcomes.values() if reason == "challenged")
    outcomes[GLOBAL_LIMIT_ROW] = _pair(alice.deliver(
        message("r13@remote.test"), "r13@remote.test", challenge_global_limit=spent))

    expected = {name: ("held", reason) for name, *_, reason in ROWS}
    expected |= {NO_HEADER_ROW: ("held", "no_header_block"), SPAM_ROW: ("held", "spam_flagged"),
                 SENDER_LIMIT_ROW: ("held", "sender_rate_limit"),
                 GLOBAL_LIMIT_ROW: ("held", "global_rate_limit")}
    assert outcomes == expected
    # Every reason of the policy's table was reached by a row.
    reached = {reason for _, reason in outcomes.values()} - {"challenged"}
    assert reached == set(policy.SUPPRESSION_REASONS)

    sent = alice.challenges(spent)
    assert sorted(str(m["To"]) for m in sent) == ["r0@remote.test", "r10@remote.test",
                                                  "r1@remote.test"]

    # The owner sees why: pending list per message, stats per reason (real subprocesses).
    listed = json.loads(alice.files.ok("pending", "list", "--json", "--limit", "100"))
    assert sorted(m["reason"] for m in listed) == sorted(r for _, r in expected.values())
    assert all((m["challenged_at"] is None) == (m["reason"] != "challenged") for m in listed)
    stats = json.loads(alice.files.ok("stats", "--json"))
    held_by_reason = {reason: 1 for reason in policy.SUPPRESSION_REASONS}
    held_by_reason["sender_rate_limit"] = 1
    assert stats["held_without_challenge"] == held_by_reason
    assert stats["counts"]["challenged"] == spent
    text = alice.files.ok("pending", "list", "--limit", "100")
    assert "response_suppressed " in text and "to_confirm_address " in text


def _pair(result: service.Result) -> tuple[str, str]:
    return result.outcome.value, result.reason


# The confirm address: nothing sent to an unverified sender ---------------------------------

def _held_and_challenged(alice: Service, sender: str = "bob@remote.test") -> tuple[str, str]:
    """Hold one message from `sender`; (its id, the token of its challenge)."""
    result = alice.deliver(message(sender), sender)
    assert result.reason == "challenged"
    [challenge] = alice.challenges(1)
    address = confirm_address_of(challenge)
    return result.pending_id, address.split("-confirm-")[1].split("@")[0]


def _confirm(alice: Service, token: str, sender: str = "bob@remote.test",
             headers: dict[str, str] | None = None) -> service.Result:
    return alice.deliver(message(sender, "Re: confirm", headers=headers), sender,
                         f"alice-confirm-{token}@example.test")


def _flip(token: str) -> str:
    return token[:-1] + ("a" if token[-1] != "a" else "b")


def test_bad_tokens_and_refused_replies_are_dropped_with_nothing_sent(alice: Service) -> None:
    pending_id, token = _held_and_challenged(alice)
    keys = alice.box.keys()
    unknown = tokens.issue(keys, "confirm", alice.box.owner, "aaaaaaaa", "bob@remote.test",
                           START)
    cases = [
        ("token_malformed", _confirm(alice, "xyz")),
        ("token_forged", _confirm(alice, _flip(token))),
        ("token_unknown", _confirm(alice, unknown)),
        ("confirm_from_null_sender", _confirm(alice, token, sender="")),
        ("confirm_automated", _confirm(alice, token, headers={"Auto-Submitted": "auto-replied"})),
        ("confirm_automated", _confirm(alice, token, headers={"X-TMDA-Confirm": "x"})),
    ]
    alice.clock.now = START - 3600
    cases.append(("token_future", _confirm(alice, token)))
    for reason, result in cases:
        assert (result.outcome, result.reason) == (Outcome.DROPPED, reason)
        assert reason in policy.DROP_REASONS
    alice.challenges(0)
    assert alice.files.maildir_messages() == []
    held = json.loads(alice.files.ok("pending", "list", "--json"))
    assert [m["id"] for m in held] == [pending_id]


def test_blacklisted_senders_are_dropped_and_bounce_only_when_configured(
        alice: Service) -> None:
    alice.files.ok("blacklist", "add", "spam@remote.test")
    dropped = alice.deliver(message("spam@remote.test"), "spam@remote.test")
    assert (dropped.outcome, dropped.reason) == (Outcome.DROPPED, "blacklisted")
    bounced = alice.deliver(message("spam@remote.test"), "spam@remote.test",
                            blacklist_action="bounce")
    assert bounced.outcome is Outcome.BOUNCED
    alice.challenges(0)


def test_a_deleted_message_confirms_nothing(alice: Service) -> None:
    pending_id, token = _held_and_challenged(alice)
    alice.files.ok("pending", "delete", pending_id)
    result = _confirm(alice, token)
    assert (result.outcome, result.reason) == (Outcome.DROPPED, "message_gone")
    alice.clock.now += 15 * DAY
    expired = _confirm(alice, token)
    assert (expired.outcome, expired.reason) == (Outcome.DROPPED, "token_expired")
    alice.challenges(0)
    assert alice.files.maildir_messages() == []
    assert alice.files.run("whitelist", "check", "bob@remote.test").returncode == 1


def test_an_expired_token_earns_a_fresh_challenge_within_the_limits(alice: Service) -> None:
    """The fresh challenge goes to the held message's sender, whoever wrote to the confirm
    address, and its new token releases the message."""
    _, token = _held_and_challenged(alice)
    alice.clock.now += 15 * DAY
    result = _confirm(alice, token, sender="someone@else.test")
    assert (result.outcome, result.reason) == (Outcome.DROPPED, "token_expired")
    [fresh] = alice.challenges(1)
    assert str(fresh["To"]) == "bob@remote.test"
    # The old token now belongs to a superseded challenge time: it verifies no more.
    assert _confirm(alice, token).reason == "token_forged"
    alice.challenges(0)
    new_token = confirm_address_of(fresh).split("-confirm-")[1].split("@")[0]
    assert _confirm(alice, new_token).outcome is Outcome.CONFIRMED
    assert len(alice.files.maildir_messages()) == 1


def test_no_fresh_challenge_past_a_rate_limit(alice: Service) -> None:
    """Only the first reply after the expiry can earn a fresh challenge: any delivery that
    writes also purges expired messages, so no other challenge can fill the hour's budget
    while the message waits (a budget of 0 stands in for a full one)."""
    pending_id, token = _held_and_challenged(alice)
    alice.clock.now += 15 * DAY
    limited = alice.deliver(message("bob@remote.test", "Re: confirm"), "bob@remote.test",
                            f"alice-confirm-{token}@example.test", challenge_global_limit=0)
    assert (limited.outcome, limited.reason) == (Outcome.DROPPED, "token_expired")
    assert "global_rate_limit" in limited.detail
    alice.challenges(0)
    # Refused a fresh challenge, the expired message went with that delivery's purge.
    assert alice.files.run("pending", "show", pending_id).returncode == 3
    alice.clock.now += 3601
    assert _confirm(alice, token).reason == "token_unknown"
    alice.challenges(0)


def test_no_fresh_challenge_to_a_sender_blacklisted_since(alice: Service) -> None:
    _, token = _held_and_challenged(alice)
    alice.files.ok("blacklist", "add", "@remote.test")
    alice.clock.now += 15 * DAY
    result = _confirm(alice, token)
    assert (result.outcome, result.reason) == (Outcome.DROPPED, "token_expired")
    alice.challenges(0)


def test_the_sender_window_opens_again_after_it_passes(alice: Service) -> None:
    alice.deliver(message("bob@remote.test", "1"), "bob@remote.test")
    alice.clock.now += DAY - 60
    second = alice.deliver(message("bob@remote.test", "2"), "bob@remote.test")
    alice.clock.now += 120
    third = alice.deliver(message("bob@remote.test", "3"), "bob@remote.test")
    assert (second.reason, third.reason) == ("sender_rate_limit", "challenged")
    alice.challenges(2)
