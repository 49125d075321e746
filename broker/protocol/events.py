"""The events a broker pushes to a logged-in session, and the mailbox entry they carry.

Events are tagged by their `event` field (docs/protocol.md §6); encode them with
broker.protocol.wire.encode_event, read them with wire.decode_event.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Timestamp = Annotated[
    str,
    Meta(
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$",
        description="ISO 8601 in UTC with microseconds: 2026-11-30T08:11:41.538509Z",
        extra_json_schema={"format": "date-time"},
    ),
]


class Receipts(msgspec.Struct, kw_only=True):
    """How far a message the user sent got: of `total` recipients, how many have it delivered,
    read (as far as their read receipts tell) and acknowledged."""

    total: int
    delivered: int
    read: int
    acked: int


class Entry(msgspec.Struct, kw_only=True):
    """A mailbox entry as its owner sees it: in `mail` events, `inbox` and `history` pages."""

    seq: int | None  # null only for a history item the user sent and did not receive
    message_id: int
    kind: Literal["email", "text", "announcement", "rickroll"]
    sender: str | None  # null for a rick-roll the user received
    recipients: list[str]
    subject: str | None
    body: str
    sent_at: Timestamp
    read: bool
    direction: Literal["in", "out"]
    # Its thread (the id of the thread's first message; its own id when it starts one) and the
    # message it replies to. Absent from brokers before threads: a client reads them as None.
    thread_id: int | None = None
    in_reply_to: int | None = None
    require_ack: bool = False  # the sender asks for an `acknowledge`
    # Only on history items the user sent (`direction` out): the delivery ledger's counts.
    # Absent elsewhere (not null): the same bytes as the broker's plain mail event frames.
    receipts: Receipts | msgspec.UnsetType = msgspec.UNSET
    # Only on entries their owner archived (`inbox` with `archived`, `history`): true. Absent
    # elsewhere, like receipts, so a pushed mail frame keeps its bytes.
    archived: Literal[True] | msgspec.UnsetType = msgspec.UNSET
    # Only on entries their owner acknowledged (`acknowledge`), in `inbox` and `history`: true.
    acked: Literal[True] | msgspec.UnsetType = msgspec.UNSET


class _Event(msgspec.Struct, kw_only=True, tag_field="event"):
    """Every event is tagged by its name, `event`."""


class MailEvent(_Event, tag="mail"):
    """A new entry in this session's user's mailbox, pushed in seq order."""

    entry: Entry


class PresenceEvent(_Event, tag="presence"):
    """A user's first live session started (online) or their last one ended (offline)."""

    username: str
    online: bool


class PresenceBatchEvent(_Event, tag="presence_batch"):
    """The presence changes of one tick, for a client that logged in with presence_batch: the
    users who came online and who went offline, each named once, as they were at its end."""

    online: list[str]
    offline: list[str]


MailboxChange = Literal["read", "unread", "deleted", "archived", "unarchived", "acked"]


class MailboxEvent(_Event, tag="mailbox"):
    """Entries of this session's user changed, by any of their sessions (on any node): pushed
    to all of them, so every session shows the same mailbox."""

    change: MailboxChange
    seqs: list[int]


class ReceiptEvent(_Event, tag="receipt"):
    """To a message's sender: one recipient's entry was delivered, read (unless they turned
    read receipts off) or acknowledged."""

    message_id: int
    username: str
    state: Literal["delivered", "read", "acked"]
    at: Timestamp


Event = MailEvent | PresenceEvent | PresenceBatchEvent | MailboxEvent | ReceiptEvent

EVENT_TYPES: tuple[type[_Event], ...] = (
    MailEvent,
    PresenceEvent,
    PresenceBatchEvent,
    MailboxEvent,
    ReceiptEvent,
)

__all__ = [
    "EVENT_TYPES",
    "Entry",
    "Event",
    "MailEvent",
    "MailboxChange",
    "MailboxEvent",
    "PresenceBatchEvent",
    "PresenceEvent",
    "ReceiptEvent",
    "Receipts",
    "Timestamp",
]
