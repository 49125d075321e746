"""Building the frames the broker sends: responses to requests and pushed events."""

from __future__ import annotations

from typing import Any

from .errors import ErrorCode
from .framing import MAX_SENT_FRAME_BYTES, json_size

# Room left in a frame for everything around a page's items ("re", "unread", ...).
PAGE_ENVELOPE_BYTES = 64 * 1024


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


def fit_page(
    items: list[dict[str, Any]], budget: int = MAX_SENT_FRAME_BYTES - PAGE_ENVELOPE_BYTES
) -> tuple[list[dict[str, Any]], bool]:
    """The longest prefix of items whose JSON fits in budget bytes, and whether any were cut.

    Keeps at least one item, so paging always advances (one entry is far below any budget).
    """
    # Most pages are far below the budget: an upper bound on their size spares encoding twice.
    if sum(_size_bound(item) for item in items) <= budget:
        return items, False
    used = 0
    for count, item in enumerate(items):
        used += json_size(item) + 1  # and a comma
        if used > budget and count > 0:
            return items[:count], True
    return items, False


def _size_bound(value: object) -> int:
    """At least json_size(value): 6 bytes a character (a \\u escape), 32 for anything else."""
    if isinstance(value, str):
        return 6 * len(value) + 2
    if isinstance(value, dict):
        return 2 + sum(_size_bound(k) + _size_bound(v) + 2 for k, v in value.items())
    if isinstance(value, list | tuple):
        return 2 + sum(_size_bound(v) + 1 for v in value)
    return 32
