"""The OpenAPI 3.1 description of the HTTP API, published at /openapi.json.

Written by hand so the app needs no pydantic models; the limits quoted come from
broker.protocol.requests, which is what actually enforces them. tests/test_web_fuzz.py drives
schemathesis from this document against a live broker.
"""

from __future__ import annotations

from typing import Any

from broker.protocol import KINDS
from broker.protocol.requests import (
    MAX_BODY_CHARS,
    MAX_CLIENT_MSG_ID_CHARS,
    MAX_INVITE_CHARS,
    MAX_PAGE,
    MAX_RECIPIENTS,
    MAX_SEARCH_CHARS,
    MAX_SEARCH_OFFSET,
    MAX_SUBJECT_CHARS,
)
from broker.protocol.search import MAX_QUERY_CHARS

MAX_INT = 2**62  # what broker.protocol accepts for any integer field

USERNAME = {
    "type": "string",
    "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$",
    "description": "1-32 letters, digits, '.', '_' or '-'; case does not matter.",
    "example": "bob",
}
CLIENT_MSG_ID = {
    "type": ["string", "null"],
    "minLength": 1,
    "maxLength": MAX_CLIENT_MSG_ID_CHARS,
    "description": "Your id for this send: a retry with the same id is stored once.",
}
IN_REPLY_TO = {
    "type": ["integer", "null"],
    "minimum": 1,
    "maximum": MAX_INT,
    "description": "A reply: the id of a message in the sender's history.",
}
ONE_RECIPIENT = {
    "anyOf": [USERNAME, {"type": "array", "items": USERNAME, "minItems": 1}],
    "description": "The one recipient (a list naming only that user is accepted too).",
}
SUBJECT = {"type": "string", "minLength": 1, "maxLength": MAX_SUBJECT_CHARS}
BODY = {"type": "string", "minLength": 1, "maxLength": MAX_BODY_CHARS}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": _json(_ref("Error"), "The body is not JSON (`bad_frame`)."),
    "401": _json(_ref("Error"), "Missing or invalid credentials or token."),
    "403": _json(_ref("Error"), "Refused: account disabled, registration closed, prank refused."),
    "404": _json(_ref("Error"), "No such entry in your mailbox."),
    "408": _json(_ref("Error"), "The body took too long to arrive."),
    "409": _json(_ref("Error"), "A recipient's mailbox is full."),
    "413": _json(_ref("Error"), "The body is larger than the broker's limit."),
    "415": _json(_ref("Error"), "The body is not application/json."),
    "422": _json(_ref("Error"), "A field is missing or invalid, or a recipient is unknown."),
    "429": _json(_ref("Error"), "Too many sends or failed logins; see Retry-After."),
    "503": _json(_ref("Error"), "The database is unavailable or the disk is full."),
}


def _operation(
    summary: str,
    result: str,
    *,
    body: str | None = None,
    parameters: list[dict[str, Any]] | None = None,
    secured: bool = True,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "operationId": summary.lower().replace(" ", "_").replace("-", "_"),
        "responses": {"200": _json(_ref(result), "Done."), **ERRORS},
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if parameters:
        operation["parameters"] = parameters
    if not secured:
        operation["security"] = []
    return operation


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "example": "unknown_recipient"},
                    "message": {"type": "string"},
                    "retry_after": {"type": "number"},
                },
            }
        },
    },
    "LoginRequest": {
        "type": "object",
        "required": ["username", "password"],
        "properties": {
            "username": USERNAME,
            "password": {"type": "string", "maxLength": 200, "format": "password"},
            "create": {
                "type": "boolean",
                "default": False,
                "description": "Create the account if the name is new (passwords: 6-72 bytes).",
            },
            "invite": {
                "type": "string",
                "maxLength": MAX_INVITE_CHARS,
                "description": "An invite code, when the broker's registration is 'invite'.",
            },
        },
    },
    "LoginResult": {
        "type": "object",
        "required": ["token", "username", "role", "created", "last_seq"],
        "properties": {
            "token": {"type": "string"},
            "username": {"type": "string"},
            "role": {"type": "string"},
            "created": {"type": "boolean"},
            "last_seq": {"type": "integer"},
        },
    },
    "LogoutResult": {
        "type": "object",
        "required": ["logged_out"],
        "properties": {"logged_out": {"type": "boolean"}},
    },
    "Me": {
        "type": "object",
        "required": ["username", "role", "prank_opt_out", "unread", "last_seq"],
        "properties": {
            "username": {"type": "string"},
            "role": {"type": "string"},
            "prank_opt_out": {"type": "boolean"},
            "unread": {"type": "integer"},
            "last_seq": {"type": "integer"},
        },
    },
    "Entry": {
        "type": "object",
        "required": [
            "seq",
            "message_id",
            "kind",
            "sender",
            "recipients",
            "subject",
            "body",
            "sent_at",
            "read",
            "direction",
        ],
        "properties": {
            "seq": {"type": ["integer", "null"]},
            "message_id": {"type": "integer"},
            "kind": {"type": "string", "enum": list(KINDS)},
            "sender": {"type": ["string", "null"]},
            "recipients": {"type": "array", "items": {"type": "string"}},
            "subject": {"type": ["string", "null"]},
            "body": {"type": "string"},
            "sent_at": {"type": "string", "format": "date-time"},
            "read": {"type": "boolean"},
            "direction": {"type": "string", "enum": ["in", "out"]},
            "thread_id": {"type": "integer", "description": "The thread's first message."},
            "in_reply_to": {"type": ["integer", "null"]},
        },
    },
    "EmailRequest": {
        "type": "object",
        "required": ["to", "subject", "body"],
        "properties": {
            "to": {
                "anyOf": [
                    {"type": "array", "items": USERNAME, "minItems": 1, "maxItems": MAX_RECIPIENTS},
                    USERNAME,
                ],
                "description": "The recipients (one name may be given as a string).",
            },
            "subject": SUBJECT,
            "body": BODY,
            "client_msg_id": CLIENT_MSG_ID,
            "in_reply_to": IN_REPLY_TO,
        },
    },
    "TextRequest": {
        "type": "object",
        "required": ["to", "body"],
        "properties": {
            "to": ONE_RECIPIENT,
            "body": BODY,
            "client_msg_id": CLIENT_MSG_ID,
            "in_reply_to": IN_REPLY_TO,
        },
    },
    "AnnouncementRequest": {
        "type": "object",
        "required": ["subject", "body"],
        "properties": {"subject": SUBJECT, "body": BODY, "client_msg_id": CLIENT_MSG_ID},
    },
    "RickrollRequest": {
        "type": "object",
        "required": ["to"],
        "properties": {"to": ONE_RECIPIENT, "client_msg_id": CLIENT_MSG_ID},
    },
    "SendResult": {
        "type": "object",
        "required": ["message_id", "duplicate"],
        "properties": {"message_id": {"type": "integer"}, "duplicate": {"type": "boolean"}},
    },
    "Inbox": {
        "type": "object",
        "required": ["entries", "unread"],
        "properties": {
            "entries": {"type": "array", "items": _ref("Entry")},
            "unread": {"type": "integer"},
        },
    },
    "ReadRequest": {
        "type": "object",
        "required": ["seqs"],
        "properties": {
            "seqs": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1, "maximum": MAX_INT},
                "minItems": 1,
                "maxItems": MAX_PAGE,
            }
        },
    },
    "ReadResult": {
        "type": "object",
        "required": ["marked"],
        "properties": {"marked": {"type": "integer"}},
    },
    "Invite": {
        "type": "object",
        "required": ["url", "svg", "name", "fingerprint", "message"],
        "properties": {
            "url": {
                "type": ["string", "null"],
                "description": "The web UI's LAN address; null when it listens on loopback only.",
            },
            "svg": {"type": ["string", "null"], "description": "A QR code of `url` (SVG)."},
            "name": {"type": "string", "description": "The broker's name on the LAN."},
            "fingerprint": {"type": ["string", "null"], "description": "Its TLS certificate."},
            "message": {"type": "string", "description": "What to tell the person invited."},
        },
    },
    "Who": {
        "type": "object",
        "required": ["users"],
        "properties": {
            "users": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["username", "since", "idle_seconds", "sessions"],
                    "properties": {
                        "username": {"type": "string"},
                        "since": {"type": "string", "format": "date-time"},
                        "idle_seconds": {"type": "number"},
                        "sessions": {"type": "integer"},
                    },
                },
            }
        },
    },
    "History": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": _ref("Entry")}},
    },
    "Prefs": {
        "type": "object",
        "properties": {
            "prank_opt_out": {"type": ["boolean", "null"]},
            "read_receipts": {
                "type": ["boolean", "null"],
                "description": "false: senders see your mail delivered, never read.",
            },
        },
        # At least one of the two as a boolean; one left out (or null) keeps its value.
        "anyOf": [
            {"required": ["prank_opt_out"], "properties": {"prank_opt_out": {"type": "boolean"}}},
            {"required": ["read_receipts"], "properties": {"read_receipts": {"type": "boolean"}}},
        ],
    },
    "Deleted": {
        "type": "object",
        "required": ["deleted"],
        "properties": {"deleted": {"type": "integer"}},
    },
    "Archived": {
        "type": "object",
        "required": ["archived"],
        "properties": {"archived": {"type": "integer"}},
    },
    "RetentionRequest": {
        "type": "object",
        "properties": {
            "kind": {"type": ["string", "null"], "enum": [*KINDS, None]},
            "days": {"type": ["integer", "null"], "minimum": 1, "maximum": 36500},
        },
        "description": "Admins: set the days a kind is kept (days null: for ever); "
        "without kind, only list the rules.",
    },
    "RetentionRules": {
        "type": "object",
        "required": ["rules"],
        "properties": {
            "rules": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "AcknowledgeRequest": {
        "type": "object",
        "required": ["message_id"],
        "properties": {"message_id": {"type": "integer", "minimum": 1, "maximum": MAX_INT}},
    },
    "AcknowledgeResult": {
        "type": "object",
        "required": ["message_id", "acked_at", "changed"],
        "properties": {
            "message_id": {"type": "integer"},
            "acked_at": {"type": "string", "format": "date-time"},
            "changed": {"type": "boolean"},
        },
    },
    "MessageStatus": {
        "type": "object",
        "required": ["message_id", "total", "delivered", "read", "acked", "recipients"],
        "properties": {
            "message_id": {"type": "integer"},
            "kind": {"type": "string", "enum": list(KINDS)},
            "subject": {"type": ["string", "null"]},
            "sent_at": {"type": "string", "format": "date-time"},
            "require_ack": {"type": "boolean"},
            "total": {"type": "integer"},
            "delivered": {"type": "integer"},
            "read": {"type": "integer"},
            "acked": {"type": "integer"},
            "recipients": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "username": {"type": "string"},
                        "state": {
                            "type": "string",
                            "enum": ["queued", "delivered", "read", "acked"],
                        },
                        "delivered_at": {"type": ["string", "null"], "format": "date-time"},
                        "read_at": {"type": ["string", "null"], "format": "date-time"},
                        "acked_at": {"type": ["string", "null"], "format": "date-time"},
                    },
                },
            },
        },
    },
}

LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50}


def openapi_schema() -> dict[str, Any]:
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
        "paths": {
            "/api/login": {
                "post": _operation("Log in", "LoginResult", body="LoginRequest", secured=False)
            },
            "/api/logout": {"post": _operation("Log out", "LogoutResult")},
            "/api/me": {"get": _operation("Me", "Me")},
            "/api/emails": {"post": _operation("Send email", "SendResult", body="EmailRequest")},
            "/api/texts": {"post": _operation("Send text", "SendResult", body="TextRequest")},
            "/api/announcements": {
                "post": _operation("Send announcement", "SendResult", body="AnnouncementRequest")
            },
            "/api/rickrolls": {
                "post": _operation("Send rick-roll", "SendResult", body="RickrollRequest")
            },
            "/api/inbox": {
                "get": _operation(
                    "Inbox",
                    "Inbox",
                    parameters=[
                        _query("unread", {"type": "boolean"}, "Only unread entries."),
                        _query("archived", {"type": "boolean"}, "Include archived entries."),
                        _query("limit", LIMIT, "Page size."),
                        _query(
                            "before_seq",
                            {"type": "integer", "minimum": 1, "maximum": MAX_INT},
                            "Entries older than this seq (paging).",
                        ),
                    ],
                )
            },
            "/api/read": {"post": _operation("Mark read", "ReadResult", body="ReadRequest")},
            "/api/unread": {"post": _operation("Mark unread", "ReadResult", body="ReadRequest")},
            "/api/who": {"get": _operation("Who", "Who")},
            "/api/history": {
                "get": _operation(
                    "History",
                    "History",
                    parameters=[
                        _query("with", USERNAME, "Only messages to or from this user."),
                        _query("kind", {"type": "string", "enum": list(KINDS)}, "Only this kind."),
                        _query(
                            "search",
                            {"type": "string", "maxLength": MAX_SEARCH_CHARS},
                            "Text to find in subject or body.",
                        ),
                        _query(
                            "since",
                            {"type": "string", "format": "date"},
                            "ISO date or date-time.",
                        ),
                        _query(
                            "q",
                            {"type": "string", "maxLength": MAX_QUERY_CHARS},
                            "A search (docs/protocol.md, search language): words, "
                            '"phrases", from: to: with: kind: is: before: after:. '
                            "With words, results are ranked best first.",
                        ),
                        _query(
                            "offset",
                            {"type": "integer", "minimum": 0, "maximum": MAX_SEARCH_OFFSET},
                            "Skip this many results (paging ranked results).",
                        ),
                        _query(
                            "thread",
                            {"type": "integer", "minimum": 1, "maximum": MAX_INT},
                            "Only the messages of this thread (an entry's thread_id).",
                        ),
                        _query("limit", LIMIT, "Page size."),
                        _query(
                            "before_id",
                            {"type": "integer", "minimum": 1, "maximum": MAX_INT},
                            "Messages older than this message id (paging).",
                        ),
                    ],
                )
            },
            "/api/prefs": {"put": _operation("Set prefs", "Prefs", body="Prefs")},
            "/api/delete": {"post": _operation("Delete", "Deleted", body="ReadRequest")},
            "/api/archive": {"post": _operation("Archive", "Archived", body="ReadRequest")},
            "/api/retention": {
                "post": _operation("Retention", "RetentionRules", body="RetentionRequest")
            },
            "/api/acknowledge": {
                "post": _operation("Acknowledge", "AcknowledgeResult", body="AcknowledgeRequest")
            },
            "/api/status": {
                "get": _operation(
                    "Message status",
                    "MessageStatus",
                    parameters=[
                        _query(
                            "message_id",
                            {"type": "integer", "minimum": 1, "maximum": MAX_INT},
                            "A message you sent (any message, for an admin).",
                        )
                    ],
                )
            },
            "/api/invite": {"get": _operation("Invite", "Invite")},
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
    }
