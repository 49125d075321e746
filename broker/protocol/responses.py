"""What the broker answers: one result type per operation, and the error of a failed request.

A result holds the operation's fields only; the envelope (`"re": <request id>, "ok": true`
before them, or `"ok": false` and an `error`) is written by broker.protocol.wire, the one place
where frames are encoded. The HTTP API (docs/http-api.md) answers with the same result types
where its shape is the same (broker/web/openapi.py is generated from them).

`RESULT_TYPES` maps each operation to its result type; `ack` has none (no answer on success).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from .errors import ErrorCode
from .events import Entry, Timestamp

Role = Literal["admin", "user"]


class Result(msgspec.Struct, kw_only=True):
    """Base of every result."""


class LoginResult(Result):
    """The answer to `login` and to `resume`."""

    username: str
    role: Role
    token: str
    created: bool
    last_seq: int
    resume_after: int
    heartbeat_interval: float
    # Present (true) only when the request asked for presence_batch events: a broker that
    # leaves it out pushes one `presence` event per change (docs/protocol.md).
    presence_batch: bool | msgspec.UnsetType = msgspec.UNSET


class LogoutResult(Result):
    bye: Literal[True] = True


class PingResult(Result):
    pong: Literal[True] = True


class SendResult(Result):
    message_id: int
    duplicate: bool


class InboxResult(Result):
    entries: list[Entry]
    unread: int
    # Present (true) only when the page was cut short to fit in a frame.
    truncated: Literal[True] | UnsetType = UNSET


class MarkReadResult(Result):
    marked: int


class MarkUnreadResult(Result):
    marked: int  # how many entries were read and are now unread


class DeleteResult(Result):
    deleted: int


class ArchiveResult(Result):
    archived: int  # how many were not archived yet


class UnarchiveResult(Result):
    unarchived: int  # how many were archived and are back in the inbox


class AdminRetentionResult(Result):
    rules: dict[str, int]  # kind -> days kept; a kind not listed is kept for ever


class OnlineUser(Result):
    """One line of `who`."""

    username: str
    since: Timestamp
    idle_seconds: float
    sessions: int


class WhoResult(Result):
    users: list[OnlineUser]


class HistoryResult(Result):
    items: list[Entry]
    truncated: Literal[True] | UnsetType = UNSET


class PrefsResult(Result):
    prank_opt_out: bool
    read_receipts: bool


class AcknowledgeResult(Result):
    message_id: int
    acked_at: Timestamp
    changed: bool  # false: acknowledged before (acked_at is that time)


class LedgerLine(Result):
    """One recipient of a message in `message_status`."""

    username: str
    state: Literal["queued", "delivered", "read", "acked"]
    delivered_at: Timestamp | None
    read_at: Timestamp | None  # null too when the recipient turned read receipts off
    acked_at: Timestamp | None


class MessageStatusResult(Result):
    message_id: int
    kind: Literal["email", "text", "announcement", "rickroll"]
    subject: str | None
    sent_at: Timestamp
    require_ack: bool
    total: int
    delivered: int  # delivered, read or acknowledged
    read: int  # read or acknowledged (as far as read receipts tell)
    acked: int
    recipients: list[LedgerLine]


class ChangePasswordResult(Result):
    token: str
    sessions_ended: int


class BlockResult(Result):
    blocked: str
    changed: bool


class UnblockResult(Result):
    unblocked: str
    changed: bool


class BlockedUser(Result):
    username: str
    since: Timestamp


class ListBlocksResult(Result):
    blocks: list[BlockedUser]


class Account(Result):
    """One line of `admin_users`."""

    username: str
    role: Role
    disabled: bool
    created: Timestamp
    online: bool


class AdminUsersResult(Result):
    users: list[Account]


class AdminSetDisabledResult(Result):
    username: str
    disabled: bool
    sessions_ended: int


class AdminKickResult(Result):
    username: str
    sessions_ended: int
    tokens_revoked: int


class LiveSessionInfo(Result):
    """One line of `admin_sessions`."""

    username: str
    client: str
    since: Timestamp
    idle_seconds: float
    address: str
    # The broker node it is on (--node-name); another node's users show one line each, with
    # how many sessions they have there (and no client or address).
    node: str = ""
    sessions: int = 1


class AdminSessionsResult(Result):
    sessions: list[LiveSessionInfo]


class PrankRecord(Result):
    message_id: int
    sent_at: Timestamp
    sender: str
    recipient: str


class AuditAction(Result):
    at: Timestamp
    admin: str | None  # null once the admin account is gone
    action: str
    target: str
    detail: str


class AdminAuditResult(Result):
    rickrolls: list[PrankRecord]
    actions: list[AuditAction]


class AdminInviteResult(Result):
    invite: str
    expires: Timestamp


class Failure(msgspec.Struct, kw_only=True):
    """The `error` object of a failed request (docs/protocol.md §7).

    `code` is one of broker.protocol.ErrorCode; a client treats an unknown code as `internal`.
    """

    code: Annotated[str, Meta(examples=[code.value for code in ErrorCode])]
    message: str
    retry_after: float | UnsetType = UNSET  # seconds, with `rate_limited`


RESULT_TYPES: Final[dict[str, type[Result]]] = {
    "login": LoginResult,
    "resume": LoginResult,
    "logout": LogoutResult,
    "ping": PingResult,
    "send": SendResult,
    "inbox": InboxResult,
    "mark_read": MarkReadResult,
    "mark_unread": MarkUnreadResult,
    "delete": DeleteResult,
    "archive": ArchiveResult,
    "unarchive": UnarchiveResult,
    "admin_retention": AdminRetentionResult,
    "who": WhoResult,
    "history": HistoryResult,
    "set_prefs": PrefsResult,
    "acknowledge": AcknowledgeResult,
    "message_status": MessageStatusResult,
    "change_password": ChangePasswordResult,
    "block": BlockResult,
    "unblock": UnblockResult,
    "list_blocks": ListBlocksResult,
    "admin_users": AdminUsersResult,
    "admin_set_disabled": AdminSetDisabledResult,
    "admin_kick": AdminKickResult,
    "admin_sessions": AdminSessionsResult,
    "admin_audit": AdminAuditResult,
    "admin_invite": AdminInviteResult,
}

__all__ = [
    "RESULT_TYPES",
    "Account",
    "AcknowledgeResult",
    "AdminAuditResult",
    "AdminInviteResult",
    "AdminKickResult",
    "AdminRetentionResult",
    "AdminSessionsResult",
    "AdminSetDisabledResult",
    "AdminUsersResult",
    "ArchiveResult",
    "AuditAction",
    "BlockResult",
    "BlockedUser",
    "ChangePasswordResult",
    "DeleteResult",
    "Failure",
    "HistoryResult",
    "InboxResult",
    "LedgerLine",
    "ListBlocksResult",
    "LiveSessionInfo",
    "LoginResult",
    "LogoutResult",
    "MarkReadResult",
    "MarkUnreadResult",
    "MessageStatusResult",
    "OnlineUser",
    "PingResult",
    "PrankRecord",
    "PrefsResult",
    "Result",
    "SendResult",
    "UnarchiveResult",
    "UnblockResult",
    "WhoResult",
]
