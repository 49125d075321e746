"""The sender's delivery ledger and acknowledged messages: per recipient, queued, delivered
(a client of theirs acknowledged the entry's seq), read and acknowledged, with times; read
receipts a user may turn off. A mixin of MailStore; each method opens its own transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, cast

from sqlalchemy import ColumnElement, Table, and_, case, func, not_, or_, select, update

from .database import Engines
from .mailbox_notify import announce_mailbox_change, announce_receipt
from .models import MailboxEntry, Message, User, utcnow

users = cast(Table, User.__table__)
messages = cast(Table, Message.__table__)
mailbox = cast(Table, MailboxEntry.__table__)


class NotInMailbox(Exception):
    """The message is not in this user's mailbox."""


class NotAcknowledgeable(Exception):
    """The message does not ask to be acknowledged."""


@dataclass(frozen=True, slots=True)
class Acknowledged:
    seq: int
    sender_id: int
    at: datetime
    changed: bool  # False: it was acknowledged before


@dataclass(frozen=True, slots=True)
class LedgerLine:
    """One recipient of a message, as its sender sees them."""

    username: str
    state: str  # queued, delivered, read or acked
    delivered_at: datetime | None
    read_at: datetime | None  # None when the recipient turned read receipts off
    acked_at: datetime | None


@dataclass(frozen=True, slots=True)
class MessageLedger:
    message_id: int
    sender_id: int
    kind: str
    subject: str | None
    sent_at: datetime
    require_ack: bool
    recipients: list[LedgerLine]


@dataclass(frozen=True, slots=True)
class ReadReceipt:
    message_id: int
    sender_id: int


# A long-offline user's whole backlog acknowledged at once is recorded in full, but its senders
# are told of at most this many entries a flush (message_status has them all).
MAX_DELIVERED_RECEIPTS = 1000


class DeliveredReceipt(NamedTuple):
    """An entry a recipient's client acknowledged (`ack`): its sender's `delivered` receipt."""

    sender_id: int
    message_id: int
    username: str  # the recipient


class Delivered(NamedTuple):
    """What an ack flush recorded: when, and whom to tell."""

    at: datetime
    receipts: list[DeliveredReceipt]


def delivered_receipts(conn, newly: ColumnElement[bool]) -> list[DeliveredReceipt]:  # type: ignore[no-untyped-def]
    """The receipts of the entries `newly` selects (one user's, about to be marked delivered),
    read in the ack flush's own transaction: not for the user's own messages, nor for entries
    whose sender already heard more (read, with read receipts on, or acknowledged)."""
    told_more = or_(
        mailbox.c.acked_at.is_not(None),
        and_(mailbox.c.read_at.is_not(None), users.c.read_receipts.is_(True)),
    )
    rows = conn.execute(
        select(messages.c.sender_id, mailbox.c.message_id, users.c.username)
        .select_from(mailbox)
        .join(messages, messages.c.id == mailbox.c.message_id)
        .join(users, users.c.id == mailbox.c.user_id)
        .where(newly, messages.c.sender_id != mailbox.c.user_id, not_(told_more))
        .order_by(mailbox.c.seq)
        .limit(MAX_DELIVERED_RECEIPTS)
    )
    return [DeliveredReceipt(row[0], row[1], row[2]) for row in rows]


def receipt_counts(conn, message_ids: Sequence[int]) -> dict[int, tuple[int, int, int, int]]:  # type: ignore[no-untyped-def]
    """Per message: (recipients, delivered, read, acknowledged), as message_ledger counts
    them (read only where the recipient allows read receipts). One grouped query."""
    if not message_ids:
        return {}
    delivered = or_(
        mailbox.c.delivered_at.is_not(None),
        mailbox.c.read_at.is_not(None),
        mailbox.c.acked_at.is_not(None),
        mailbox.c.seq <= users.c.acked_seq,
    )
    read = or_(
        and_(mailbox.c.read_at.is_not(None), users.c.read_receipts.is_(True)),
        mailbox.c.acked_at.is_not(None),
    )
    rows = conn.execute(
        select(
            mailbox.c.message_id,
            func.count(),
            func.sum(case((delivered, 1), else_=0)),
            func.sum(case((read, 1), else_=0)),
            func.sum(case((mailbox.c.acked_at.is_not(None), 1), else_=0)),
        )
        .join(users, users.c.id == mailbox.c.user_id)
        .where(mailbox.c.message_id.in_(list(message_ids)))
        .group_by(mailbox.c.message_id)
    )
    return {row[0]: (int(row[1]), int(row[2]), int(row[3]), int(row[4])) for row in rows}


class LedgerStoreMixin:
    engines: Engines

    @property
    def shares_commits(self) -> bool:  # MailStore's (PostgreSQL: several nodes)
        raise NotImplementedError

    def acknowledge(self, user_id: int, message_id: int, node_id: str = "") -> Acknowledged:
        """The user acknowledges a message in their mailbox that asks for it."""
        with self.engines.write.begin() as conn:
            row = conn.execute(
                select(
                    mailbox.c.id,
                    mailbox.c.seq,
                    mailbox.c.acked_at,
                    messages.c.sender_id,
                    messages.c.require_ack,
                )
                .join(messages, messages.c.id == mailbox.c.message_id)
                .where(mailbox.c.user_id == user_id, mailbox.c.message_id == message_id)
            ).first()
            if row is None:
                raise NotInMailbox(message_id)
            if not row.require_ack:
                raise NotAcknowledgeable(message_id)
            if row.acked_at is not None:
                return Acknowledged(row.seq, row.sender_id, row.acked_at, changed=False)
            now = utcnow()
            conn.execute(update(mailbox).where(mailbox.c.id == row.id).values(acked_at=now))
            if node_id and self.shares_commits:
                announce_mailbox_change(conn, node_id, user_id, "acked", [row.seq])
        return Acknowledged(row.seq, row.sender_id, now, changed=True)

    def message_ledger(self, message_id: int) -> MessageLedger | None:
        """Every recipient's state of one message, recipients in name order."""
        with self.engines.read.connect() as conn:
            message = conn.execute(
                select(
                    messages.c.id,
                    messages.c.sender_id,
                    messages.c.kind,
                    messages.c.subject,
                    messages.c.created_at,
                    messages.c.require_ack,
                ).where(messages.c.id == message_id)
            ).first()
            if message is None:
                return None
            rows = conn.execute(
                select(
                    users.c.username,
                    users.c.read_receipts,
                    users.c.acked_seq,
                    mailbox.c.seq,
                    mailbox.c.delivered_at,
                    mailbox.c.read_at,
                    mailbox.c.acked_at,
                )
                .join(users, users.c.id == mailbox.c.user_id)
                .where(mailbox.c.message_id == message_id)
                .order_by(users.c.username)
            ).all()
        lines = []
        for row in rows:
            read_at = row.read_at if row.read_receipts else None
            # Reading or acknowledging it on any client means it was handed over.
            delivered_at = row.delivered_at or row.read_at or row.acked_at
            if row.acked_at is not None:
                state = "acked"
            elif read_at is not None:
                state = "read"
            elif delivered_at is not None or row.seq <= row.acked_seq:
                state = "delivered"
            else:
                state = "queued"
            lines.append(LedgerLine(row.username, state, delivered_at, read_at, row.acked_at))
        return MessageLedger(
            message.id,
            message.sender_id,
            message.kind,
            message.subject,
            message.created_at,
            bool(message.require_ack),
            lines,
        )

    def read_receipts_for(self, user_id: int, seqs: Sequence[int]) -> list[ReadReceipt]:
        """Whom to tell that the user read these entries: none when they turned receipts off."""
        with self.engines.read.connect() as conn:
            wants = conn.execute(
                select(users.c.read_receipts).where(users.c.id == user_id)
            ).scalar()
            if not wants or not seqs:
                return []
            rows = conn.execute(
                select(messages.c.id, messages.c.sender_id)
                .join(mailbox, mailbox.c.message_id == messages.c.id)
                .where(mailbox.c.user_id == user_id, mailbox.c.seq.in_(list(seqs)))
            ).all()
        return [ReadReceipt(row.id, row.sender_id) for row in rows if row.sender_id != user_id]

    def announce_receipts(self, node_id: str, receipts: list[tuple[int, int, str, str]]) -> None:
        """Tell the other nodes (PostgreSQL) of receipts: (sender id, message id, state, name)."""
        if not receipts or not self.shares_commits:
            return
        with self.engines.write.begin() as conn:
            for sender_id, message_id, state, username in receipts:
                announce_receipt(conn, node_id, sender_id, message_id, state, username)

    def set_read_receipts(self, user_id: int, value: bool) -> None:
        with self.engines.write.begin() as conn:
            conn.execute(update(users).where(users.c.id == user_id).values(read_receipts=value))

    def read_receipts_enabled(self, user_id: int) -> bool:
        with self.engines.read.connect() as conn:
            value = conn.execute(
                select(users.c.read_receipts).where(users.c.id == user_id)
            ).scalar()
        return bool(value)
