"""The owner's digest: what was held since the last one, as one message to the owner.

What crtool holds without a challenge (lists, receipts, password resets, rate-limited strangers)
is otherwise seen only by an owner who runs `crtool pending list`. The digest lists it grouped
by reason, newest first, each message with a release address and each sender with an accept
address (signed tokens, purposes "release" and "accept"), so acting on it is one reply from any
mail client. Plain text that reads in mutt, plus an HTML part for a webmail; every string a
stranger wrote is cut to one line with its control and bidi characters made visible, and the
HTML part is autoescaped. A digest of ten thousand messages stays one readable mail: the newest
TOP per reason are listed and the rest counted (`--json` has them all).

Its Message-ID is signed (purpose "digest"), so when it comes back to this crtool through the
MTA (null sender, Auto-Submitted) it is recognised and delivered rather than held. A bounce of
a digest is a bounce like any other (held, never answered) and never makes a digest by itself,
so a digest address that bounces cannot keep a loop going.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from crtool import addresses, tokens
from crtool.config import Settings
from crtool.errors import BadToken, TemporaryFailure
from crtool.message import clean_text, decode_words
from crtool.store import digests
from crtool.store.engine import transaction
from crtool.store.models import Pending
from crtool.terminal import shown

if TYPE_CHECKING:
    from crtool.service import Mailbox

TOP = 20
TEXT_TEMPLATE = "digest.txt"
HTML_TEMPLATE = "digest.html"
MESSAGE_ID_PREFIX = "crtool-digest."
# Reasons under which a bounce is held; one of these that quotes a digest's Message-ID is that
# digest bouncing, which never makes a new digest on its own.
BOUNCE_REASONS = frozenset({"null_sender", "double_bounce", "mailer_daemon"})
BOUNCE_SCAN = 64 * 1024
_POLICY = default_policy.clone(max_line_length=78)
_MESSAGE_ID = re.compile(r"^<" + re.escape(MESSAGE_ID_PREFIX) + r"([a-z2-7]+)@[^<>\s]+>$",
                         re.IGNORECASE)


@dataclass(frozen=True)
class Entry:
    """One held message as the digest shows it; every text already safe to show."""

    id: str
    sender: str
    from_header: str
    subject: str
    received_at: str
    size: int
    release_address: str
    accept_address: str
    sender_held: int

    @property
    def size_text(self) -> str:
        return f"{self.size} B" if self.size < 1024 else f"{(self.size + 1023) // 1024} KB"


@dataclass(frozen=True)
class Group:
    reason: str
    total: int
    entries: tuple[Entry, ...]

    @property
    def more(self) -> int:
        return self.total - len(self.entries)


@dataclass(frozen=True)
class Report:
    """A digest's content: what the templates render and `--json` prints."""

    owner: str
    since: str
    total: int
    groups: tuple[Group, ...] = field(default_factory=tuple)
    # With `web_url` set: a one-time link that logs the owner in to the web pages (valid for
    # login.LOGIN_TTL from sending, once); "" otherwise.
    login_url: str = ""


def safe(text: str, cap: int = 200) -> str:
    """A stranger's text as one visible line: control and bidi characters escaped."""
    return shown(clean_text(decode_words(text), cap * 4), cap)


def _iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


class _Addresses:
    """Release and accept addresses for held messages, an accept address once per sender."""

    def __init__(self, settings: Settings, keys: Sequence[bytes]) -> None:
        self.settings = settings
        self.keys = keys
        self.accepted: set[str] = set()

    def address(self, word: str, row: Pending) -> str:
        token = tokens.issue(self.keys, word, self.settings.owner, row.id, row.sender,
                             row.received_at)
        return addresses.action_address(self.settings.address, self.settings.delimiter, word,
                                        token)

    def entry(self, row: Pending, sender_held: int, every_accept: bool = False) -> Entry:
        accept = ""
        if every_accept or row.sender_key not in self.accepted:
            self.accepted.add(row.sender_key)
            accept = self.address(addresses.ACCEPT_WORD, row)
        return Entry(
            id=row.id, sender=safe(row.sender or "<>", 254),
            from_header=safe(row.from_header, 120), subject=safe(row.subject, 120),
            received_at=_iso(row.received_at), size=row.size,
            release_address=self.address(addresses.RELEASE_WORD, row),
            accept_address=accept, sender_held=sender_held)


def _report(session: Session, settings: Settings, keys: Sequence[bytes], condition: Any,
            since: int | None) -> Report:
    counts = digests.reason_counts(session, condition)
    # Reasons with most held first, so that the bulk of the mail is seen first.
    order = sorted(counts, key=lambda reason: (-counts[reason], reason))
    shown = {reason: digests.newest(session, condition, reason, TOP) for reason in order}
    held = digests.held_counts(session, settings.owner, sorted(
        {row.sender_key for rows in shown.values() for row in rows}))
    made = _Addresses(settings, keys)
    groups = tuple(
        Group(reason, counts[reason],
              tuple(made.entry(row, held.get(row.sender_key, 0)) for row in shown[reason]))
        for reason in order)
    return Report(owner=settings.address, since=_iso(since) if since else "",
                  total=sum(counts.values()), groups=groups)


def json_items(box: Mailbox) -> Iterator[dict[str, Any]]:
    """`digest --json`: every held message a digest sent now would report, with its
    addresses; nothing is sent or marked."""
    with transaction(box.engine, write=False) as session:
        condition = digests.new_condition(box.owner)
        made = _Addresses(box.settings, box.keys())
        for row in digests.every(session, condition):
            entry = made.entry(row, 0, every_accept=True)
            yield {"id": row.id, "reason": row.reason, "sender": row.sender,
                   "from": row.from_header, "subject": row.subject,
                   "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                time.gmtime(row.received_at)),
                   "size": row.size, "release_address": entry.release_address,
                   "accept_address": entry.accept_address}


@dataclass(frozen=True)
class Sent:
    """What `send` did: the digest's id ("" when nothing was sent) and how many it reported."""

    digest_id: str
    held: int
    recipient: str


def send(box: Mailbox, recipient: str | None = None) -> Sent:
    """Mail the digest of what is new, or nothing when nothing is new (or only bounces of
    earlier digests are). Side effects: one message through the outbox; the reported held
    messages marked as reported. A sendmail failure gives them back and raises
    TemporaryFailure."""
    settings = box.settings
    to = recipient or settings.digest_to or settings.address
    digest_id = tokens.new_token_id()
    keys = box.keys()
    with transaction(box.engine) as session:
        now = box.now()
        claimed = digests.claim(session, box.owner, digest_id, to, now)
        if claimed and _only_digest_bounces(session, box.owner, digest_id):
            claimed = 0
        if not claimed:
            digests.give_back(session, box.owner, digest_id)
            return Sent("", 0, to)
    try:
        with transaction(box.engine, write=False) as session:
            since = digests.last_sent(session, box.owner)
            report = _report(session, settings, keys,
                             _claimed_by(box.owner, digest_id), since)
        if settings.web_url:
            report = replace(report, login_url=_login_url(box))
        message = build(settings, report, to, digest_id, keys, now)
        box.outbox.send(to, message)
    except BaseException:
        with transaction(box.engine) as session:
            digests.give_back(session, box.owner, digest_id)
        raise
    with transaction(box.engine) as session:
        digests.mark_sent(session, digest_id)
    return Sent(digest_id, claimed, to)


def _login_url(box: Mailbox) -> str:
    """A fresh one-time login link under `web_url`. Side effect: its row (see login.issue)."""
    from crtool import login  # login imports service, which imports this module

    return box.settings.web_link(f"login/{login.issue(box)}")


def due(box: Mailbox) -> bool:
    """Whether `crtool serve` should mail a digest now: `digest_every` (0: never) has passed
    since the last one that was sent, or, before the first, since the owner was set up.
    Whether anything is new is `send`'s to find out."""
    every = box.settings.digest_every
    if every <= 0:
        return False
    with transaction(box.engine, write=False) as session:
        last = digests.last_sent(session, box.owner) or digests.owner_since(session, box.owner)
    return last is None or box.now() - last >= every


def _claimed_by(owner: str, digest_id: str) -> Any:
    return (Pending.owner == owner) & (Pending.digest_id == digest_id) & \
        (Pending.status == "held")


def _only_digest_bounces(session: Session, owner: str, digest_id: str) -> bool:
    """Whether everything claimed is a bounce of an earlier digest (then nothing is sent)."""
    condition = _claimed_by(owner, digest_id)
    counts = digests.reason_counts(session, condition)
    if any(reason not in BOUNCE_REASONS for reason in counts):
        return False
    ids = [row.id for reason in counts for row in digests.newest(session, condition, reason,
                                                                 None)]
    marker = MESSAGE_ID_PREFIX.encode("ascii")
    return all(marker in head for _, head in digests.heads(session, ids, BOUNCE_SCAN))


def render(settings: Settings, report: Report) -> tuple[str, str]:
    """(text, html) bodies from templates/digest.txt and digest.html (or the owner's own in
    HOME/templates). A template that fails is a TemporaryFailure: nothing is marked sent."""
    import jinja2

    from crtool.challenge import environment

    context = {"report": report, "top": TOP}
    try:
        text = environment(settings, TEXT_TEMPLATE).get_template(TEXT_TEMPLATE).render(
            **context)
        html = environment(settings, HTML_TEMPLATE).get_template(HTML_TEMPLATE).render(
            **context)
    except jinja2.TemplateError as error:
        raise TemporaryFailure(f"digest template: {error}") from None
    return str(text), str(html)


def message_id(settings: Settings, keys: Sequence[bytes], digest_id: str, recipient: str,
               now: int) -> str:
    token = tokens.issue(keys, "digest", settings.owner, digest_id, recipient, now)
    domain = addresses.split_address(settings.address)[1]
    return f"<{MESSAGE_ID_PREFIX}{token}@{domain}>"


def build(settings: Settings, report: Report, recipient: str, digest_id: str,
          keys: Sequence[bytes], now: int) -> bytes:
    """The whole digest message, text and HTML alternatives, as sendmail takes it."""
    text, html = render(settings, report)
    message = EmailMessage(policy=_POLICY)
    local, domain = addresses.split_address(settings.address)
    message["From"] = Address(display_name="crtool digest", username=local, domain=domain)
    to_local, to_domain = addresses.split_address(recipient)
    message["To"] = Address(username=to_local, domain=to_domain)
    reasons = len(report.groups)
    message["Subject"] = (f"[crtool digest] {report.total} held message"
                          f"{'' if report.total == 1 else 's'}, {reasons} reason"
                          f"{'' if reasons == 1 else 's'}")
    message["Date"] = formatdate(now, localtime=False, usegmt=True)
    message["Message-ID"] = message_id(settings, keys, digest_id, recipient, now)
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message["X-Crtool-Digest"] = digest_id
    message.set_content(text, cte="7bit" if text.isascii() else "quoted-printable")
    message.add_alternative(html, subtype="html",
                            cte="7bit" if html.isascii() else "quoted-printable")
    return message.as_bytes()


def looks_like_own(message_id_text: str) -> bool:
    """A cheap look before any key is loaded: could this be one of our digests?"""
    return bool(_MESSAGE_ID.match(message_id_text))


def recognise(session: Session, owner: str, keys: Sequence[bytes], message_id_text: str,
              now: int, ttl: int) -> bool:
    """Whether `message_id_text` is the signed Message-ID of a digest sent to this owner."""
    match = _MESSAGE_ID.match(message_id_text)
    if match is None:
        return False
    token = match.group(1).lower()
    try:
        token_id, _ = tokens.parse(token)
    except BadToken:
        return False
    row = digests.get(session, owner, token_id)
    if row is None:
        return False
    try:
        tokens.verify(keys, "digest", owner, token, row.recipient, row.created_at, now, ttl)
    except BadToken:
        return False
    return True
