"""Reading what an HTTP request carries into the dicts that broker.protocol validates.

The body is read with a size cap (the broker's max frame size) and a deadline, so a client can
neither make the broker buffer a huge body nor hold a request open by sending it slowly. Query
strings are converted to the JSON types the protocol expects; the protocol's own parser checks
every value afterwards, so the limits live in one place.
"""

from __future__ import annotations

import json
import re
from contextlib import aclosing
from typing import Any

import trio
from starlette.requests import Request

from broker.protocol import ErrorCode, RemoteProtocolError

_INTEGER_RE = re.compile(r"-?[0-9]{1,19}")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class InputError(Exception):
    """The request cannot be read (too large, too slow, not JSON): carries an error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def read_json_object(request: Request, *, max_bytes: int, timeout: float) -> dict[str, Any]:
    """The request body as a JSON object, or InputError."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise InputError("unsupported_media_type", "send the body as application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise InputError(ErrorCode.FRAME_TOO_LARGE, f"the body is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    with trio.move_on_after(timeout) as waiting:
        async with aclosing(request.stream()) as stream:
            async for chunk in stream:
                size += len(chunk)
                if size > max_bytes:
                    raise InputError(
                        ErrorCode.FRAME_TOO_LARGE, f"the body is larger than {max_bytes} bytes"
                    )
                chunks.append(chunk)
    if waiting.cancelled_caught:
        raise InputError(ErrorCode.TIMEOUT, "the body took too long to arrive")
    raw = b"".join(chunks)
    if not raw.strip():
        raise InputError(ErrorCode.BAD_FRAME, "send a JSON object as the body")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputError(ErrorCode.BAD_FRAME, "the body is not valid UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise InputError(ErrorCode.BAD_REQUEST, "the body must be a JSON object")
    return value


def query_int(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not _INTEGER_RE.fullmatch(raw.strip()):
        raise RemoteProtocolError(ErrorCode.BAD_REQUEST, f"parameter '{name}' must be an integer")
    return int(raw)


def query_bool(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise RemoteProtocolError(ErrorCode.BAD_REQUEST, f"parameter '{name}' must be true or false")


def query_str(request: Request, name: str) -> str | None:
    """The parameter as given; an empty value is passed on (and refused) rather than ignored."""
    return request.query_params.get(name)
