"""`crtool deliver` as qmail-local runs it, through every branch of contract §1."""

from __future__ import annotations

import io
import json
import subprocess
from typing import Any

import pytest

from crtool import delivery, service
from crtool import message as message_module
from crtool.client import Request
from crtool.config import Settings
from crtool.exits import Outcome
from crtool.message import Facts
from tests.support import Mailbox, confirm_address_of, crtool_executable, message, qmail_env

STRANGER = "bob@remote.test"


def held_ids(box: Mailbox) -> list[str]:
    return [m["id"] for m in json.loads(box.ok("pending", "list", "--json"))]


def test_whitelisted_sender_continues_to_the_next_qmail_line(mailbox: Mailbox) -> None:
    mailbox.ok("whitelist", "add", "friend@example.org")
    result = mailbox.deliver(message("friend@example.org"), "Friend@Example.ORG")
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    mailbox.outbox.drain(0)
    assert held_ids(mailbox) == []
    assert mailbox.maildir_messages() == []


def test_domain_pattern_whitelists_the_whole_domain(mailbox: Mailbox) -> None:
    mailbox.ok("whitelist", "add", "@example.org", "*@*.corp.test")
    assert mailbox.deliver(message(), "anyone@example.org").returncode == 0
    assert mailbox.deliver(message(), "x@mail.corp.test").returncode == 0
    assert mailbox.deliver(message(), "x@corp.test").returncode == 99


def test_blacklisted_sender_is_dropped_without_a_word(mailbox: Mailbox) -> None:
    mailbox.ok("blacklist", "add", "spam@remote.test")
    result = mailbox.deliver(message("spam@remote.test"), "spam@remote.test")
    assert result.returncode == 99
    assert b"blacklisted" in result.stderr
    mailbox.outbox.drain(0)
    assert held_ids(mailbox) == []


def test_blacklist_beats_a_domain_whitelist_and_an_exact_whitelist_beats_both(
        mailbox: Mailbox) -> None:
    mailbox.ok("whitelist", "add", "@remote.test")
    mailbox.ok("blacklist", "add", "spam@remote.test", "@junk.test")
    mailbox.ok("whitelist", "add", "friend@junk.test")
    assert mailbox.deliver(message(), "spam@remote.test").returncode == 99
    assert mailbox.deliver(message(), "other@remote.test").returncode == 0
    assert mailbox.deliver(message(), "friend@junk.test").returncode == 0
    assert mailbox.deliver(message(), "x@junk.test").returncode == 99
    mailbox.outbox.drain(0)


def test_blacklisted_sender_bounces_only_when_asked(mailbox: Mailbox) -> None:
    config = mailbox.home / "config.toml"
    config.write_text(config.read_text().replace('blacklist_action = "drop"',
                                                 'blacklist_action = "bounce"'))
    mailbox.ok("blacklist", "add", "spam@remote.test")
    result = mailbox.deliver(message("spam@remote.test"), "spam@remote.test")
    assert result.returncode == 100
    assert result.stderr.count(b"\n") == 1


def test_unknown_sender_is_held_and_challenged_once(mailbox: Mailbox) -> None:
    original = message(STRANGER, subject="Lunch?", body="Are you free on Friday?\n")
    result = mailbox.deliver(original, STRANGER)
    assert result.returncode == 99
    assert result.stderr.startswith(b"crtool: held as ") and result.stderr.count(b"\n") == 1
    [(args, challenge)] = mailbox.outbox.drain(1)
    # Null envelope sender, one recipient after "--": the envelope sender, never From.
    assert args == ["-i", "-f", "", "--", STRANGER]
    assert challenge["To"] == STRANGER
    assert challenge["Auto-Submitted"] == "auto-replied"
    assert challenge["Precedence"] == "bulk"
    assert challenge["X-Auto-Response-Suppress"] == "All"
    assert challenge["In-Reply-To"] == challenge["References"] == "<m1@remote.test>"
    [sender] = challenge["From"].addresses
    assert sender.addr_spec == challenge["Reply-To"] == confirm_address_of(challenge)
    assert sender.display_name == "alice@example.test (confirmation)"
    assert "Lunch?" in str(challenge["Subject"])
    body = challenge.get_content()
    # The challenge may go to a forged address: none of the held message's text by default.
    assert confirm_address_of(challenge) in body and "Are you free on Friday?" not in body
    [held] = json.loads(mailbox.ok("pending", "list", "--json"))
    assert {held[k] for k in ("sender", "subject", "status", "reason")} == {
        STRANGER, "Lunch?", "held", "challenged"}
    assert held["size"] == len(original)
    # The held bytes are exactly what arrived.
    assert mailbox.run("pending", "show", held["id"]).stdout == original


def confirm(box: Mailbox, address: str, sender: str = STRANGER) -> int:
    reply = message(sender, subject="Re: Please confirm", to=address, body="yes\n")
    return box.deliver(reply, sender, recipient=address).returncode


def test_confirmation_releases_and_whitelists(mailbox: Mailbox) -> None:
    original = message(STRANGER, subject="Lunch?")
    mailbox.deliver(original, STRANGER)
    [(_, challenge)] = mailbox.outbox.drain(1)
    assert confirm(mailbox, confirm_address_of(challenge)) == 99
    [delivered] = mailbox.maildir_messages()
    # Return-Path and Delivered-To prepended as qmail's own delivery would, then the bytes.
    assert delivered == (b"Return-Path: <bob@remote.test>\nDelivered-To: alice@example.test\n"
                         + original)
    assert mailbox.run("whitelist", "check", STRANGER).returncode == 0
    assert held_ids(mailbox) == []
    # Bob is whitelisted now: his next mail goes straight through, no second challenge.
    assert mailbox.deliver(message(STRANGER, subject="again"), STRANGER).returncode == 0
    mailbox.outbox.drain(0)


def test_confirm_token_in_upper_and_lower_case(mailbox: Mailbox) -> None:
    for sender, case in (("up@remote.test", str.upper), ("low@remote.test", str.lower)):
        mailbox.deliver(message(sender), sender)
        [(_, challenge)] = mailbox.outbox.drain(1)
        address = case(confirm_address_of(challenge))
        assert confirm(mailbox, address, sender) == 99
    assert len(mailbox.maildir_messages()) == 2


def test_forged_token_releases_nothing_and_sends_nothing(mailbox: Mailbox) -> None:
    mailbox.deliver(message(), STRANGER)
    [(_, challenge)] = mailbox.outbox.drain(1)
    address = confirm_address_of(challenge)
    local, domain = address.split("@")
    forged = local[:-1] + ("a" if local[-1] != "a" else "b") + "@" + domain
    for target in (forged, "alice-confirm-aaaaaaaaaaaaaaaaaaaaaaaa@example.test",
                   "alice-confirm-x@example.test"):
        result = mailbox.deliver(message(STRANGER, to=target), STRANGER, recipient=target)
        assert result.returncode == 99, result.stderr
        assert b"dropped" in result.stderr
    mailbox.outbox.drain(0)
    assert mailbox.maildir_messages() == []
    assert len(held_ids(mailbox)) == 1
    assert mailbox.run("whitelist", "check", STRANGER).returncode == 1


def test_double_confirmation_delivers_once(mailbox: Mailbox) -> None:
    mailbox.deliver(message(), STRANGER)
    [(_, challenge)] = mailbox.outbox.drain(1)
    address = confirm_address_of(challenge)
    assert confirm(mailbox, address) == 99
    assert confirm(mailbox, address) == 99
    assert len(mailbox.maildir_messages()) == 1
    mailbox.outbox.drain(0)


def test_one_confirmation_releases_every_message_held_from_the_sender(
        mailbox: Mailbox) -> None:
    first, second = message(subject="one"), message(subject="two", body="second\n")
    mailbox.deliver(first, STRANGER)
    mailbox.deliver(second, STRANGER)
    # One challenge per window: the second message is held silently.
    [(_, challenge)] = mailbox.outbox.drain(1)
    assert sorted(m["reason"] for m in json.loads(mailbox.ok("pending", "list", "--json"))) == [
        "challenged", "sender_rate_limit"]
    assert confirm(mailbox, confirm_address_of(challenge)) == 99
    delivered = mailbox.maildir_messages()
    assert len(delivered) == 2
    assert {d.split(b"\n", 2)[2] for d in delivered} == {first, second}


def test_confirmation_whitelists_the_held_sender_not_the_replying_one(
        mailbox: Mailbox) -> None:
    mailbox.deliver(message(), STRANGER)
    [(_, challenge)] = mailbox.outbox.drain(1)
    assert confirm(mailbox, confirm_address_of(challenge), sender="other@elsewhere.test") == 99
    assert mailbox.run("whitelist", "check", STRANGER).returncode == 0
    assert mailbox.run("whitelist", "check", "other@elsewhere.test").returncode == 1


def test_the_same_delivery_retried_is_held_once(mailbox: Mailbox) -> None:
    """qmail retries a delivery whose outcome it did not see; the digest catches it."""
    original = message()
    assert mailbox.deliver(original, STRANGER).returncode == 99
    result = mailbox.deliver(original, STRANGER)
    assert result.returncode == 99 and b"already held" in result.stderr
    assert len(held_ids(mailbox)) == 1
    mailbox.outbox.drain(1)


def test_null_sender_is_held_without_challenge(mailbox: Mailbox) -> None:
    result = mailbox.deliver(message("MAILER-DAEMON@remote.test"), "")
    assert result.returncode == 99
    mailbox.outbox.drain(0)
    [held] = json.loads(mailbox.ok("pending", "list", "--json"))
    assert held["reason"] == "null_sender"


def test_missing_envelope_is_a_temporary_failure(mailbox: Mailbox) -> None:
    """No SENDER at all (not an empty one) is a broken installation: qmail must retry."""
    env = qmail_env(STRANGER, "alice@example.test", mailbox.user_home)
    del env["SENDER"]
    broken = subprocess.run([crtool_executable(), "deliver"], input=message(), env=env,
                            capture_output=True, cwd=mailbox.user_home, check=False)
    assert broken.returncode == 111
    assert broken.stderr == b"crtool: no SENDER in the environment and no --sender\n"


def test_stats_count_what_happened(mailbox: Mailbox) -> None:
    mailbox.ok("whitelist", "add", "friend@example.org")
    mailbox.deliver(message(), "friend@example.org")
    mailbox.deliver(message(), STRANGER)
    [(_, challenge)] = mailbox.outbox.drain(1)
    confirm(mailbox, confirm_address_of(challenge))
    counts = json.loads(mailbox.ok("stats", "--json"))["counts"]
    assert {k: counts[k] for k in ("delivered", "held", "challenged", "confirmed",
                                   "released", "dropped")} == {
        "delivered": 1, "held": 1, "challenged": 1, "confirmed": 1, "released": 1,
        "dropped": 0}


def test_owner_template_overrides_the_shipped_one(mailbox: Mailbox) -> None:
    templates = mailbox.home / "templates"
    templates.mkdir()
    (templates / "challenge.txt").write_text(
        "Hi {{ sender }}, reply to {{ confirm_address }} please.\n")
    assert mailbox.deliver(message(), STRANGER).returncode == 99
    [(_, challenge)] = mailbox.outbox.drain(1)
    assert challenge.get_content() == (
        f"Hi {STRANGER}, reply to {confirm_address_of(challenge)} please.\n")


def test_broken_template_is_a_temporary_failure_that_holds_nothing(mailbox: Mailbox) -> None:
    """Strict undefined variables: a typo in the owner's template must not send a challenge
    with a hole in it, nor hold the message unchallenged; qmail retries after the fix."""
    templates = mailbox.home / "templates"
    templates.mkdir()
    (templates / "challenge.txt").write_text("Reply to {{ confirm_adress }}.\n")
    result = mailbox.deliver(message(), STRANGER)
    assert result.returncode == 111
    assert result.stderr.startswith(b"crtool: challenge template:")
    assert result.stderr.count(b"\n") == 1
    assert held_ids(mailbox) == []
    mailbox.outbox.drain(0)
    (templates / "challenge.txt").unlink()
    assert mailbox.deliver(message(), STRANGER).returncode == 99
    mailbox.outbox.drain(1)


def test_sandbox_refuses_unsafe_template_code(mailbox: Mailbox) -> None:
    templates = mailbox.home / "templates"
    templates.mkdir()
    (templates / "challenge.txt").write_text("{{ sender.__class__.__mro__ }}\n")
    result = mailbox.deliver(message(), STRANGER)
    assert result.returncode == 111 and b"challenge template" in result.stderr
    mailbox.outbox.drain(0)


def test_a_delivery_line_crtool_cannot_read_is_retried_not_bounced(mailbox: Mailbox) -> None:
    """`--recipient -x` (a recipient that looks like an option) or an unknown flag in a
    .forward or master.cf line: exit 75, which qmail and Postfix both retry; Postfix would
    bounce argparse's usual 2."""
    env = qmail_env(STRANGER, "alice@example.test", mailbox.user_home)
    for argv in (["deliver", "--recipient", "-x@example.test"], ["deliver", "--bogus"]):
        result = subprocess.run([crtool_executable(), *argv], input=message(), env=env,
                                capture_output=True, cwd=mailbox.user_home, check=False)
        assert result.returncode == 75, (argv, result.stderr)
    # The = form carries such a value safely.
    result = mailbox.deliver(message(), STRANGER, args=("--recipient=-x@example.test",))
    assert result.returncode == 99


def test_a_sendmail_that_keeps_failing_mails_one_person_at_most_three_times(
        mailbox: Mailbox) -> None:
    """This sendmail hands each message on (the outbox gets it) and then exits 1, as a real
    one can. Each failure is a retry for the MTA; the fourth delivery runs no sendmail, and
    the message stays held with reason challenge_failed, the delivery done."""
    original = message(STRANGER, subject="retried")
    failing = {"CRTOOL_TEST_SENDMAIL_EXIT": "1"}
    codes = [mailbox.deliver(original, STRANGER, extra_env=failing).returncode
             for _ in range(6)]
    assert codes == [111, 111, 111, 99, 99, 99]
    assert [args[-1] for args, _ in mailbox.outbox.drain(3)] == [STRANGER] * 3
    [held] = json.loads(mailbox.ok("pending", "list", "--json"))
    assert (held["status"], held["reason"]) == ("held", "challenge_failed")
    last = mailbox.deliver(original, STRANGER, extra_env=failing)
    assert b"challenge not sent after 3 tries" in last.stderr
    counts = json.loads(mailbox.ok("stats", "--json"))["counts"]
    assert (counts["held"], counts["challenged"], counts["challenge_failed"]) == (1, 1, 1)
    # A new message from him is held as usual, within the rate limit: not challenged again.
    assert mailbox.deliver(message(STRANGER, subject="another"), STRANGER,
                           extra_env=failing).returncode == 99
    mailbox.outbox.drain(0)


def test_a_sendmail_that_fails_twice_then_works_sends_on_the_third_try(
        mailbox: Mailbox) -> None:
    original = message(STRANGER, subject="third time")
    for _ in range(2):
        result = mailbox.deliver(original, STRANGER, extra_env={"CRTOOL_TEST_SENDMAIL_EXIT": "75"})
        assert result.returncode == 111
    assert mailbox.deliver(original, STRANGER).returncode == 99
    assert mailbox.deliver(original, STRANGER).returncode == 99
    assert len(mailbox.outbox.drain(3)) == 3
    [held] = json.loads(mailbox.ok("pending", "list", "--json"))
    assert held["reason"] == "challenged"


def test_the_head_is_parsed_once_per_delivery(mailbox: Mailbox,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path's look at the head is passed on to the full path, not parsed again.
    Counted where every parse ends, in the Facts it makes, however parse_head was imported."""
    parsed: list[Facts] = []

    class Counted(Facts):
        def __init__(self, **fields: Any) -> None:
            super().__init__(**fields)
            parsed.append(self)

    monkeypatch.setattr(message_module, "Facts", Counted)
    monkeypatch.setenv("CRTOOL_TEST_OUTBOX", str(mailbox.outbox.path))
    mailbox.ok("whitelist", "add", "friend@example.org")
    mailbox.ok("blacklist", "add", "spam@remote.test")
    boxes: list[service.Mailbox] = []

    class Resources(delivery.OneShot):
        def mailbox(self, settings: Settings) -> service.Mailbox:
            boxes.append(super().mailbox(settings))
            return boxes[-1]

    try:
        for sender, outcome in ((STRANGER, Outcome.HELD),
                                ("friend@example.org", Outcome.CONTINUE),
                                ("spam@remote.test", Outcome.DROPPED)):
            env = {k.encode(): v.encode()
                   for k, v in qmail_env(sender, mailbox.address, mailbox.user_home).items()}
            answer = delivery.handle(mailbox.home, Request(environ=env),
                                     io.BytesIO(message(sender)), Resources(), fast=True)
            assert (answer.outcome, len(parsed)) == (outcome.value, 1), answer
            parsed.clear()
    finally:
        for box in boxes:
            box.engine.dispose()
    mailbox.outbox.drain(1)
