"""SQLAlchemy 2.0 typed models; the schema's one source of truth (migrations follow it).

Every row carries its owner (the base address, lowercased), so one database serves many
mailboxes. Times are integer epoch seconds: portable between SQLite and PostgreSQL, and the same
number the confirm token signs. Indexes sit beside the look-ups they serve.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ADDRESS = 320


class Base(DeclarativeBase):
    pass


class Owner(Base):
    """One protected mailbox. Its row is locked by every delivery that may challenge, so the
    rate-limit counts are exact under concurrent deliveries on PostgreSQL too."""

    __tablename__ = "owners"

    address: Mapped[str] = mapped_column(String(ADDRESS), primary_key=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    # System mode (owners.py): where the owner's accepted and released mail goes, a Maildir or
    # a downstream LMTP server; an owner with neither is not served by `crtool lmtp`.
    maildir: Mapped[str | None] = mapped_column(Text, nullable=True)
    lmtp_next: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The owner's settings over the system defaults, as a JSON object ("" for none).
    overrides: Mapped[str] = mapped_column(Text, default="", server_default="")


class AddressEntry(Base):
    """A whitelist or blacklist entry; `key` is the normalised pattern (see addresses.py)."""

    __tablename__ = "address_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(ADDRESS))
    list_name: Mapped[str] = mapped_column(String(8))
    key: Mapped[str] = mapped_column(String(ADDRESS))
    kind: Mapped[str] = mapped_column(String(12))
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[int] = mapped_column(BigInteger)
    # Who put the entry there: "owner" (whitelist add, import), "confirmed" (the sender's
    # reply), "released by owner" (a release with --whitelist, or an accept address), "sent",
    # "reply", "learned". Kept apart from the owner's free-text note.
    source: Mapped[str] = mapped_column(String(20), default="owner", server_default="owner")
    # A wildcard entry's literal domain ("@example.com", "from:@example.com"), NULL for the
    # other kinds: the indexed key by which a look-up finds the few wildcards that could match
    # a message (crtool/entries.py).
    probe: Mapped[str | None] = mapped_column(String(ADDRESS), nullable=True)

    __table_args__ = (
        # Serves the look-up `owner = ? AND key IN (...)`: equality probes only; the second
        # index serves `whitelist list`.
        Index("ix_address_entries_lookup", "owner", "key", "list_name", unique=True),
        Index("ix_address_entries_list", "owner", "list_name", "key"),
        Index("ix_address_entries_probe", "owner", "probe"),
    )


class Pending(Base):
    """A held message's facts; its bytes live in `PendingChunk`, written in the same transaction.

    `id` is the random 8-character base32 id that the confirm token carries and the CLI shows.
    """

    __tablename__ = "pending"

    id: Mapped[str] = mapped_column(String(8), primary_key=True)
    owner: Mapped[str] = mapped_column(String(ADDRESS))
    sender: Mapped[str] = mapped_column(String(ADDRESS))
    sender_key: Mapped[str] = mapped_column(String(ADDRESS))
    recipient: Mapped[str] = mapped_column(String(ADDRESS))
    from_header: Mapped[str] = mapped_column(String(ADDRESS), default="")
    subject: Mapped[str] = mapped_column(String(ADDRESS), default="")
    message_id: Mapped[str] = mapped_column(String(ADDRESS), default="")
    received_at: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))
    mta: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(12))  # held | released | deleted
    reason: Mapped[str] = mapped_column(String(40))  # challenged, or why no challenge
    challenged_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    released_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The owner digest that first reported this message; NULL while it is new to the owner.
    digest_id: Mapped[str | None] = mapped_column(String(8), nullable=True)

    __table_args__ = (
        Index("ix_pending_digest", "owner", "digest", unique=True),
        # `pending list --reason`, the digest's groups and the web queue's counts and pages:
        # equality on owner, status and reason, newest first; the second serves "new since
        # the last digest" (IS NULL).
        Index("ix_pending_reason", "owner", "status", "reason", "received_at"),
        Index("ix_pending_new", "owner", "digest_id", "status", "reason", "received_at"),
        Index("ix_pending_sender", "owner", "sender_key", "status"),
        Index("ix_pending_status_received", "owner", "status", "received_at"),
        Index("ix_pending_received", "received_at"),
    )


class PendingChunk(Base):
    """The raw bytes of a held message, byte for byte, in pieces numbered from 0; dropped once
    the message leaves. Pieces, not one value: a message is streamed into the store without
    ever being whole in memory, and SQLite refuses any single value of 1 GB or more."""

    __tablename__ = "pending_chunks"

    pending_id: Mapped[str] = mapped_column(
        String(8), ForeignKey("pending.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(String(ADDRESS))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Challenge(Base):
    """One challenge: recorded before it is sent, so rate limits count it even if sending
    fails; `status` goes queued -> sent."""

    __tablename__ = "challenges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(ADDRESS))
    recipient_key: Mapped[str] = mapped_column(String(ADDRESS))
    pending_id: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(12))

    __table_args__ = (
        Index("ix_challenges_recipient", "owner", "recipient_key", "created_at"),
        Index("ix_challenges_created", "owner", "created_at"),
        Index("ix_challenges_pending", "pending_id"),
    )


class Event(Base):
    """What happened, for `stats` and for the owner's questions ("why no challenge?")."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(ADDRESS))
    at: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(String(40), default="")
    sender: Mapped[str] = mapped_column(String(ADDRESS), default="")
    pending_id: Mapped[str] = mapped_column(String(8), default="")
    # The sender's normalised address, so that `history SENDER` is one indexed look-up.
    sender_key: Mapped[str] = mapped_column(String(ADDRESS), default="", server_default="")
    # Who made the decision: "" (crtool's delivery), "sender" (his confirmation), "owner"
    # (a command or a release/accept address), "sent", "reply", "learned".
    actor: Mapped[str] = mapped_column(String(20), default="", server_default="")

    __table_args__ = (
        Index("ix_events_owner_kind", "owner", "kind", "reason"),
        Index("ix_events_at", "at"),
        # The per-day chart of the owner's web pages: one owner's last 30 days.
        Index("ix_events_owner_at", "owner", "at", "kind"),
        Index("ix_events_sender", "owner", "sender_key", "at"),
    )


class Digest(Base):
    """One digest mailed to the owner: its id is in the signed Message-ID, so the digest is
    recognised when it comes back to this crtool; `status` goes queued -> sent. The held
    messages it reports point at it (`Pending.digest_id`)."""

    __tablename__ = "digests"

    id: Mapped[str] = mapped_column(String(8), primary_key=True)
    owner: Mapped[str] = mapped_column(String(ADDRESS))
    created_at: Mapped[int] = mapped_column(BigInteger)
    recipient: Mapped[str] = mapped_column(String(ADDRESS))
    held: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(12))

    __table_args__ = (
        Index("ix_digests_owner", "owner", "status", "created_at"),
    )


class Login(Base):
    """A one-time owner login link (`crtool web login-link`): the row gives the token its issue
    time and records its use, so a link works once and only within its minutes."""

    __tablename__ = "logins"

    id: Mapped[str] = mapped_column(String(8), primary_key=True)
    owner: Mapped[str] = mapped_column(String(ADDRESS))
    created_at: Mapped[int] = mapped_column(BigInteger)
    used_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (Index("ix_logins_created", "created_at"),)


class SentMessage(Base):
    """A Message-ID the owner's mail carried out through `crtool sendmail`: a reply naming it
    (In-Reply-To, References) within `reply_window` is delivered. Message-IDs crtool minted
    verify by their signature alone; the row serves those the owner's mail program set."""

    __tablename__ = "sent_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(ADDRESS))
    message_id: Mapped[str] = mapped_column(String(255))
    sent_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        # A reply's look-up: `owner = ? AND message_id IN (...)`, equality probes only.
        Index("ix_sent_messages_lookup", "owner", "message_id", unique=True),
        Index("ix_sent_messages_sent", "sent_at"),
    )


class TaggedAddress(Base):
    """A tagged address the owner asked for (`crtool address dated|sender|keyword`): the
    token verifies without it; the row says for whom a sender address was made (`address
    check`) and whether a keyword was revoked (`revoked_at`)."""

    __tablename__ = "tagged_addresses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(ADDRESS))
    kind: Mapped[str] = mapped_column(String(12))  # dated | sender | keyword
    # The sender address or domain (sender), the word (keyword), "" (dated).
    value: Mapped[str] = mapped_column(String(ADDRESS))
    token: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (
        Index("ix_tagged_addresses_value", "owner", "kind", "value", unique=True),
        Index("ix_tagged_addresses_token", "owner", "token"),
    )


class Expectation(Base):
    """A window the owner opened (`crtool expect DOMAIN --for 2h`) in which mail from that
    domain, automated mail too, is accepted: for sign-ups and password resets."""

    __tablename__ = "expectations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(ADDRESS))
    domain: Mapped[str] = mapped_column(String(ADDRESS))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_expectations_lookup", "owner", "domain", "expires_at"),)
