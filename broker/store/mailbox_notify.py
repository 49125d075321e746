"""Mailbox changes (read, unread, deleted, archived, unarchived, acked) and senders' receipts
between broker nodes that share one PostgreSQL database: NOTIFY on their own channel, sent at
the commit of the change, so every node pushes the change to its own live sessions of that
user. Ids only in the payload."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from sqlalchemy import Connection, Engine, text

log = logging.getLogger("mailnet.notify")

CHANNEL = "mailnet_mailbox"
MAX_PAYLOAD = 7000  # PostgreSQL refuses payloads of 8,000 bytes or more
CHANGES = ("read", "unread", "deleted", "archived", "unarchived", "acked")


class MailboxChange(NamedTuple):
    node_id: str  # the node that made the change (it pushed it to its own sessions already)
    user_id: int
    change: str
    seqs: tuple[int, ...]


def announce_mailbox_change(
    conn: Connection, node_id: str, user_id: int, change: str, seqs: Sequence[int]
) -> None:
    """Queue NOTIFYs (sent at commit) as 'node|user|change|seq,seq,...', split to fit."""
    head = f"{node_id}|{user_id}|{change}|"
    chunk: list[str] = []
    size = len(head)
    for seq in seqs:
        item = str(seq)
        if chunk and size + len(item) + 1 > MAX_PAYLOAD:
            conn.execute(
                text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": head + ",".join(chunk)}
            )
            chunk, size = [], len(head)
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": head + ",".join(chunk)})


class ReceiptNotice(NamedTuple):
    """A recipient read or acknowledged a message: for its sender's sessions on every node."""

    node_id: str
    sender_id: int
    message_id: int
    state: str
    username: str


def announce_receipt(
    conn: Connection, node_id: str, sender_id: int, message_id: int, state: str, username: str
) -> None:
    """Queue a NOTIFY (sent at commit) as 'node|sender|receipt|message:state:username'."""
    payload = f"{node_id}|{sender_id}|receipt|{message_id}:{state}:{username}"
    conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": payload})


class DeliveredNotice(NamedTuple):
    """A recipient's client acknowledged entries: `delivered` for each (sender, message)."""

    node_id: str
    username: str
    delivered: tuple[tuple[int, int], ...]  # (sender id, message id)


def announce_delivered(
    conn: Connection, node_id: str, receipts: Sequence[tuple[int, int, str]]
) -> None:
    """Queue NOTIFYs (sent at commit) of (sender id, message id, recipient) receipts, one per
    recipient and payload: 'node|0|delivered|username|sender.message,...', split to fit. (Five
    fields: a node of an older version reads it as no change of its own and ignores it.)"""
    by_name: dict[str, list[str]] = {}
    for sender_id, message_id, username in receipts:
        by_name.setdefault(username, []).append(f"{sender_id}.{message_id}")
    for username, items in by_name.items():
        head = f"{node_id}|0|delivered|{username}|"
        for start in range(0, len(items), 200):  # 200 of at most 41 bytes fit well in 7,000
            payload = head + ",".join(items[start : start + 200])
            conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": payload})


def _parse_delivered(parts: list[str]) -> DeliveredNotice | None:
    pairs = []
    for item in parts[4].split(","):
        sender, _, message = item.partition(".")
        if sender.isdigit() and message.isdigit():
            pairs.append((int(sender), int(message)))
    return DeliveredNotice(parts[0], parts[3], tuple(pairs)) if pairs and parts[3] else None


def _parse_receipt(parts: list[str]) -> ReceiptNotice | None:
    message_id, _, rest = parts[3].partition(":")
    state, _, username = rest.partition(":")
    if not message_id.isdigit() or state not in ("delivered", "read", "acked") or not username:
        return None
    return ReceiptNotice(parts[0], int(parts[1]), int(message_id), state, username)


Notice = MailboxChange | ReceiptNotice | DeliveredNotice


def parse_mailbox_change(payload: str) -> Notice | None:
    parts = payload.split("|")
    if len(parts) == 5 and parts[2] == "delivered":
        return _parse_delivered(parts)
    if len(parts) == 4 and parts[1].isdigit() and parts[2] == "receipt":
        return _parse_receipt(parts)
    if len(parts) != 4 or not parts[1].isdigit() or parts[2] not in CHANGES:
        return None
    seqs = tuple(int(s) for s in parts[3].split(",") if s.isdigit())
    return MailboxChange(parts[0], int(parts[1]), parts[2], seqs) if seqs else None


def listen_for_mailbox_changes(
    engine: Engine,
    on_change: Callable[[Notice], None],
    should_stop: Callable[[], bool],
    *,
    on_listening: Callable[[], None] = lambda: None,
    poll_seconds: float = 1.0,
) -> None:
    """Blocking: call on_change for every mailbox change notice until should_stop(); reconnects."""
    import psycopg

    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    while not should_stop():
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                on_listening()
                while not should_stop():
                    for notice in conn.notifies(timeout=poll_seconds):
                        change = parse_mailbox_change(notice.payload)
                        if change is not None:
                            on_change(change)
        except psycopg.Error as exc:
            log.warning("mailbox change notices interrupted (%s); reconnecting", str(exc).strip())
            time.sleep(poll_seconds)
