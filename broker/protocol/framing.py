"""Sans-I/O framing: 4-byte big-endian length, then that many bytes of a UTF-8 JSON object.

`FrameConnection.receive_data(bytes)` buffers, `next_frame()` returns a dict or `NEED_DATA`,
`encode_frame(dict)` returns bytes. No sockets, no clock; an oversized frame is refused from its
length prefix alone, before any of its body is buffered.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Final

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME_BYTES: Final = 1024 * 1024


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


def encode_frame(obj: dict[str, Any], *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(payload) > max_frame_bytes:
        raise LocalProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"frame of {len(payload)} bytes over {max_frame_bytes}"
        )
    return HEADER.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "frame is not valid UTF-8") from None
    except (json.JSONDecodeError, RecursionError):
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "frame must be a JSON object")
    return obj


class FrameConnection:
    """Turns a byte stream into frames and back. One per connection, either side."""

    def __init__(self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._broken = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        if self._broken:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "connection is already broken")
        self._buffer += data
        # Refuse an oversized frame as soon as its header is here, before buffering the body.
        self._check_header()

    def _check_header(self) -> None:
        if len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            if length > self.max_frame_bytes:
                self._broken = True
                self._buffer.clear()
                raise RemoteProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"frame of {length} bytes is over the limit of {self.max_frame_bytes}",
                )

    def wanted_bytes(self) -> int:
        """How many more bytes the frame being read needs (a hint for receive sizes)."""
        if len(self._buffer) < HEADER.size:
            return HEADER.size - len(self._buffer)
        (length,) = HEADER.unpack_from(self._buffer)
        return max(0, HEADER.size + length - len(self._buffer))

    def next_frame(self) -> dict[str, Any] | _NeedData:
        """The next complete frame, or NEED_DATA. A malformed frame raises and is consumed."""
        if len(self._buffer) < HEADER.size:
            return NEED_DATA
        (length,) = HEADER.unpack_from(self._buffer)
        end = HEADER.size + length
        if len(self._buffer) < end:
            return NEED_DATA
        payload = bytes(self._buffer[HEADER.size : end])
        del self._buffer[:end]
        if self._buffer:
            self._check_header()
        return decode_payload(payload)

    def send(self, obj: dict[str, Any]) -> bytes:
        return encode_frame(obj, max_frame_bytes=self.max_frame_bytes)
