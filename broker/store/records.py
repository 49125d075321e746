"""Plain, immutable records that leave the store. No ORM object ever crosses this line.

The records made for every message (an entry, a send, its outcome and deliveries) are named
tuples: as immutable as frozen dataclasses, and built several times faster (a frozen
dataclass sets each field through object.__setattr__), which counts at tens of thousands a
second.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from broker.protocol.search import SearchQuery


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    username: str
    password_hash: str
    role: str
    disabled: bool
    prank_opt_out: bool
    last_seq: int
    acked_seq: int


class EntryRecord(NamedTuple):
    """A message as one user sees it: received (seq set) or sent by them (direction 'out')."""

    seq: int | None
    message_id: int
    kind: str
    sender: str
    recipients: tuple[str, ...]
    subject: str | None
    body: str
    sent_at: datetime
    read: bool
    direction: str
    # A reply's parent, and the first message of its thread (None: it starts its own thread).
    in_reply_to: int | None = None
    thread_id: int | None = None
    require_ack: bool = False  # the sender asks its recipients to acknowledge it
    # In its sender's history: (recipients, delivered, read, acknowledged) from the ledger.
    receipts: tuple[int, int, int, int] | None = None
    archived: bool = False  # its owner archived it (out of the inbox unless asked for)
    acked: bool = False  # its owner acknowledged it (`acknowledge`)


class SendIntent(NamedTuple):
    sender_id: int
    sender: str
    kind: str
    recipients: tuple[str, ...]
    subject: str | None
    body: str
    client_msg_id: str | None
    in_reply_to: int | None = None  # a message id the sender can see; the batch checks it
    require_ack: bool = False


class Delivery(NamedTuple):
    """A committed mailbox entry for a recipient, ready to push to their live sessions."""

    user_id: int
    username: str
    entry: EntryRecord


class SendOutcome(NamedTuple):
    """What became of one SendIntent: stored, recognised as a retry, or refused."""

    message_id: int | None = None
    duplicate: bool = False
    deliveries: tuple[Delivery, ...] = ()
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    with_user_id: int | None = None
    kind: str | None = None
    search: str | None = None
    since: datetime | None = None
    limit: int = 50
    before_id: int | None = None
    query: SearchQuery | None = None
    offset: int = 0
    thread_id: int | None = None  # only the messages of this thread
    username: str = ""  # the searching user's name (the full-text index's `people` token)


_new = tuple.__new__


def deliveries_of(
    intent: SendIntent,
    message_id: int,
    sent_at: datetime,
    targets: Iterable[tuple[int, str, int]],
    thread_id: int | None = None,
) -> tuple[Delivery, ...]:
    """The entries a stored send gives its recipients, one per (user id, name, seq), as they
    are pushed: unread, incoming. The group commit and the writer process's outcomes both build
    them here, for every message, so the named tuples are made with tuple.__new__ (their own
    __new__ is a Python function; the writer's equality test pins the field order)."""
    kind, sender, recipients, subject, body, in_reply_to, require_ack = (
        intent.kind,
        intent.sender,
        intent.recipients,
        intent.subject,
        intent.body,
        intent.in_reply_to,
        intent.require_ack,
    )
    return tuple(
        [
            _new(
                Delivery,
                (
                    user_id,
                    username,
                    _new(
                        EntryRecord,
                        (
                            seq,
                            message_id,
                            kind,
                            sender,
                            recipients,
                            subject,
                            body,
                            sent_at,
                            False,
                            "in",
                            in_reply_to,
                            thread_id,
                            require_ack,
                            None,
                            False,
                            False,
                        ),
                    ),
                ),
            )
            for user_id, username, seq in targets
        ]
    )
