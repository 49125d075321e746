"""The OpenAPI 3.1 description of the HTTP API, published at /openapi.json.

Generated: the schemas come from the types (broker.protocol.responses for the answers the HTTP
API shares with the wire protocol, broker.web.schemas for its own bodies and results), whose
constraints are the ones broker.protocol.requests enforces; only the table of paths is written
here. tests/test_web_fuzz.py drives schemathesis from this document against a live broker.
"""

from __future__ import annotations

from typing import Any

import msgspec

from broker.protocol import requests
from broker.protocol.events import MailEvent, PresenceEvent
from broker.protocol.responses import (
    AcknowledgeResult,
    AdminRetentionResult,
    ArchiveResult,
    DeleteResult,
    HistoryResult,
    InboxResult,
    MarkReadResult,
    MarkUnreadResult,
    MessageStatusResult,
    PrefsResult,
    SendResult,
    UnarchiveResult,
    WhoResult,
)
from broker.protocol.search import MAX_QUERY_CHARS

from .schemas import (
    AcknowledgeRequest,
    AnnouncementRequest,
    Auth,
    EmailRequest,
    Error,
    ErrorEvent,
    Invite,
    LoginRequest,
    Me,
    PongEvent,
    PrefsRequest,
    ReadRequest,
    ReadyEvent,
    RetentionRequest,
    RickrollRequest,
    TextRequest,
    WebLoginResult,
    WebLogoutResult,
)

REF = "#/components/schemas/{name}"

_ERRORS = {
    "400": "The body is not JSON (`bad_frame`).",
    "401": "Missing or invalid credentials or token.",
    "403": "Refused: account disabled, registration closed, prank refused.",
    "404": "No such entry in your mailbox.",
    "408": "The body took too long to arrive.",
    "409": "A recipient's mailbox is full.",
    "413": "The body is larger than the broker's limit.",
    "415": "The body is not application/json.",
    "422": "A field is missing or invalid, or a recipient is unknown.",
    "429": "Too many sends or failed logins; see Retry-After.",
    "503": "The database is unavailable or the disk is full.",
}


def _schema(kind: Any) -> dict[str, Any]:
    """The JSON Schema of a type alias (a query parameter's)."""
    schema: dict[str, Any] = msgspec.json.schema(kind)
    return schema


def _json(kind: type, description: str) -> dict[str, Any]:
    schema = {"$ref": REF.format(name=kind.__name__)}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(
    summary: str,
    result: type,
    *,
    body: type | None = None,
    parameters: list[dict[str, Any]] | None = None,
    secured: bool = True,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "operationId": summary.lower().replace(" ", "_").replace("-", "_"),
        "responses": {
            "200": _json(result, "Done."),
            **{status: _json(Error, text) for status, text in _ERRORS.items()},
        },
    }
    if body is not None:
        schema = {"$ref": REF.format(name=body.__name__)}
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    if parameters:
        operation["parameters"] = parameters
    if not secured:
        operation["security"] = []
    return operation


def _query(
    name: str, schema: dict[str, Any], description: str, *, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }


def _paths() -> dict[str, Any]:
    limit = _schema(requests.PageSize) | {"default": 50}
    return {
        "/api/login": {
            "post": _operation("Log in", WebLoginResult, body=LoginRequest, secured=False)
        },
        "/api/logout": {"post": _operation("Log out", WebLogoutResult)},
        "/api/me": {"get": _operation("Me", Me)},
        "/api/emails": {"post": _operation("Send email", SendResult, body=EmailRequest)},
        "/api/texts": {"post": _operation("Send text", SendResult, body=TextRequest)},
        "/api/announcements": {
            "post": _operation("Send announcement", SendResult, body=AnnouncementRequest)
        },
        "/api/rickrolls": {"post": _operation("Send rick-roll", SendResult, body=RickrollRequest)},
        "/api/inbox": {
            "get": _operation(
                "Inbox",
                InboxResult,
                parameters=[
                    _query("unread", {"type": "boolean"}, "Only unread entries."),
                    _query("archived", {"type": "boolean"}, "Include archived entries."),
                    _query("limit", limit, "Page size."),
                    _query(
                        "before_seq",
                        _schema(requests.PositiveInt),
                        "Entries older than this seq (paging).",
                    ),
                ],
            )
        },
        "/api/read": {"post": _operation("Mark read", MarkReadResult, body=ReadRequest)},
        "/api/who": {"get": _operation("Who", WhoResult)},
        "/api/history": {
            "get": _operation(
                "History",
                HistoryResult,
                parameters=[
                    _query(
                        "with", _schema(requests.Username), "Only messages to or from this user."
                    ),
                    _query("kind", _schema(requests.Kind), "Only this kind."),
                    _query(
                        "search",
                        {"type": "string", "maxLength": requests.MAX_SEARCH_CHARS},
                        "Text to find in subject or body.",
                    ),
                    _query("since", {"type": "string", "format": "date"}, "ISO date or date-time."),
                    _query(
                        "thread",
                        _schema(requests.PositiveInt),
                        "Only the messages of this thread (an entry's thread_id).",
                    ),
                    _query(
                        "q",
                        {"type": "string", "maxLength": MAX_QUERY_CHARS},
                        "A search (docs/protocol.md, the search language): words, "
                        '"phrases", from: to: with: kind: is: before: after:. '
                        "With words, results are ranked best first.",
                    ),
                    _query(
                        "offset",
                        {"type": "integer", "minimum": 0, "maximum": requests.MAX_SEARCH_OFFSET},
                        "Skip this many results (paging ranked results).",
                    ),
                    _query("limit", limit, "Page size."),
                    _query(
                        "before_id",
                        _schema(requests.PositiveInt),
                        "Messages older than this message id (paging).",
                    ),
                ],
            )
        },
        "/api/prefs": {"put": _operation("Set prefs", PrefsResult, body=PrefsRequest)},
        "/api/invite": {"get": _operation("Invite", Invite)},
        "/api/unread": {"post": _operation("Mark unread", MarkUnreadResult, body=ReadRequest)},
        "/api/delete": {"post": _operation("Delete", DeleteResult, body=ReadRequest)},
        "/api/archive": {"post": _operation("Archive", ArchiveResult, body=ReadRequest)},
        "/api/unarchive": {"post": _operation("Unarchive", UnarchiveResult, body=ReadRequest)},
        "/api/acknowledge": {
            "post": _operation("Acknowledge", AcknowledgeResult, body=AcknowledgeRequest)
        },
        "/api/status": {
            "get": _operation(
                "Message status",
                MessageStatusResult,
                parameters=[
                    _query(
                        "message_id",
                        _schema(requests.PositiveInt),
                        "A message you sent (any message, for an admin).",
                        required=True,
                    )
                ],
            )
        },
        "/api/retention": {
            "post": _operation("Retention", AdminRetentionResult, body=RetentionRequest)
        },
    }


# Every type a path names, for the components: whatever they refer to comes along.
_COMPONENT_TYPES = (
    Error,
    LoginRequest,
    WebLoginResult,
    WebLogoutResult,
    Me,
    EmailRequest,
    TextRequest,
    AnnouncementRequest,
    RickrollRequest,
    SendResult,
    InboxResult,
    ReadRequest,
    MarkReadResult,
    WhoResult,
    HistoryResult,
    PrefsRequest,
    PrefsResult,
    Invite,
    MarkUnreadResult,
    DeleteResult,
    ArchiveResult,
    UnarchiveResult,
    AcknowledgeRequest,
    AcknowledgeResult,
    MessageStatusResult,
    RetentionRequest,
    AdminRetentionResult,
)
# The WebSocket's messages (OpenAPI has no words for a WebSocket: see x-websocket).
_SOCKET_CLIENT = (Auth, requests.Ack, requests.Ping)
_SOCKET_SERVER = (ReadyEvent, MailEvent, PresenceEvent, PongEvent, ErrorEvent)


def openapi_schema() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        (*_COMPONENT_TYPES, *_SOCKET_CLIENT, *_SOCKET_SERVER), ref_template=REF
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mailnet",
            "version": "1.0",
            "description": (
                "The mailnet broker's HTTP API. Authenticate with `Authorization: Bearer <token>` "
                "(from POST /api/login) or HTTP Basic. Live updates: the WebSocket at /api/ws "
                "(see docs/http-api.md)."
            ),
        },
        "security": [{"bearer": []}, {"basic": []}],
        "paths": _paths(),
        "x-websocket": {
            "/api/ws": {
                "description": "Live updates: text messages of one JSON object each "
                "(docs/http-api.md). The client sends `client`, the broker `server`.",
                "client": {
                    "oneOf": [{"$ref": REF.format(name=t.__name__)} for t in _SOCKET_CLIENT]
                },
                "server": {
                    "oneOf": [{"$ref": REF.format(name=t.__name__)} for t in _SOCKET_SERVER]
                },
            }
        },
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
    }
