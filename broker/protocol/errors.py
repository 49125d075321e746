"""Error codes of the mailnet wire protocol and the exceptions that carry them.

ProtocolError            base: something is wrong with a frame or a request
├── RemoteProtocolError  the peer sent bytes or a request we cannot accept
└── LocalProtocolError   we were asked to send something the protocol forbids (our bug)

RequestRefused           a well-formed request that the broker refuses (auth, limits, ...)
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    BAD_FRAME = "bad_frame"  # not a JSON object, bad UTF-8, truncated
    FRAME_TOO_LARGE = "frame_too_large"  # length prefix over the limit
    UNKNOWN_OP = "unknown_op"
    BAD_REQUEST = "bad_request"  # missing or invalid field
    NOT_AUTHENTICATED = "not_authenticated"
    ALREADY_AUTHENTICATED = "already_authenticated"
    AUTH_FAILED = "auth_failed"  # unknown user or wrong password: deliberately one code
    REGISTRATION_CLOSED = "registration_closed"
    ACCOUNT_DISABLED = "account_disabled"
    UNKNOWN_RECIPIENT = "unknown_recipient"
    NOT_FOUND = "not_found"
    PRANK_REFUSED = "prank_refused"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXCEEDED = "quota_exceeded"
    STORAGE_FULL = "storage_full"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    TIMEOUT = "timeout"
    SESSION_ENDED = "session_ended"  # kicked, disabled or password changed: log in again
    UNAVAILABLE = "unavailable"  # the database is unreachable; retry later
    INTERNAL = "internal"


class ProtocolError(Exception):
    """A frame or request that breaks the protocol."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid. Answer with an error frame."""


class LocalProtocolError(ProtocolError):
    """This side tried to send something invalid."""


class RequestRefused(Exception):
    """A valid request that the broker will not carry out; becomes an error response."""

    def __init__(self, code: ErrorCode, message: str, **details: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
