"""Errors as the HTTP API shows them: one JSON shape, a status code per protocol error code.

Every failure the API answers is `{"error": {"code": ..., "message": ...}}`; the codes are the
wire protocol's (docs/protocol.md) plus two that only HTTP has (`method_not_allowed`,
`unsupported_media_type`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from broker.protocol import ErrorCode

STATUS_BY_CODE: dict[str, int] = {
    ErrorCode.BAD_FRAME: 400,
    ErrorCode.FRAME_TOO_LARGE: 413,
    ErrorCode.UNKNOWN_OP: 404,
    ErrorCode.BAD_REQUEST: 422,
    ErrorCode.NOT_AUTHENTICATED: 401,
    ErrorCode.ALREADY_AUTHENTICATED: 409,
    ErrorCode.AUTH_FAILED: 401,
    ErrorCode.REGISTRATION_CLOSED: 403,
    ErrorCode.ACCOUNT_DISABLED: 403,
    ErrorCode.UNKNOWN_RECIPIENT: 422,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.PRANK_REFUSED: 403,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.QUOTA_EXCEEDED: 409,
    ErrorCode.STORAGE_FULL: 503,
    ErrorCode.TOO_MANY_CONNECTIONS: 503,
    ErrorCode.TIMEOUT: 408,
    ErrorCode.SESSION_ENDED: 401,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
    "method_not_allowed": 405,
    "unsupported_media_type": 415,
}

# Asks for a bearer token only: a `Basic` challenge would make browsers pop up a password dialog.
AUTH_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mailnet"'}

NO_STORE = {"Cache-Control": "no-store"}


def status_for(code: str) -> int:
    return STATUS_BY_CODE.get(code, 400)


def error_response(
    code: str,
    message: str,
    *,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The JSON error for `code`, with its status and the headers that go with it."""
    details = details or {}
    status = status_for(code)
    extra = dict(NO_STORE)
    if status == 401:
        extra.update(AUTH_CHALLENGE)
    retry_after = details.get("retry_after")
    if status in (429, 503) and isinstance(retry_after, int | float):
        extra["Retry-After"] = str(max(1, round(retry_after)))
    extra.update(headers or {})
    error: dict[str, Any] = {"code": str(code), "message": message, **details}
    return JSONResponse({"error": error}, status_code=status, headers=extra)


def internal_error_response() -> JSONResponse:
    return error_response(ErrorCode.INTERNAL, "internal error; it was logged")
