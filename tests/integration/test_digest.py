"""The owner's digest, and release and accept by mail: what is held reaches the owner as one
mail, and one reply acts on it, once, sending nothing back. Every test runs on SQLite and, with
CRTOOL_TEST_DATABASE_URL set, on PostgreSQL."""

from __future__ import annotations

import json
import re
import time
from email.message import EmailMessage

from tests.support import Mailbox, message

LIST = {"List-Id": "<news.list.test>"}


def _digest(mailbox: Mailbox, *args: str) -> EmailMessage:
    out = mailbox.ok("digest", *args)
    assert out.startswith("digest "), out
    ((argv, sent),) = mailbox.outbox.drain(1)
    assert argv[-4:-1] == ["-f", "", "--"], argv
    return sent


def _text(digest: EmailMessage) -> str:
    body = digest.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def _html(digest: EmailMessage) -> str:
    body = digest.get_body(("html",))
    assert body is not None
    return str(body.get_content())


def _addresses(text: str, word: str) -> list[str]:
    return re.findall(rf"{word}: +(alice-{word}-[a-z2-7]+@example\.test)", text)


def _hold_silently(mailbox: Mailbox, sender: str, subject: str, **headers: str) -> str:
    result = mailbox.deliver(message(sender, subject, headers=headers or LIST), sender)
    assert result.returncode == 99, result.stderr
    found = re.search(rb"held as ([a-z2-7]{8})", result.stderr)
    assert found, result.stderr
    return found.group(1).decode()


def test_digest_lists_what_is_new_grouped_by_reason_then_nothing(mailbox: Mailbox) -> None:
    """One mail with each held message under its reason, release and accept addresses,
    filterable headers; the next run, with nothing new, sends nothing and exits 0."""
    news = _hold_silently(mailbox, "news@list.test", "Weekly news")
    reset = _hold_silently(mailbox, "noreply@shop.test", "Password reset", **{"X-A": "b"})
    digest = _digest(mailbox)
    assert digest["Auto-Submitted"] == "auto-generated"
    assert digest["To"] == "alice@example.test"
    assert digest["Subject"].startswith("[crtool digest] 2 held messages")
    assert re.fullmatch(r"<crtool-digest\.[a-z2-7]{24}@example\.test>", digest["Message-ID"])
    text = _text(digest)
    assert "== list_headers: 1 held ==" in text and "== noreply_sender: 1 held ==" in text
    assert f"[{news}]" in text and f"[{reset}]" in text and "Password reset" in text
    assert len(_addresses(text, "release")) == 2 and len(_addresses(text, "accept")) == 2
    assert "Weekly news" in _html(digest)
    assert mailbox.ok("digest") == "nothing new since the last digest; nothing sent\n"
    mailbox.outbox.drain(0)
    assert mailbox.ok("pending", "list", "--new") == "nothing held\n"
    later = _hold_silently(mailbox, "news@list.test", "Next week")
    assert [i["id"] for i in json.loads(mailbox.ok("pending", "list", "--new", "--json"))] \
        == [later]
    text = _text(_digest(mailbox, "--to", "me@elsewhere.test"))
    assert f"[{later}]" in text and f"[{news}]" not in text and "since the digest of" in text


def test_stranger_strings_are_escaped_in_both_parts(mailbox: Mailbox) -> None:
    """A subject with markup and a bidi override cannot format the HTML part or reorder the
    text part; encoded words are decoded first, so they cannot smuggle either."""
    _hold_silently(mailbox, "news@list.test", "<script>x</script> =?utf-8?q?=E2=80=AEevil?=")
    digest = _digest(mailbox)
    html, text = _html(digest), _text(digest)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "\u202e" not in text and "\u202e" not in html and "evil" in text


def test_release_address_acts_once_and_sends_nothing(mailbox: Mailbox) -> None:
    """Any case, any sender; the second use reads token_used; neither sends anything."""
    held = _hold_silently(mailbox, "news@list.test", "Weekly news")
    (release,) = _addresses(_text(_digest(mailbox)), "release")
    first = mailbox.deliver(message("x@anywhere.test", "go"), "x@anywhere.test",
                            recipient=release.upper())
    assert first.returncode == 99 and f"released 1 message(s): {held}".encode() in first.stderr
    assert len(mailbox.maildir_messages()) == 1
    again = mailbox.deliver(message("x@anywhere.test", "go"), "x@anywhere.test",
                            recipient=release)
    assert again.returncode == 99 and b"token_used" in again.stderr
    assert len(mailbox.maildir_messages()) == 1
    mailbox.outbox.drain(0)
    assert mailbox.ok("whitelist", "export") == ""


def test_release_address_of_a_deleted_message_does_nothing(mailbox: Mailbox) -> None:
    held = _hold_silently(mailbox, "news@list.test", "Weekly news")
    (release,) = _addresses(_text(_digest(mailbox)), "release")
    mailbox.ok("pending", "delete", held)
    result = mailbox.deliver(message("alice@example.test", "go"), "alice@example.test",
                             recipient=release)
    assert result.returncode == 99 and b"token_used" in result.stderr
    assert mailbox.maildir_messages() == []
    mailbox.outbox.drain(0)


def test_forged_release_token_does_nothing(mailbox: Mailbox) -> None:
    held = _hold_silently(mailbox, "news@list.test", "Weekly news")
    (release,) = _addresses(_text(_digest(mailbox)), "release")
    local = release.split("@")[0]
    forged = local[:-1] + ("a" if local[-1] != "a" else "b") + "@example.test"
    result = mailbox.deliver(message("x@anywhere.test", "go"), "x@anywhere.test",
                             recipient=forged)
    assert result.returncode == 99 and b"token_forged" in result.stderr
    # A release token is no accept token: the purposes are salted apart.
    swapped = release.replace("-release-", "-accept-")
    result = mailbox.deliver(message("x@anywhere.test", "go"), "x@anywhere.test",
                             recipient=swapped)
    assert b"token_forged" in result.stderr
    assert mailbox.maildir_messages() == [] and held in mailbox.ok("pending", "list")
    mailbox.outbox.drain(0)


def test_accept_address_releases_all_from_the_sender_and_whitelists_him(
        mailbox: Mailbox) -> None:
    first = _hold_silently(mailbox, "news@list.test", "One")
    second = _hold_silently(mailbox, "news@list.test", "Two")
    other = _hold_silently(mailbox, "promo@shop.test", "Sale")
    text = _text(_digest(mailbox))
    accepts = _addresses(text, "accept")
    assert len(accepts) == 2 and "releases the 2 held from this sender" in text
    found = re.search(r"From: +news@list\.test\n.*?accept: +(\S+)", text, re.DOTALL)
    assert found is not None and found.group(1) in accepts
    news_accept = found.group(1)
    result = mailbox.deliver(message("alice@example.test", "ok"), "alice@example.test",
                             recipient=news_accept)
    assert result.returncode == 99, result.stderr
    assert first.encode() in result.stderr and second.encode() in result.stderr
    assert len(mailbox.maildir_messages()) == 2
    entries = json.loads(mailbox.ok("whitelist", "list", "--json"))
    assert [(e["pattern"], e["note"]) for e in entries] == [
        ("news@list.test", "released by owner")]
    assert [i["id"] for i in json.loads(mailbox.ok("pending", "list", "--json"))] == [other]
    again = mailbox.deliver(message("alice@example.test", "ok"), "alice@example.test",
                            recipient=news_accept)
    assert b"token_used" in again.stderr
    mailbox.outbox.drain(0)


def test_digest_coming_back_is_delivered_not_held(mailbox: Mailbox) -> None:
    """Null sender and Auto-Submitted would hold it; its signed Message-ID delivers it. A
    Message-ID of the same shape that does not verify is held like any bounce."""
    _hold_silently(mailbox, "news@list.test", "Weekly news")
    digest = _digest(mailbox)
    back = mailbox.deliver(digest.as_bytes(), "")
    assert back.returncode == 0, back.stderr  # qmail: the next .qmail line delivers it
    postfix = mailbox.deliver(digest.as_bytes(), "", args=("--mta", "postfix"))
    assert postfix.returncode == 0 and b"own_digest" not in postfix.stderr
    assert len(mailbox.maildir_messages()) == 1
    forged = digest.as_bytes().replace(digest["Message-ID"][20:26].encode(), b"aaaaaa")
    held = mailbox.deliver(forged, "")
    assert held.returncode == 99 and b"null_sender" in held.stderr
    mailbox.outbox.drain(0)


def test_bounced_digest_is_held_as_a_bounce_and_makes_no_digest(mailbox: Mailbox) -> None:
    """The bounce is held (null_sender, no challenge); on its own it makes no new digest, so
    a digest address that bounces cannot keep mail going round."""
    _hold_silently(mailbox, "news@list.test", "Weekly news")
    digest = _digest(mailbox)
    bounce = (b"From: MAILER-DAEMON@mx.example.test\nTo: alice@example.test\n"
              b"Subject: Undelivered Mail Returned to Sender\nMessage-ID: <b1@mx.example.test>\n"
              b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
              b"--b\n\nUser unknown.\n--b\nContent-Type: message/rfc822\n\n"
              + digest.as_bytes() + b"\n--b--\n")
    result = mailbox.deliver(bounce, "")
    assert result.returncode == 99 and b"without challenge (null_sender)" in result.stderr
    assert mailbox.maildir_messages() == []
    assert mailbox.ok("digest") == "nothing new since the last digest; nothing sent\n"
    mailbox.outbox.drain(0)
    _hold_silently(mailbox, "news@list.test", "Next week")
    text = _text(_digest(mailbox))
    assert "null_sender: 1 held" in text and "Next week" in text


def test_failed_sendmail_keeps_everything_new(mailbox: Mailbox) -> None:
    held = _hold_silently(mailbox, "news@list.test", "Weekly news")
    failed = mailbox.run("digest", extra_env={"CRTOOL_TEST_SENDMAIL_EXIT": "75"})
    assert failed.returncode == 4 and failed.stderr.count(b"\n") == 1
    mailbox.outbox.drain(1)
    assert [i["id"] for i in json.loads(mailbox.ok("pending", "list", "--new", "--json"))] \
        == [held]
    assert f"[{held}]" in _text(_digest(mailbox))


def test_ten_thousand_held_stay_one_readable_mail(mailbox: Mailbox) -> None:
    """The newest 20 per reason are listed and the rest counted; --json has them all."""
    from tests.integration.held_rows import hold_many

    hold_many(mailbox, {"list_headers": 9_000, "noreply_sender": 990, "challenged": 10})
    items = json.loads(mailbox.ok("digest", "--json"))
    assert len(items) == 10_000 and all(i["release_address"] for i in items)
    mailbox.outbox.drain(0)
    text = _text(_digest(mailbox))
    assert len(_addresses(text, "release")) == 20 + 20 + 10
    assert "... and 8980 more held for list_headers" in text
    assert "... and 970 more held for noreply_sender" in text
    assert text.index("list_headers") < text.index("noreply_sender") < text.index("challenged")
    assert len(text) < 40_000


def test_release_address_of_an_expired_message_does_nothing(mailbox: Mailbox) -> None:
    """Once its message is purged the address is unknown: nothing delivered, nothing sent."""
    _hold_silently(mailbox, "news@list.test", "Weekly news")
    (release,) = _addresses(_text(_digest(mailbox)), "release")
    time.sleep(1.1)  # purge takes what was received before this second
    mailbox.ok("pending", "purge", "--older-than", "0s")
    result = mailbox.deliver(message("alice@example.test", "go"), "alice@example.test",
                             recipient=release)
    assert result.returncode == 99 and b"token_unknown" in result.stderr
    assert mailbox.maildir_messages() == []
    mailbox.outbox.drain(0)
