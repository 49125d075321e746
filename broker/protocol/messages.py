"""Building the frames the broker sends: responses to requests and pushed events."""

from __future__ import annotations

from typing import Any

from .errors import ErrorCode


def ok_response(request_id: int | None, **result: Any) -> dict[str, Any]:
    return {"re": request_id, "ok": True, **result}


def error_response(
    request_id: int | None, code: ErrorCode, message: str, **details: Any
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": str(code), "message": message}
    if details:
        error.update(details)
    return {"re": request_id, "ok": False, "error": error}


def event(name: str, **fields: Any) -> dict[str, Any]:
    return {"event": name, **fields}
