"""Encoding and decoding the typed frames: the one place where requests, results, errors and
events become JSON payloads and back.

    payload = result_payload(7, SendResult(message_id=2, duplicate=False))
    frames.send_payload(payload)  # the frame's bytes: length prefix, then the payload
    result = decode_result(frame, SendResult)  # a client reading the answer

Payloads are the bytes docs/protocol.md shows: compact, UTF-8, non-ASCII unescaped, fields in
their documented order. msgspec writes exactly what the standard encoder (framing.encode_frame)
writes for strings, integers, booleans and null, several times faster; a type holding a float
goes through the standard encoder (the two spell some floats differently: 1e+16 and 1e16), and
so does anything msgspec refuses (a lone surrogate), which then fails as encode_frame fails.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

import msgspec

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .events import Event, MailboxEvent, MailEvent, PresenceEvent, ReceiptEvent
from .framing import _ENCODER
from .requests import Request
from .responses import Failure, Result

R = TypeVar("R", bound=Result)

_encode: Final = msgspec.json.Encoder().encode
_HAS_FLOAT: dict[type, bool] = {}


def _holds_float(kind: type) -> bool:
    """Whether values of this Struct type may hold a float anywhere (cached per type)."""
    known = _HAS_FLOAT.get(kind)
    if known is None:
        known = _HAS_FLOAT[kind] = _type_holds_float(msgspec.inspect.type_info(kind), set())
    return known


def _type_holds_float(info: msgspec.inspect.Type, seen: set[int]) -> bool:
    if isinstance(info, msgspec.inspect.FloatType):
        return True
    if id(info) in seen:
        return False
    seen.add(id(info))
    if isinstance(info, msgspec.inspect.StructType):
        return any(_type_holds_float(f.type, seen) for f in info.fields)
    if isinstance(info, msgspec.inspect.UnionType):
        return any(_type_holds_float(t, seen) for t in info.types)
    if isinstance(info, msgspec.inspect.ListType | msgspec.inspect.TupleType):
        return _type_holds_float(info.item_type, seen) if hasattr(info, "item_type") else True
    if isinstance(info, msgspec.inspect.DictType):
        return _type_holds_float(info.value_type, seen)
    return isinstance(info, msgspec.inspect.AnyType)


def _standard(value: object) -> bytes:
    """The payload as framing.encode_frame writes it, or LocalProtocolError."""
    try:
        return _ENCODER.encode(msgspec.to_builtins(value)).encode("utf-8")
    except (TypeError, ValueError) as exc:  # NaN, a lone surrogate, not JSON-able
        raise LocalProtocolError(ErrorCode.BAD_FRAME, f"cannot encode frame: {exc}") from None


def _payload(value: msgspec.Struct) -> bytes:
    holds_float = _HAS_FLOAT.get(type(value))
    if holds_float is None:
        holds_float = _holds_float(type(value))
    if holds_float:
        return _standard(value)
    try:
        return _encode(value)
    except (TypeError, ValueError, OverflowError):  # a lone surrogate, a huge int...
        return _standard(value)


def _envelope(request_id: int | None, ok: bool) -> bytes:
    if request_id is None:
        return b'{"re":null,"ok":true' if ok else b'{"re":null,"ok":false'
    return (b'{"re":%d,"ok":true' if ok else b'{"re":%d,"ok":false') % request_id


# -- requests (clients) ----------------------------------------------------------------------


def request_payload(request: Request, request_id: int | None = None) -> bytes:
    """`{"op": ..., "id": request_id, fields...}`; fields at their defaults are left out."""
    body = _payload(request)
    if request_id is None:
        return body
    tag = type(request).__struct_config__.tag
    cut = len('{"op":""') + len(str(tag))  # right after the tag
    return body[:cut] + b',"id":' + str(request_id).encode() + body[cut:]


# -- answers and events (brokers) ------------------------------------------------------------


def result_payload(request_id: int | None, result: Result) -> bytes:
    """`{"re": request_id, "ok": true, result's fields...}`."""
    body = _payload(result)
    head = _envelope(request_id, True)
    return head + b"}" if len(body) == 2 else head + b"," + body[1:]  # b"{}": no fields


def error_payload(
    request_id: int | None, code: ErrorCode | str, message: str, **details: Any
) -> bytes:
    """`{"re": request_id, "ok": false, "error": {"code", "message", details...}}`."""
    error: dict[str, Any] = {"code": str(code), "message": message, **details}
    try:
        inner = _ENCODER.encode(error).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(ErrorCode.BAD_FRAME, f"cannot encode frame: {exc}") from None
    return _envelope(request_id, False) + b',"error":' + inner + b"}"


def failure_payload(request_id: int | None, failure: Failure) -> bytes:
    """error_payload for a typed Failure."""
    return _envelope(request_id, False) + b',"error":' + _payload(failure) + b"}"


def event_payload(event: Event) -> bytes:
    """`{"event": name, fields...}`."""
    return _payload(event)


# -- reading (clients) -----------------------------------------------------------------------


def _unexpected(what: str, exc: msgspec.ValidationError) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.BAD_FRAME, f"unexpected {what} from the broker: {exc}")


def decode_result(frame: dict[str, Any], result_type: type[R]) -> R:
    """A successful response's result (the envelope's re/ok are ignored);
    RemoteProtocolError(bad_frame) if the frame does not have the result's shape."""
    try:
        return msgspec.convert(frame, result_type)
    except msgspec.ValidationError as exc:
        raise _unexpected(f"answer ({result_type.__name__})", exc) from None


def decode_failure(frame: dict[str, Any]) -> Failure:
    """The `error` of a failed response; unknown detail fields are dropped."""
    try:
        return msgspec.convert(frame.get("error"), Failure)
    except msgspec.ValidationError as exc:
        raise _unexpected("error frame", exc) from None


_EVENT_DECODER: Final[Any] = MailEvent | PresenceEvent | MailboxEvent | ReceiptEvent


def decode_event(frame: dict[str, Any]) -> Event:
    """A pushed event; RemoteProtocolError(bad_frame) for an unknown or malformed one (a
    client should log and skip it: a newer broker may push events this one does not know)."""
    try:
        event: Event = msgspec.convert(frame, _EVENT_DECODER)
    except msgspec.ValidationError as exc:
        raise _unexpected("event", exc) from None
    return event


__all__ = [
    "decode_event",
    "decode_failure",
    "decode_result",
    "error_payload",
    "event_payload",
    "failure_payload",
    "request_payload",
    "result_payload",
]
