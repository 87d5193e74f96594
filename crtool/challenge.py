"""The challenge: its body rendered from a Jinja2 template in a sandbox, and the message built
around it with every header RFC 3834 asks of an automatic reply.

Jinja2 is imported only when a challenge is actually rendered. Every value that came from the
incoming message reaches the template already reduced to one clean line (message.clean_text),
and the headers are written by crtool.headers, never by the email package, whose refolding
writes a decoded CR or LF verbatim on some Python versions. Nothing the stranger wrote can make
the challenge fail to build (`compose`): the hold it belongs to is never rolled back for it.
"""

from __future__ import annotations

import binascii
import functools
import re
import secrets
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from crtool import addresses, headers
from crtool.config import Settings
from crtool.errors import TemporaryFailure
from crtool.message import Facts, clean_text, is_msg_id
from crtool.resources import shipped_dir

TEMPLATE = "challenge.txt"
EXCERPT_WIDTH = 76
SUBJECT_CAP = 78  # how much of the original Subject a challenge shows
NAME_CAP = 64
SUBJECT_PREFIX = "Please confirm your message:"
NO_RECIPIENT = "undisclosed-recipients:;"  # To: when the sender's address cannot be written


@dataclass(frozen=True)
class ChallengeContext:
    """What the template may use; all of it plain, single-line or listed text."""

    owner: str
    sender: str
    confirm_address: str
    subject: str
    from_header: str
    date: str
    message_id: str
    excerpt: tuple[str, ...]
    expires_at: str
    pending_id: str
    confirm_url: str = ""


def excerpt(data: bytes, facts: Facts, lines: int) -> tuple[str, ...]:
    """At most `lines` lines from the start of a plain-text body, never the whole message;
    nothing for encoded or multipart bodies, where the first bytes say nothing to a person.
    The owner asks for them (`challenge_excerpt_lines`); by default a challenge, which may go to
    a forged address, carries none of the held message's text."""
    if lines <= 0:
        return ()
    content_type = (facts.get("content-type") or "text/plain").lower()
    encoding = (facts.get("content-transfer-encoding") or "7bit").strip().lower()
    if not content_type.startswith("text/plain") or encoding not in ("7bit", "8bit", ""):
        return ()
    body = re.split(rb"\r?\n\r?\n", data, maxsplit=1)
    if len(body) < 2:
        return ()
    text = body[1][:4096].decode("utf-8", "replace")
    cleaned = [clean_text(line, EXCERPT_WIDTH) for line in text.splitlines()]
    return tuple(line for line in cleaned if line)[:lines]


def context_for(settings: Settings, sender: str, facts: Facts, data: bytes, token: str,
                kept_until: int, pending_id: str) -> ChallengeContext:
    """`kept_until`: when the held message expires and is deleted (the date the body states)."""
    expires = kept_until
    return ChallengeContext(
        owner=settings.address,
        sender=sender,
        confirm_address=addresses.confirm_address(settings.address, settings.delimiter, token),
        subject=clean_text(facts.subject, SUBJECT_CAP),
        from_header=facts.from_header,
        date=facts.date,
        message_id=facts.message_id,
        excerpt=excerpt(data, facts, settings.challenge_excerpt_lines),
        expires_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires)),
        pending_id=pending_id,
        confirm_url=settings.web_link(f"c/{token}"),
    )


def environment(settings: Settings, template: str = TEMPLATE) -> Any:
    """The sandboxed Jinja2 environment for this owner's templates, made once per process.
    Templates named *.html are autoescaped; the text ones are mail bodies and are not.

    A resident server (`crtool serve`) renders many challenges, and compiling the template each
    time would cost more than rendering it. Jinja2 re-reads a template whose file changed; an
    override created (or edited) in HOME/templates changes the cache key, so it takes effect
    at once too.
    """
    override = settings.templates_dir / template
    try:
        stamp: int | None = override.stat().st_mtime_ns
    except OSError:
        stamp = None
    return _environment(str(settings.templates_dir), stamp)


@functools.lru_cache(maxsize=8)
def _environment(templates_dir: str, _override_stamp: int | None) -> Any:
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(
        loader=jinja2.FileSystemLoader([templates_dir, str(shipped_dir("templates"))]),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",),
                                            default_for_string=False, default=False),
        keep_trailing_newline=True,
    )


def prepare(settings: Settings) -> None:
    """Import Jinja2 and compile the template now, so that the delivery holding the write
    lock only renders it. A template that does not compile is a TemporaryFailure here, before
    anything is held."""
    import jinja2

    try:
        environment(settings).get_template(TEMPLATE)
    except jinja2.TemplateError as error:
        raise TemporaryFailure(f"challenge template: {error}") from None


def render(settings: Settings, context: ChallengeContext) -> str:
    """The body, from HOME/templates/challenge.txt if the owner has one, else the shipped one.

    A template that fails (syntax, an unknown variable, a sandbox violation) is a broken
    environment: TemporaryFailure, so the message is retried rather than held unchallenged.
    """
    import jinja2

    try:
        body: str = environment(settings).get_template(TEMPLATE).render(**context.__dict__)
    except jinja2.TemplateError as error:
        raise TemporaryFailure(f"challenge template: {error}") from None
    return body


def compose(settings: Settings, sender: str, facts: Facts, data: bytes, token: str,
            challenged_at: int, pending_id: str) -> bytes:
    """The challenge for one held message, as sendmail takes it.

    Whatever the held message's text makes fail (in the template or in `build`), the challenge
    is made again without any of it: the fixed subject, no threading headers, nothing quoted.
    Only what fails even then (the owner's template, or an owner address that cannot be
    written) is a TemporaryFailure: a broken environment.
    """
    # The held message is kept hold_ttl after its last challenge (store.pending.expired_ids).
    kept_until = challenged_at + settings.hold_ttl
    context = context_for(settings, sender, facts, data, token, kept_until, pending_id)
    try:
        return build(settings, context, render(settings, context), challenged_at)
    except Exception:  # noqa: BLE001 - any failure: try once more with none of the stranger's text
        plain = replace(context, subject="", from_header="", date="", message_id="",
                        excerpt=())
    try:
        return build(settings, plain, render(settings, plain), challenged_at)
    except TemporaryFailure:
        raise
    except Exception as error:  # noqa: BLE001 - what fails without his text is ours
        raise TemporaryFailure(f"challenge cannot be built: {error}") from None


def display_name(settings: Settings) -> str:
    """From's display name, `"Alice (confirmation)"`: the config's `name`, else the address."""
    name = clean_text(settings.name, NAME_CAP) or settings.address
    return headers.phrase(f"{name} (confirmation)", NAME_CAP + 20)


def build(settings: Settings, context: ChallengeContext, body: str, now: int) -> bytes:
    """The whole challenge message, LF line ends, as sendmail takes it on stdin.

    Always the same header fields, In-Reply-To and References only when the original has a
    valid Message-ID; each one clean line (crtool.headers). Raises ValueError when a value
    cannot be written, which `compose` answers.
    """
    confirm = headers.addr_spec(context.confirm_address)
    if confirm is None:
        raise ValueError(f"the confirm address {context.confirm_address!r} cannot be written")
    domain = addresses.split_address(confirm)[1]
    own_id = f"<{now}.{secrets.token_hex(8)}.crtool@{domain}>"
    # One recipient, given to sendmail apart from the message; To: only says who it is.
    to = headers.addr_spec(context.sender) or NO_RECIPIENT
    fields = [
        ("From", [display_name(settings), f"<{confirm}>"]),
        ("Reply-To", [confirm]),
        ("To", [to]),
        ("Subject", headers.unstructured(SUBJECT_PREFIX, context.subject or "your message",
                                         SUBJECT_CAP)),
        ("Date", [format_datetime(datetime.fromtimestamp(now, UTC))]),
        ("Message-ID", [own_id]),
        ("Auto-Submitted", ["auto-replied"]),
        ("Precedence", ["bulk"]),
        ("X-Auto-Response-Suppress", ["All"]),
        ("X-Crtool-Challenge", [context.pending_id]),
    ]
    if is_msg_id(context.message_id):
        fields += [("In-Reply-To", [context.message_id]), ("References", [context.message_id])]
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    content = text.encode("utf-8", "replace")
    # Quoted-printable only where needed: 8bit needs 8BITMIME on every hop.
    if content.isascii() and b"\0" not in content and \
            max(len(line) for line in content.split(b"\n")) <= headers.HARD_CAP:
        encoding = "7bit"
    else:
        encoding, content = "quoted-printable", binascii.b2a_qp(content, istext=True)
    fields += [("MIME-Version", ["1.0"]),
               ("Content-Type", ['text/plain; charset="utf-8"']),
               ("Content-Transfer-Encoding", [encoding])]
    head = "".join(headers.field(name, words) for name, words in fields)
    return head.encode("ascii") + b"\n" + content
