"""The broker's fast paths give exactly what the general paths give.

- `decode_payload` (orjson first) reads every frame as the standard decoder does, and refuses
  what it refuses with the same error;

- `encode_plain_frame` (orjson) writes the same bytes as `encode_frame` (the standard encoder),
  and fails the same way on what JSON cannot carry;
- `iso` writes what strftime("%Y-%m-%dT%H:%M:%S.%fZ") wrote;
- `MailStore.entries_after` on SQLite (raw DB-API cursor) returns the same records as the
  portable SQLAlchemy query it replaces there.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.core.views import entry_view, iso, mail_event
from broker.protocol import (
    ErrorCode,
    FrameConnection,
    LocalProtocolError,
    RemoteProtocolError,
    encode_frame,
)
from broker.protocol.framing import _DECODER, decode_payload, encode_plain_frame
from broker.store import MailStore, SendIntent, migrate

plain_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # beyond 64 bits: the fallback
    | st.text(max_size=40)
    | st.sampled_from(["\u2028\u2029", "\x00\x1f\x7f", '"\\/', "📧 é", "\ufeff"])
)
plain_values = st.recursive(
    plain_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=st.dictionaries(st.text(max_size=10), plain_values, max_size=6))
def test_the_plain_encoder_writes_the_standard_encoders_bytes(obj: dict) -> None:
    assert encode_plain_frame(obj) == encode_frame(obj)


def test_the_plain_encoder_refuses_what_the_standard_one_refuses() -> None:
    for bad in ({"x": object()}, {"x": "\ud800"}, {"x": ["ok", "\udfff"]}):
        with pytest.raises(LocalProtocolError) as caught:
            encode_plain_frame(bad)
        assert caught.value.code is ErrorCode.BAD_FRAME
    with pytest.raises(LocalProtocolError) as too_big:
        encode_plain_frame({"x": "y" * 200}, max_frame_bytes=100)
    assert too_big.value.code is ErrorCode.FRAME_TOO_LARGE
    frames = FrameConnection(max_send_bytes=100)
    with pytest.raises(LocalProtocolError):
        frames.send_plain({"x": "y" * 200})


json_scalars = plain_scalars | st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


def _standard_decode(payload: bytes) -> object:
    try:
        return _DECODER.decode(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "refused"


def _fast_decode(payload: bytes) -> object:
    try:
        return decode_payload(payload)
    except RemoteProtocolError as exc:
        assert exc.code is ErrorCode.BAD_FRAME
        return "refused"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_the_decoder_reads_what_the_standard_decoder_reads(obj: dict) -> None:
    """Floats and integers past 64 bits included (orjson alone would round those)."""
    payload = encode_frame(obj)[4:]
    decoded = decode_payload(payload)
    assert decoded == _standard_decode(payload)
    assert [type(v) for v in decoded.values()] == [type(v) for v in obj.values()]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=60) | st.from_regex(rb"\{[ -~]{0,40}\}", fullmatch=True))
def test_the_decoder_refuses_what_the_standard_decoder_refuses(payload: bytes) -> None:
    standard = _standard_decode(payload)
    if not isinstance(standard, dict):
        standard = "refused"
    assert _fast_decode(payload) == standard or _has_lone_surrogate(standard)


def _has_lone_surrogate(obj: object) -> bool:
    """decode_payload also refuses these (the standard decoder lets them through)."""
    try:
        encode_frame(obj)  # type: ignore[arg-type]
    except LocalProtocolError:
        return True
    return False


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":"\\ud800"}',
        b"\xff\xfe",
        b"[1]",
        b'{"a":1',
        b'{"a":"\x01"}',
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_the_decoder_refuses_what_json_frames_must_not_hold(payload: bytes) -> None:
    assert _fast_decode(payload) == "refused"


def test_the_decoder_keeps_integers_past_64_bits_exact() -> None:
    assert decode_payload(b'{"a":123456789012345678901234567890,"b":[-9223372036854775809]}') == {
        "a": 123456789012345678901234567890,
        "b": [-9223372036854775809],
    }


@settings(max_examples=300, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)),
    zone=st.sampled_from([None, UTC, timezone(timedelta(hours=-5))]),
)
def test_iso_is_the_strftime_it_replaces(moment: datetime, zone: timezone | None) -> None:
    moment = moment.replace(tzinfo=zone)
    assert iso(moment) == moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_iso_remembers_by_identity_not_by_equality() -> None:
    """The same instant in two zones is equal, but its wall clock is not: no mix-up."""
    utc = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    east = utc.astimezone(timezone(timedelta(hours=5)))
    assert utc == east
    assert [iso(utc), iso(east), iso(east), iso(utc)] == [
        "2026-11-30T09:00:00.000000Z",
        "2026-11-30T14:00:00.000000Z",
        "2026-11-30T14:00:00.000000Z",
        "2026-11-30T09:00:00.000000Z",
    ]


def test_sqlite_entries_after_matches_the_portable_query(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mail.db'}"
    store = MailStore.open(url)
    try:
        migrate.upgrade(store.engines.write)
        alice = store.create_user("alice", "x")
        bob = store.create_user("bob", "x")
        store.create_user("carol", "x")
        intents = [
            SendIntent(alice.id, "alice", "text", ("bob",), None, "hi ✉ \u2028", "c1"),
            SendIntent(alice.id, "alice", "email", ("bob", "carol"), "Subj", "body", "c2"),
            SendIntent(alice.id, "alice", "rickroll", ("bob",), None, "never", "c3"),
            SendIntent(alice.id, "alice", "announcement", (), "News", "all of you", "c4"),
        ]
        intents += [
            SendIntent(alice.id, "alice", "text", ("bob",), None, f"n{i}", f"n{i}")
            for i in range(30)
        ]
        outcomes = store.store_sends(intents, 1000)
        assert all(o.error_code is None for o in outcomes)
        store.mark_read(bob.id, [2])

        fast = [store.entries_after(bob.id, after, 7) for after in (0, 3, 30, 34)]
        store.engines = dataclasses.replace(store.engines, is_sqlite=False)
        portable = [store.entries_after(bob.id, after, 7) for after in (0, 3, 30, 34)]
    finally:
        store.close()
    assert fast == portable
    assert [e.seq for e in fast[0]] == [1, 2, 3, 4, 5, 6, 7]
    assert fast[3] == []
    assert fast[0][1].read and not fast[0][0].read
    assert fast[0][1].recipients == ("bob", "carol") and fast[0][3].recipients == ()
    assert fast[0][0].sent_at.tzinfo is not None
    # The pushed event, as the wire carries it; the rick-roll's sender stays hidden.
    views = [mail_event(e) for e in fast[0]]
    assert [v["entry"] for v in views] == [entry_view(e) for e in portable[0]]
    assert views[2]["entry"]["sender"] is None and views[2]["entry"]["recipients"] == []
    assert all(encode_plain_frame(v) == encode_frame(v) for v in views)
