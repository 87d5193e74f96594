"""The challenge: its body rendered from a Jinja2 template in a sandbox, and the message built
around it with every header RFC 3834 asks of an automatic reply.

Jinja2 is imported only when a challenge is actually rendered. Every value that came from the
incoming message reaches the template already reduced to one clean line (message.clean_text),
and the headers are set through the email package, which refuses CR and LF in a value.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import formatdate, make_msgid
from typing import Any

from crtool import addresses
from crtool.config import Settings
from crtool.errors import TemporaryFailure
from crtool.message import Facts, clean_text, decode_words
from crtool.resources import shipped_dir

TEMPLATE = "challenge.txt"
EXCERPT_LINES = 4
EXCERPT_WIDTH = 76
SUBJECT_CAP = 120
_POLICY = default_policy.clone(max_line_length=78)


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


def excerpt(data: bytes, facts: Facts) -> tuple[str, ...]:
    """A few lines from the start of a plain-text body, never the whole message; nothing for
    encoded or multipart bodies, where the first bytes say nothing to a person."""
    content_type = (facts.get("content-type") or "text/plain").lower()
    encoding = (facts.get("content-transfer-encoding") or "7bit").strip().lower()
    if not content_type.startswith("text/plain") or encoding not in ("7bit", "8bit", ""):
        return ()
    body = re.split(rb"\r?\n\r?\n", data, maxsplit=1)
    if len(body) < 2:
        return ()
    text = body[1][:4096].decode("utf-8", "replace")
    lines = [clean_text(line, EXCERPT_WIDTH) for line in text.splitlines()]
    return tuple(line for line in lines if line)[:EXCERPT_LINES]


def context_for(settings: Settings, sender: str, facts: Facts, data: bytes, token: str,
                challenged_at: int, pending_id: str) -> ChallengeContext:
    expires = challenged_at + settings.confirm_ttl
    return ChallengeContext(
        owner=settings.address,
        sender=sender,
        confirm_address=addresses.confirm_address(settings.address, settings.delimiter, token),
        subject=clean_text(decode_words(facts.get("subject") or ""), SUBJECT_CAP),
        from_header=facts.from_header,
        date=facts.date,
        message_id=facts.message_id,
        excerpt=excerpt(data, facts),
        expires_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires)),
        pending_id=pending_id,
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


def build(settings: Settings, context: ChallengeContext, body: str, now: int) -> bytes:
    """The whole challenge message, LF line ends, as sendmail takes it on stdin."""
    subject = context.subject or "your message"
    message = EmailMessage(policy=_POLICY)
    message["From"] = context.confirm_address
    message["Reply-To"] = context.confirm_address
    # As an Address, so a local part such as "a:b" is quoted rather than read as a group.
    local, domain = addresses.split_address(context.sender)
    message["To"] = Address(username=local, domain=domain)
    message["Subject"] = f"Please confirm your message: {subject}"
    message["Date"] = formatdate(now, localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid("crtool", addresses.split_address(settings.address)[1])
    message["Auto-Submitted"] = "auto-replied"
    message["Precedence"] = "bulk"
    message["X-Auto-Response-Suppress"] = "All"
    message["X-Crtool-Challenge"] = context.pending_id
    if context.message_id:
        message["In-Reply-To"] = context.message_id
        message["References"] = context.message_id
    # Quoted-printable only where needed: 8bit needs 8BITMIME on every hop.
    message.set_content(body, cte="7bit" if body.isascii() else "quoted-printable")
    return message.as_bytes()
