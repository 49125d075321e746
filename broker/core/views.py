"""The JSON shapes the broker shows users, shared by every transport."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from broker.protocol.events import Entry
from broker.protocol.responses import OnlineUser as OnlineUserLine
from broker.store import EntryRecord

from .presence import OnlineUser

RICKROLL_URL = "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
RICKROLL_SUBJECT = "Someone sent you a surprise"
RICKROLL_BODY = f"Never gonna give you up! (open it yourself, if you dare: {RICKROLL_URL})"


_last_iso: tuple[object, str] = (None, "")


def iso(moment: datetime) -> str:
    """'2026-11-30T09:13:58.448888Z': the wall-clock fields, microseconds always shown. (Same
    text as strftime("%Y-%m-%dT%H:%M:%S.%fZ") for years 1000-9999, at less than half its cost.)

    The last one is remembered by identity: a page of a backlog holds the messages of whole
    group commits, and the store hands out one datetime object per commit's timestamp."""
    global _last_iso
    last = _last_iso  # one read: another thread may replace it, never tear it
    if last[0] is moment:
        return last[1]
    text = moment.isoformat(timespec="microseconds")[:26] + "Z"
    _last_iso = (moment, text)
    return text


def entry_view(entry: EntryRecord) -> dict[str, Any]:
    """An entry as its owner may see it: a received rick-roll never reveals its sender."""
    hidden = entry.kind == "rickroll" and entry.direction == "in"
    view: dict[str, Any] = {
        "seq": entry.seq,
        "message_id": entry.message_id,
        "kind": entry.kind,
        "sender": None if hidden else entry.sender,
        "recipients": [] if hidden else list(entry.recipients),
        "subject": entry.subject,
        "body": entry.body,
        "sent_at": iso(entry.sent_at),
        "read": entry.read,
        "direction": entry.direction,
        "thread_id": entry.thread_id or entry.message_id,
        "in_reply_to": entry.in_reply_to,
        "require_ack": entry.require_ack,
    }
    if entry.receipts is not None:  # a history item the user sent
        total, delivered, read, acked = entry.receipts
        view["receipts"] = {"total": total, "delivered": delivered, "read": read, "acked": acked}
    if entry.archived:  # absent unless true: a pushed mail frame keeps its bytes
        view["archived"] = True
    if entry.acked:
        view["acked"] = True
    return view


def mail_event(entry: EntryRecord) -> dict[str, Any]:
    """The `mail` event pushing an entry to its owner's sessions."""
    return {"event": "mail", "entry": entry_view(entry)}


def online_user_view(user: OnlineUser) -> dict[str, Any]:
    """One line of `who`."""
    return {
        "username": user.username,
        "since": iso(user.since),
        "idle_seconds": round(user.idle_seconds, 1),
        "sessions": user.sessions,
    }


def typed_entry(entry: EntryRecord) -> Entry:
    """entry_view as broker.protocol's type (for wire.event_payload / result_payload): one
    definition of what an owner sees, in entry_view."""
    return msgspec.convert(entry_view(entry), Entry)


def typed_online_user(user: OnlineUser) -> OnlineUserLine:
    """online_user_view as broker.protocol's type."""
    return OnlineUserLine(
        username=user.username,
        since=iso(user.since),
        idle_seconds=round(user.idle_seconds, 1),
        sessions=user.sessions,
    )
