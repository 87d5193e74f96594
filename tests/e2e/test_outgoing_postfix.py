"""The owner's outgoing mail and tagged addresses through a real Postfix: alice writes with
`crtool sendmail` in front of Postfix's own sendmail, and the answer of someone in the thread
arrives without a challenge; mail to her dated and keyword addresses (Postfix hands every
`alice-…` extension to ~/.forward, `recipient_delimiter = -`) arrives, and a revoked keyword's
mail is dropped, neither bounced nor deferred. Set up by .ci/postfix.sh like test_postfix.py.
"""

from __future__ import annotations

import fcntl
import json
import re
from collections.abc import Iterator

import pytest

from tests.e2e import host
from tests.e2e.host import ALICE, CRTOOL, alice, bob

pytestmark = pytest.mark.e2e

MESSAGE_ID = re.compile(rb"^Message-ID: (<[a-z2-7]{8}\.[a-z2-7]{24}\.crtool@example\.test>)",
                        re.MULTILINE | re.IGNORECASE)


@pytest.fixture
def shared() -> Iterator[None]:
    reason = host.why_not_available()
    if reason is not None:
        pytest.skip(f"no Postfix to test against: {reason}")
    host.prepare_once()
    with host.locked(fcntl.LOCK_SH):
        yield


def whitelist() -> dict[str, str]:
    entries = json.loads(alice.crtool("whitelist", "list", "--json"))
    return {entry["pattern"]: entry["note"] for entry in entries}


def test_alice_writes_through_crtool_sendmail_and_the_reply_needs_no_challenge(
        shared: None) -> None:
    word = host.marker()
    friend = f"bob-{word}@remote.test"  # bob's mailbox: a challenge would land there
    # As mutt runs it: `crtool sendmail -oem -oi -t`, the message on stdin, no Message-ID.
    outgoing = (f"From: Alice <{ALICE}>\nTo: Bob <{friend}>\nSubject: Plans {word}\n\n"
                "Dinner on Friday?\n").encode()
    result = alice.as_user([str(CRTOOL), "sendmail", "-oem", "-oi", "-t"], input=outgoing)
    assert (result.returncode, result.stderr) == (0, "")
    [arrived] = host.wait_for("alice's mail in bob's Maildir", lambda: bob.messages(word))
    assert arrived.startswith(f"Return-Path: <{ALICE}>\n".encode())
    found = MESSAGE_ID.search(arrived)
    assert found is not None, arrived.decode()
    assert whitelist()[friend] == "sent"

    # Someone else in the thread answers: nobody alice ever wrote to, yet no challenge.
    replier = f"bob-{word}-other@remote.test"
    bob.send(replier, ALICE, host.mail(replier, ALICE, f"Re: Plans {word}",
                                       f"reply-{word}@remote.test",
                                       extra=f"In-Reply-To: {found.group(1).decode()}\n"))
    host.wait_for("the reply in alice's Maildir", lambda: alice.messages(f"reply-{word}"))
    assert whitelist()[replier] == "reply"
    assert not any(item["subject"] == f"Re: Plans {word}" for item in alice.held())
    assert len(bob.messages(word)) == 1  # alice's mail only: no challenge went out


def test_dated_and_keyword_addresses_deliver_and_a_revoked_keyword_is_dropped(
        shared: None) -> None:
    word = host.marker()
    stranger = f"bob-{word}@remote.test"
    dated = alice.crtool("address", "dated", "--valid", "1d").strip()
    keyword = alice.crtool("address", "keyword", word[-8:]).strip()
    log = host.MailLog()
    for to, tag in ((dated, "dated"), (keyword, "keyword")):
        bob.send(stranger, to, host.mail(stranger, to, f"Sign-up {tag} {word}",
                                         f"{tag}-{word}@remote.test",
                                         extra="Auto-Submitted: auto-generated\n"))
        [delivered] = host.wait_for(f"the mail to the {tag} address in alice's Maildir",
                                    lambda tag=tag: alice.messages(f"{tag}-{word}"))
        assert f"\nDelivered-To: {to}\n".encode() in delivered.replace(
            to.upper().encode(), to.encode())
    assert stranger not in whitelist()

    alice.crtool("address", "revoke", "keyword", word[-8:])
    bob.send(stranger, keyword, host.mail(stranger, keyword, f"Spam {word}",
                                          f"spam-{word}@remote.test"))
    queue_id = host.wait_for("the spam's queue id",
                             lambda: log.queue_id(f"spam-{word}@remote.test"))
    host.wait_for("Postfix logging the delivery to crtool as sent",
                  lambda: [line for line in log.lines(queue_id)
                           if "status=sent (delivered to command" in line])
    assert alice.messages(f"spam-{word}") == []
    assert not any(item["subject"] == f"Spam {word}" for item in alice.held())
    assert not any("status=bounced" in line or "status=deferred" in line
                   for line in log.lines(queue_id))
    assert bob.messages(word) == []  # no challenge, no bounce


def test_mutt_sends_through_crtool_sendmail_and_its_own_message_id_counts(
        shared: None) -> None:
    # Debian's mutt in batch mode, configured as the README says: it runs
    # `crtool sendmail -oem -oi -- RCPT` (its default flags) with a Message-ID of its own,
    # which crtool records instead of replacing.
    word = host.marker()
    friend = f"bob-{word}@remote.test"
    muttrc = alice.home / f".muttrc-{word}"
    muttrc.write_text(f'set sendmail="{CRTOOL} sendmail"\nset from="{ALICE}"\n'
                      'set use_from=yes\nset record=""\nset charset="utf-8"\n')
    try:
        result = alice.as_user(["/usr/bin/mutt", "-n", "-F", str(muttrc), "-s",
                                f"Tickets {word}", "--", friend], input=b"Two for Friday.\n")
        assert result.returncode == 0, result.stderr
    finally:
        muttrc.unlink()
    [arrived] = host.wait_for("mutt's mail in bob's Maildir", lambda: bob.messages(word))
    found = re.search(rb"^Message-ID: (<[^>]+>)", arrived, re.MULTILINE | re.IGNORECASE)
    assert found is not None and b".crtool@" not in found.group(1)
    assert whitelist()[friend] == "sent"
    replier = f"bob-{word}-x@remote.test"
    bob.send(replier, ALICE, host.mail(replier, ALICE, f"Re: Tickets {word}",
                                       f"answer-{word}@remote.test",
                                       extra=f"References: {found.group(1).decode()}\n"))
    host.wait_for("the answer in alice's Maildir", lambda: alice.messages(f"answer-{word}"))
    assert len(bob.messages(word)) == 1  # no challenge
