"""The HTTP API's own request bodies and results, as types (docs/http-api.md).

Where the HTTP API answers as the wire protocol does (a send, an inbox page, who, history,
prefs) it uses broker.protocol.responses' types; these are the shapes only it has. The
OpenAPI document (broker/web/openapi.py) is generated from both. The constraints written here
are the ones broker.protocol.requests enforces (api.py hands every body to parse_request).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from broker.protocol.events import MailEvent, PresenceEvent
from broker.protocol.requests import (
    MAX_BODY_CHARS,
    MAX_CLIENT_MSG_ID_CHARS,
    MAX_INVITE_CHARS,
    MAX_PAGE,
    MAX_RECIPIENTS,
    MAX_RETENTION_DAYS,
    MAX_SUBJECT_CHARS,
    MAX_TOKEN_CHARS,
    TEXT,
    Ack,
    Kind,
    Ping,
    PositiveInt,
    Seq,
    Username,
)
from broker.protocol.responses import Failure, Role

Subject = Annotated[str, Meta(min_length=1, max_length=MAX_SUBJECT_CHARS)]
Body = Annotated[str, Meta(min_length=1, max_length=MAX_BODY_CHARS)]
ClientMsgId = Annotated[
    Annotated[str, Meta(min_length=1, max_length=MAX_CLIENT_MSG_ID_CHARS)] | None,
    Meta(description="Your id for this send: a retry with the same id is stored once."),
]
Recipients = Annotated[
    Annotated[list[Username], Meta(min_length=1, max_length=MAX_RECIPIENTS)] | Username,
    Meta(description="The recipients (one name may be given as a string)."),
]
OneRecipient = Annotated[
    Username | Annotated[list[Username], Meta(min_length=1)],
    Meta(description="The one recipient (a list naming only that user is accepted too)."),
]


class LoginRequest(msgspec.Struct, kw_only=True):
    username: Username
    password: Annotated[str, Meta(max_length=200, extra_json_schema={"format": "password"})]
    create: Annotated[
        bool, Meta(description="Create the account if the name is new (passwords: 6-72 bytes).")
    ] = False
    invite: (
        Annotated[
            str,
            Meta(
                max_length=MAX_INVITE_CHARS,
                description="An invite code, when the broker's registration is 'invite'.",
            ),
        ]
        | None
    ) = None


class WebLoginResult(msgspec.Struct, kw_only=True):
    token: str
    username: str
    role: Role
    created: bool
    last_seq: int


class WebLogoutResult(msgspec.Struct, kw_only=True):
    logged_out: bool


class Invite(msgspec.Struct, kw_only=True):
    """GET /api/invite: how to invite someone on the LAN (broker/web/invite.py)."""

    url: Annotated[
        str | None, Meta(description="The web UI's LAN address; null on a loopback-only broker.")
    ]
    svg: Annotated[str | None, Meta(description="A QR code of `url` (SVG).")]
    name: Annotated[str, Meta(description="The broker's name on the LAN.")]
    fingerprint: Annotated[str | None, Meta(description="Its TLS certificate's fingerprint.")]
    message: Annotated[str, Meta(description="What to tell the person invited.")]


class Me(msgspec.Struct, kw_only=True):
    username: str
    role: Role
    prank_opt_out: bool
    read_receipts: bool  # false: senders see this user's mail delivered, never read
    unread: int
    last_seq: int


InReplyTo = Annotated[
    PositiveInt | None,
    Meta(description="A reply: the id of a message in the sender's history (keeps its thread)."),
]
RequireAck = Annotated[bool | None, Meta(description="Ask every recipient to acknowledge it.")]


class EmailRequest(msgspec.Struct, kw_only=True):
    to: Recipients
    subject: Subject
    body: Body
    client_msg_id: ClientMsgId = None
    in_reply_to: InReplyTo = None
    require_ack: RequireAck = False


class TextRequest(msgspec.Struct, kw_only=True):
    to: OneRecipient
    body: Body
    client_msg_id: ClientMsgId = None
    in_reply_to: InReplyTo = None


class AnnouncementRequest(msgspec.Struct, kw_only=True):
    subject: Subject
    body: Body
    client_msg_id: ClientMsgId = None
    require_ack: RequireAck = False


class RickrollRequest(msgspec.Struct, kw_only=True):
    to: OneRecipient
    client_msg_id: ClientMsgId = None


class ReadRequest(msgspec.Struct, kw_only=True):
    seqs: Annotated[list[PositiveInt], Meta(min_length=1, max_length=MAX_PAGE)]


class PrefsRequest(msgspec.Struct, kw_only=True):
    prank_opt_out: bool | None = None
    read_receipts: Annotated[
        bool | None, Meta(description="false: senders see 'delivered', never 'read'.")
    ] = None


class AcknowledgeRequest(msgspec.Struct, kw_only=True):
    message_id: PositiveInt


class RetentionRequest(msgspec.Struct, kw_only=True):
    kind: Kind | None = None
    days: Annotated[int, Meta(ge=1, le=MAX_RETENTION_DAYS)] | None = None


class Error(msgspec.Struct, kw_only=True):
    """Every error answer: the status tells the kind, `error.code` the reason."""

    error: Failure


# -- the WebSocket at /api/ws (docs/http-api.md) ----------------------------------------------


class Auth(msgspec.Struct, kw_only=True, tag_field="op", tag="auth"):
    """The socket's first message."""

    token: Annotated[str, TEXT, Meta(max_length=MAX_TOKEN_CHARS)]
    after_seq: Seq | None = None  # the last seq the client has seen; 0 or absent: acknowledged


class _SocketEvent(msgspec.Struct, kw_only=True, tag_field="event"):
    pass


class ReadyEvent(_SocketEvent, tag="ready"):
    """The answer to `auth`: the backlog after `resume_after` follows, then live mail."""

    username: str
    last_seq: int
    resume_after: int
    heartbeat_interval: float


class PongEvent(_SocketEvent, tag="pong"):
    pass


class ErrorEvent(_SocketEvent, tag="error"):
    error: Failure


SocketClientMessage = Auth | Ack | Ping
SocketServerMessage = ReadyEvent | MailEvent | PresenceEvent | PongEvent | ErrorEvent


__all__ = [
    "AnnouncementRequest",
    "Auth",
    "EmailRequest",
    "Error",
    "ErrorEvent",
    "LoginRequest",
    "Me",
    "PongEvent",
    "PrefsRequest",
    "ReadRequest",
    "ReadyEvent",
    "RickrollRequest",
    "SocketClientMessage",
    "SocketServerMessage",
    "TextRequest",
    "WebLoginResult",
    "WebLogoutResult",
]
