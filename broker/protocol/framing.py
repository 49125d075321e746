"""Sans-I/O framing: 4-byte big-endian length, then that many bytes of a UTF-8 JSON object.

`FrameConnection.receive_data(bytes)` buffers, `next_frame()` returns a dict or `NEED_DATA`,
`encode_frame(dict)` returns bytes. No sockets, no clock; an oversized frame is refused from its
length prefix alone, before any of its body is buffered, and leaves the connection broken (the
next frame boundary cannot be found). A malformed frame body is consumed and reported; the
frames after it can still be read.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import struct
from typing import Any, Final, NoReturn

import orjson

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME_BYTES: Final = 1024 * 1024
# The largest frame a broker sends, and so what every client must accept: a page of long
# messages is larger than any request needs to be. Pages are cut to fit (messages.fit_page).
MAX_SENT_FRAME_BYTES: Final = 16 * 1024 * 1024

# The deepest nesting a frame may have (the top-level object is level 1) and the most digits a
# number may have (Python's own limit for int(), applied to floats too). The depth limit stays
# well below Python's recursion limit, so the standard decoder and every walk over a decoded
# frame are safe at any depth a frame may have (orjson alone would take 1,024 levels).
MAX_NESTING: Final = 512
MAX_NUMBER_DIGITS: Final = 4300

# A \uD800-\uDFFF escape may be half of a surrogate pair or a lone surrogate; only the latter
# is invalid, and it must not get in: it cannot be encoded again, to the database or to a peer.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


class _NumberRefused(ValueError):
    """A number the frame may not hold: too many digits, or too large for a double."""


def _parse_float(text: str) -> float:
    digits = sum(1 for char in text if char.isdigit())
    if digits > MAX_NUMBER_DIGITS:
        raise _NumberRefused(f"a number has more than {MAX_NUMBER_DIGITS:,} digits")
    value = float(text)
    if math.isinf(value):
        raise _NumberRefused("a number is too large for a double")
    return value


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise _NumberRefused(f"a number has more than {MAX_NUMBER_DIGITS:,} digits")
    return int(text)


# String literals (with their escapes) and everything but brackets, removed before the depth of
# a frame is measured: a bracket inside a string is not nesting.
_STRING_LITERAL = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_DEPTH_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def nesting_depth(payload: bytes) -> int:
    """How deeply a JSON text nests arrays and objects (0 for a scalar)."""
    brackets = _STRING_LITERAL.sub(b"", payload).translate(_DEPTH_STEPS, _NOT_BRACKETS)
    steps = (1 if step == 1 else -1 for step in brackets)
    return int(max(itertools.accumulate(steps, initial=0)))


# One decoder and one encoder for every frame: json.loads/dumps with options build one per call.
_DECODER: Final = json.JSONDecoder(
    parse_constant=_refuse_constant, parse_float=_parse_float, parse_int=_parse_int
)
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def json_size(obj: object) -> int:
    """How many bytes obj takes in a frame's payload."""
    return len(_ENCODER.encode(obj).encode("utf-8"))


def encode_frame(obj: dict[str, Any], *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    try:
        text = _ENCODER.encode(obj)
        payload = text.encode("utf-8")
    except (TypeError, ValueError) as exc:  # not JSON-able, NaN, a lone surrogate
        raise LocalProtocolError(ErrorCode.BAD_FRAME, f"cannot encode frame: {exc}") from None
    if len(payload) > max_frame_bytes:
        raise LocalProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"frame of {len(payload)} bytes over {max_frame_bytes}"
        )
    return HEADER.pack(len(payload)) + payload


def encode_plain_frame(
    obj: dict[str, Any], *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> bytes:
    """encode_frame for an object of JSON's own types, without floats: str, int, bool, None,
    lists and dicts with str keys (a mail event). The same bytes, several times faster
    (orjson writes exactly what the standard encoder with these options does for such values).
    Anything orjson refuses (a lone surrogate, a huge int, another type) goes the standard way
    and fails, or not, as encode_frame does."""
    try:
        payload = orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError
        return encode_frame(obj, max_frame_bytes=max_frame_bytes)
    if len(payload) > max_frame_bytes:
        raise LocalProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"frame of {len(payload)} bytes over {max_frame_bytes}"
        )
    return HEADER.pack(len(payload)) + payload


def frame_payload(payload: bytes, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """A payload already encoded (broker.protocol.wire) as a frame: its length, then it."""
    if len(payload) > max_frame_bytes:
        raise LocalProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"frame of {len(payload)} bytes over {max_frame_bytes}"
        )
    return HEADER.pack(len(payload)) + payload


def _holds_float(values: Any) -> bool:
    for value in values:
        kind = type(value)
        if kind is str or kind is int:  # nearly everything in a frame
            continue
        if kind is float:
            return True
        if kind is list:
            if _holds_float(value):
                return True
        elif kind is dict and _holds_float(value.values()):
            return True
    return False


def decode_payload(payload: bytes) -> dict[str, Any]:
    """A frame's body as a dict; RemoteProtocolError(bad_frame) for anything but a JSON object.

    orjson first (several times faster). What it accepts, the standard decoder accepts with
    the same result, but for integers past 64 bits, which orjson turns into floats: a frame
    with any float in it (no request has one) is read again the standard way. So is anything
    orjson refuses (NaN, invalid UTF-8, a lone surrogate...): the standard path decides and
    words the error exactly as it always did. Nesting deeper than MAX_NESTING and numbers of
    more than MAX_NUMBER_DIGITS digits (or past a double's range) are refused either way.
    """
    # Counting brackets is a C loop; only a frame with many of them has its depth measured.
    opening = payload.count(b"[") + payload.count(b"{")
    if opening > MAX_NESTING and nesting_depth(payload) > MAX_NESTING:
        raise RemoteProtocolError(
            ErrorCode.BAD_FRAME, f"frame is not valid JSON (nested over {MAX_NESTING} levels deep)"
        )
    try:
        fast = orjson.loads(payload)
    except orjson.JSONDecodeError:
        pass
    else:
        if type(fast) is dict and not _holds_float(fast.values()):
            return fast
    try:
        obj = _DECODER.decode(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "frame is not valid UTF-8") from None
    except _NumberRefused as exc:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"frame is not valid JSON ({exc})") from None
    except (ValueError, RecursionError):  # JSONDecodeError, NaN, a 5,000-digit number, nesting
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "frame must be a JSON object")
    if _SURROGATE_ESCAPE.search(payload):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise RemoteProtocolError(
                ErrorCode.BAD_FRAME, "frame holds a lone surrogate (\\ud800-\\udfff escape)"
            ) from None
    return obj


class FrameConnection:
    """Turns a byte stream into frames and back. One per connection, either side."""

    def __init__(
        self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, max_send_bytes: int | None = None
    ) -> None:
        self.max_frame_bytes = max_frame_bytes  # what this side accepts
        self.max_send_bytes = max_frame_bytes if max_send_bytes is None else max_send_bytes
        self._buffer = bytearray()
        self._broken = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def broken(self) -> bool:
        """True once an oversized frame was announced: nothing more can be read."""
        return self._broken

    def receive_data(self, data: bytes | bytearray) -> None:
        """Buffer bytes from the peer; raises at once if they announce an oversized frame."""
        if self._broken:
            raise RemoteProtocolError(ErrorCode.FRAME_TOO_LARGE, "connection is already broken")
        self._buffer += data
        self._check_header()

    def _check_header(self) -> None:
        if self._broken:
            raise RemoteProtocolError(ErrorCode.FRAME_TOO_LARGE, "connection is already broken")
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
        length: int = HEADER.unpack_from(self._buffer)[0]
        return max(0, HEADER.size + length - len(self._buffer))

    def next_frame(self) -> dict[str, Any] | _NeedData:
        """The next complete frame, or NEED_DATA.

        A malformed body raises RemoteProtocolError(bad_frame) and is consumed, so the caller
        may go on with the next frame. An oversized frame raises frame_too_large, here or in
        receive_data, and breaks the connection for good.
        """
        # A header that arrived behind other frames is checked when its turn comes, so the
        # frames before it are still delivered.
        self._check_header()
        if len(self._buffer) < HEADER.size:
            return NEED_DATA
        (length,) = HEADER.unpack_from(self._buffer)
        end = HEADER.size + length
        if len(self._buffer) < end:
            return NEED_DATA
        payload = bytes(self._buffer[HEADER.size : end])
        del self._buffer[:end]
        return decode_payload(payload)

    def send(self, obj: dict[str, Any]) -> bytes:
        """The frame's bytes; LocalProtocolError if it is over max_send_bytes (nothing sent)."""
        return encode_frame(obj, max_frame_bytes=self.max_send_bytes)

    def send_payload(self, payload: bytes) -> bytes:
        """send() for a payload encoded by broker.protocol.wire (typed results and events)."""
        return frame_payload(payload, max_frame_bytes=self.max_send_bytes)

    def send_plain(self, obj: dict[str, Any]) -> bytes:
        """send() for an object of JSON's own types without floats (see encode_plain_frame)."""
        return encode_plain_frame(obj, max_frame_bytes=self.max_send_bytes)
