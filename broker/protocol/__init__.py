"""The mailnet wire protocol, sans I/O: framing, requests, responses. Imports no trio, no SQL.

Typed messages live in submodules: `requests` (what clients send), `responses` (one result
type per operation, and Failure), `events` (what the broker pushes), `wire` (encoding and
decoding them, the one place), `schema` (the JSON Schema in docs/protocol.schema.json).
"""

from . import events as events
from . import responses as responses
from . import wire as wire
from .errors import (
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    RequestRefused,
)
from .framing import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_SENT_FRAME_BYTES,
    NEED_DATA,
    FrameConnection,
    encode_frame,
)
from .messages import error_response, event, fit_page, ok_response
from .requests import (
    KINDS,
    Ack,
    History,
    Inbox,
    Login,
    Logout,
    MarkRead,
    Ping,
    Request,
    Resume,
    Send,
    SetPrefs,
    Who,
    check_password,
    normalize_username,
    parse_request,
    request_id,
)

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "KINDS",
    "MAX_SENT_FRAME_BYTES",
    "NEED_DATA",
    "Ack",
    "ErrorCode",
    "FrameConnection",
    "History",
    "Inbox",
    "LocalProtocolError",
    "Login",
    "Logout",
    "MarkRead",
    "Ping",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "RequestRefused",
    "Resume",
    "Send",
    "SetPrefs",
    "Who",
    "check_password",
    "encode_frame",
    "error_response",
    "event",
    "fit_page",
    "normalize_username",
    "ok_response",
    "parse_request",
    "request_id",
]
