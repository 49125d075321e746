"""The database schema as SQLAlchemy models. The tables themselves are made only by migrations."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC and always read back timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    password_hash: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16), default="user")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    prank_opt_out: Mapped[bool] = mapped_column(Boolean, default=False)
    # False: senders see this user's mail as "delivered", never "read".
    read_receipts: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Highest mailbox sequence number given out, and the highest one acknowledged by a client.
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    acked_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuthSession(Base):
    """A login: the hash of its bearer token (the token itself is never stored)."""

    __tablename__ = "auth_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        # Also the index of a sender's messages (sender_id leads it): a second index on
        # sender_id alone cost every send an insert for nothing (migration 0008).
        UniqueConstraint("sender_id", "client_msg_id"),
        # Replies only: most messages start no thread and are not indexed here.
        Index(
            "ix_messages_thread_id",
            "thread_id",
            sqlite_where=text("thread_id IS NOT NULL"),
            postgresql_where=text("thread_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    sender_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    # Comma-separated user names as addressed (empty for an announcement).
    recipients: Mapped[str] = mapped_column(Text, default="")
    subject: Mapped[str | None] = mapped_column(String(200), nullable=True)
    body: Mapped[str] = mapped_column(Text)
    client_msg_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A reply: the message it answers, and its thread's first message (NULL: this message
    # starts its own thread, whose id is its own). NULL costs a send nothing.
    in_reply_to: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    thread_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The sender asks each recipient to acknowledge it (announce --require-ack).
    require_ack: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class MailboxEntry(Base):
    """One message in one user's mailbox, at that user's next sequence number."""

    __tablename__ = "mailbox"
    __table_args__ = (
        UniqueConstraint("user_id", "seq"),
        Index("ix_mailbox_message_id", "message_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The sender's ledger: handed to a client of the owner (its ack moved past this seq), and
    # acknowledged by the owner (a message that asks for it). NULL costs a send nothing.
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    acked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Archived by its owner: out of the inbox unless asked for (`inbox` with `archived`).
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RetentionRule(Base):
    """How long mailbox entries of one kind are kept (set by an admin). The broker's sweep
    removes older entries only once their owner's client has acknowledged them."""

    __tablename__ = "retention_rules"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    days: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Block(Base):
    """`blocker` receives nothing (emails, texts, pranks) from `blocked`; announcements still."""

    __tablename__ = "blocks"
    __table_args__ = (UniqueConstraint("blocker_id", "blocked_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    blocker_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    blocked_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEntry(Base):
    """Something an admin did (disable, enable, kick, invite), kept for `mailnet admin audit`."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(String(200), default="")


class Invite(Base):
    """A one-use code that lets a new account register when registration is 'invite'."""

    __tablename__ = "invites"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class NodePresence(Base):
    """A user online on one broker node, when several nodes share one database (PostgreSQL).

    The node writes its rows as its users come and go and refreshes them every few seconds; rows
    past their expiry belong to a node that stopped refreshing (it died): the others ignore them,
    then delete them.
    """

    __tablename__ = "node_presence"

    node_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    username: Mapped[str] = mapped_column(String(32))
    since: Mapped[datetime] = mapped_column(UTCDateTime)
    last_active: Mapped[datetime] = mapped_column(UTCDateTime)
    sessions: Mapped[int] = mapped_column(Integer)
    # Set by the writing node (database clock) to now + three of its refresh intervals.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class LoginKey(Base):
    """A key the login throttle counts by (an account, an address, or both), shared by every
    node on one PostgreSQL database: the row is locked while an attempt is decided, and holds
    when the next attempt on the key may start (database clock, epoch seconds)."""

    __tablename__ = "login_keys"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    next_slot: Mapped[float | None] = mapped_column(Double, nullable=True)


class LoginAttemptRow(Base):
    """A login attempt on one key: in flight (failed false), or a recorded failure. Rows older
    than the throttle's window (an hour) count for nothing and are deleted."""

    __tablename__ = "login_attempts"
    __table_args__ = (Index("ix_login_attempts_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128))
    at: Mapped[float] = mapped_column(Double)
    failed: Mapped[bool] = mapped_column(Boolean)


class LoginKnownAddress(Base):
    """A network an account's owner logged in from (the throttle's known addresses)."""

    __tablename__ = "login_known_addresses"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    network: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen: Mapped[float] = mapped_column(Double)


class RateBucket(Base):
    """A token bucket shared by every node (the send rate per user): tokens left at `stamp`."""

    __tablename__ = "rate_buckets"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokens: Mapped[float] = mapped_column(Double)
    stamp: Mapped[float] = mapped_column(Double)


class ClusterCertificate(Base):
    """The TLS certificate and key every node sharing this database presents (one row), so a
    fingerprint pinned through a load balancer holds whichever node answers. Made by the first
    node that starts without --tls-cert/--tls-key; the key is as secret as the database."""

    __tablename__ = "cluster_certificate"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    cert_pem: Mapped[str] = mapped_column(Text)
    key_pem: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
