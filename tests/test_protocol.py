"""The sans-I/O protocol on its own: framing and request validation, with no event loop.

Two FrameConnections are wired back to back (bytes from one are fed to the other), as h11's
tests do; nothing here opens a socket or touches a clock.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    KINDS,
    MAX_SENT_FRAME_BYTES,
    NEED_DATA,
    Ack,
    ErrorCode,
    FrameConnection,
    History,
    Inbox,
    LocalProtocolError,
    Login,
    Logout,
    MarkRead,
    Ping,
    ProtocolError,
    RemoteProtocolError,
    Request,
    Resume,
    Send,
    SetPrefs,
    Who,
    encode_frame,
    error_response,
    event,
    fit_page,
    ok_response,
    parse_request,
    request_id,
)
from broker.protocol import requests as requests_module
from broker.protocol.framing import json_size
from broker.protocol.messages import _size_bound
from broker.protocol.requests import (
    MAX_BODY_CHARS,
    MAX_CLIENT_MSG_ID_CHARS,
    MAX_PAGE,
    MAX_RECIPIENTS,
    MAX_SUBJECT_CHARS,
)


def frames_of(conn: FrameConnection) -> list[dict[str, Any]]:
    """Every complete frame buffered in conn."""
    out = []
    while (frame := conn.next_frame()) is not NEED_DATA:
        assert isinstance(frame, dict)
        out.append(frame)
    return out


def raw_frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


# -- framing -----------------------------------------------------------------------------------


def test_two_connections_back_to_back_exchange_frames() -> None:
    client, server = FrameConnection(), FrameConnection()
    server.receive_data(client.send({"op": "ping", "id": 1}))
    assert frames_of(server) == [{"op": "ping", "id": 1}]
    client.receive_data(server.send(ok_response(1, pong=True)))
    assert frames_of(client) == [{"re": 1, "ok": True, "pong": True}]
    assert client.buffered == server.buffered == 0


def test_wire_format_is_big_endian_length_then_utf8_json() -> None:
    data = encode_frame({"op": "send", "body": "héllo"})
    payload = '{"op":"send","body":"héllo"}'.encode()
    assert data == len(payload).to_bytes(4, "big") + payload


def test_frame_split_at_every_byte_boundary_is_reassembled() -> None:
    frame = {"op": "send", "kind": "text", "to": ["bob"], "body": "ünïcødé ✉ split"}
    data = encode_frame(frame)
    for cut in range(len(data) + 1):
        conn = FrameConnection()
        conn.receive_data(data[:cut])
        if cut < len(data):
            assert conn.next_frame() is NEED_DATA
        conn.receive_data(data[cut:])
        assert frames_of(conn) == [frame]
        assert conn.buffered == 0


def test_frame_fed_one_byte_at_a_time() -> None:
    frame = {"op": "who", "id": 7}
    conn = FrameConnection()
    data = encode_frame(frame)
    for i, byte in enumerate(data):
        conn.receive_data(bytes([byte]))
        expected = [frame] if i == len(data) - 1 else []
        assert frames_of(conn) == expected


def test_several_frames_in_one_chunk_come_out_in_order() -> None:
    frames = [{"op": "ping", "id": i} for i in range(50)]
    conn = FrameConnection()
    conn.receive_data(b"".join(encode_frame(f) for f in frames) + encode_frame(frames[0])[:3])
    assert frames_of(conn) == frames
    assert conn.buffered == 3  # the start of the next frame stays buffered


def test_oversized_length_is_refused_from_the_header_alone() -> None:
    conn = FrameConnection(max_frame_bytes=1000)
    with pytest.raises(RemoteProtocolError) as caught:
        conn.receive_data(struct.pack(">I", 1001))  # only the header: no body has arrived
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
    assert conn.buffered == 0
    assert conn.broken
    # The stream has lost its frame boundaries: nothing more is accepted, nothing buffered.
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"x" * 10_000)
    assert conn.buffered == 0


def test_default_limit_is_one_mebibyte() -> None:
    assert DEFAULT_MAX_FRAME_BYTES == 1024 * 1024
    conn = FrameConnection()
    with pytest.raises(RemoteProtocolError) as caught:
        conn.receive_data(struct.pack(">I", 1024 * 1024 + 1))
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
    ok = FrameConnection()
    ok.receive_data(struct.pack(">I", 1024 * 1024))  # exactly the limit is allowed
    assert ok.next_frame() is NEED_DATA
    assert not ok.broken


def test_frame_of_exactly_the_limit_is_accepted() -> None:
    body = "x" * 100
    data = encode_frame({"b": body})
    limit = len(data) - 4
    conn = FrameConnection(max_frame_bytes=limit)
    conn.receive_data(data)
    assert frames_of(conn) == [{"b": body}]


def test_valid_frames_before_an_oversized_header_in_one_chunk_are_delivered() -> None:
    conn = FrameConnection(max_frame_bytes=100)
    conn.receive_data(encode_frame({"id": 1}) + encode_frame({"id": 2}) + struct.pack(">I", 101))
    assert conn.next_frame() == {"id": 1}
    assert conn.next_frame() == {"id": 2}
    with pytest.raises(RemoteProtocolError) as caught:
        conn.next_frame()
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
    assert conn.broken and conn.buffered == 0


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b'{"op": "ping"', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"ping"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"a": -Infinity}', "not valid JSON"),
        (b'{"a": ' + b"1" * 5000 + b"}", "not valid JSON"),  # over Python's int digit limit
        (b"[" * 100_000, "not valid JSON"),  # deeper than the decoder's recursion limit
        (b'{"body": "\\ud800"}', "lone surrogate"),
    ],
)
def test_malformed_frame_is_bad_frame_and_the_next_frame_still_reads(
    payload: bytes, why: str
) -> None:
    conn = FrameConnection()
    conn.receive_data(raw_frame(payload) + encode_frame({"op": "ping", "id": 2}))
    with pytest.raises(RemoteProtocolError) as caught:
        conn.next_frame()
    assert caught.value.code is ErrorCode.BAD_FRAME
    assert why in caught.value.message
    assert not conn.broken
    assert conn.next_frame() == {"op": "ping", "id": 2}
    assert conn.next_frame() is NEED_DATA


def test_surrogate_pair_escapes_are_valid() -> None:
    conn = FrameConnection()
    conn.receive_data(raw_frame(b'{"body": "\\ud83d\\udce7 mail"}'))
    assert conn.next_frame() == {"body": "📧 mail"}


def test_encoding_what_json_cannot_carry_is_a_local_error() -> None:
    for bad in ({"x": float("nan")}, {"x": object()}, {"x": "\ud800"}):
        with pytest.raises(LocalProtocolError) as caught:
            encode_frame(bad)
        assert caught.value.code is ErrorCode.BAD_FRAME
    with pytest.raises(LocalProtocolError) as too_big:
        encode_frame({"x": "y" * 200}, max_frame_bytes=100)
    assert too_big.value.code is ErrorCode.FRAME_TOO_LARGE


def test_wanted_bytes_hints_how_much_the_current_frame_needs() -> None:
    conn = FrameConnection()
    assert conn.wanted_bytes() == 4
    data = encode_frame({"op": "ping"})
    conn.receive_data(data[:2])
    assert conn.wanted_bytes() == 2
    conn.receive_data(data[2:6])
    assert conn.wanted_bytes() == len(data) - 6


def test_response_and_event_shapes() -> None:
    assert ok_response(3, message_id=9, duplicate=False) == {
        "re": 3,
        "ok": True,
        "message_id": 9,
        "duplicate": False,
    }
    assert error_response(None, ErrorCode.RATE_LIMITED, "slow down", retry_after=0.5) == {
        "re": None,
        "ok": False,
        "error": {"code": "rate_limited", "message": "slow down", "retry_after": 0.5},
    }
    assert event("presence", username="bob", online=True) == {
        "event": "presence",
        "username": "bob",
        "online": True,
    }


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ({"id": 5}, 5),
        ({"id": 0}, 0),
        ({}, None),
        ({"id": "5"}, None),
        ({"id": True}, None),
        ({"id": -1}, None),
        ({"id": 2**53}, None),
        ({"id": 1.5}, None),
    ],
)
def test_request_id_is_a_non_negative_integer_below_2_to_53(
    frame: dict[str, Any], expected: int | None
) -> None:
    assert request_id(frame) == expected


# -- parse_request: every operation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            {"op": "login", "username": " Alice ", "password": "secret1"},
            Login(username="alice", password="secret1"),
        ),
        (
            {
                "op": "login",
                "username": "bob",
                "password": "pw",
                "create": True,
                "resume_after": 12,
                "client": "cli",
            },
            Login(username="bob", password="pw", create=True, resume_after=12, client="cli"),
        ),
        ({"op": "resume", "token": "tok"}, Resume(token="tok")),
        (
            {"op": "resume", "token": "tok", "resume_after": 0, "client": "x"},
            Resume(token="tok", resume_after=0, client="x"),
        ),
        ({"op": "logout"}, Logout()),
        ({"op": "ping", "id": 1}, Ping()),
        (
            {
                "op": "send",
                "kind": "email",
                "to": ["Bob", "carol", "bob"],
                "subject": "S",
                "body": "B",
            },
            Send(kind="email", to=("bob", "carol"), subject="S", body="B"),
        ),
        (
            {"op": "send", "kind": "text", "to": "bob", "body": "hi", "client_msg_id": "c-1"},
            Send(kind="text", to=("bob",), subject=None, body="hi", client_msg_id="c-1"),
        ),
        (
            {"op": "send", "kind": "announcement", "subject": "S", "body": "B"},
            Send(kind="announcement", to=(), subject="S", body="B"),
        ),
        (
            {"op": "send", "kind": "announcement", "to": [], "subject": "S", "body": "B"},
            Send(kind="announcement", to=(), subject="S", body="B"),
        ),
        (
            {"op": "send", "kind": "rickroll", "to": ["bob"]},
            Send(kind="rickroll", to=("bob",), subject=None, body=""),
        ),
        ({"op": "ack", "seq": 0}, Ack(seq=0)),
        ({"op": "ack", "seq": 41}, Ack(seq=41)),
        ({"op": "inbox"}, Inbox()),
        (
            {"op": "inbox", "unread_only": True, "limit": 10, "before_seq": 5},
            Inbox(unread_only=True, limit=10, before_seq=5),
        ),
        ({"op": "mark_read", "seqs": [3, 1, 3]}, MarkRead(seqs=(3, 1))),
        ({"op": "who"}, Who()),
        ({"op": "history"}, History()),
        (
            {
                "op": "history",
                "with": "Bob",
                "kind": "text",
                "search": "50%",
                "since": "2026-01-02",
                "limit": 5,
                "before_id": 100,
            },
            History(
                with_user="bob",
                kind="text",
                search="50%",
                since=datetime(2026, 1, 2, tzinfo=UTC),
                limit=5,
                before_id=100,
            ),
        ),
        ({"op": "set_prefs", "prank_opt_out": True}, SetPrefs(prank_opt_out=True)),
        ({"op": "set_prefs", "prank_opt_out": False}, SetPrefs(prank_opt_out=False)),
    ],
)
def test_parse_request_accepts_every_operation(frame: dict[str, Any], expected: Request) -> None:
    assert parse_request(frame) == expected


def test_history_since_keeps_an_explicit_offset() -> None:
    request = parse_request({"op": "history", "since": "2026-03-04T05:06:07+02:00"})
    assert isinstance(request, History) and request.since is not None
    assert request.since.utcoffset() is not None
    assert request.since.astimezone(UTC).hour == 3


def email(**overrides: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "op": "send",
        "kind": "email",
        "to": ["bob"],
        "subject": "S",
        "body": "B",
    }
    frame.update(overrides)
    return {k: v for k, v in frame.items() if v is not ...}


def text(**overrides: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"op": "send", "kind": "text", "to": ["bob"], "body": "hi"}
    frame.update(overrides)
    return {k: v for k, v in frame.items() if v is not ...}


BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    # the envelope
    ("no op", {}, "missing field 'op'"),
    ("op not a string", {"op": 1}, "missing field 'op'"),
    ("op null", {"op": None}, "missing field 'op'"),
    # login
    ("login without username", {"op": "login", "password": "pw"}, "must be a string"),
    ("login without password", {"op": "login", "username": "a"}, "missing field 'password'"),
    ("username a number", {"op": "login", "username": 5, "password": "p"}, "must be a string"),
    ("username empty", {"op": "login", "username": "", "password": "p"}, "invalid user name"),
    ("username with space", {"op": "login", "username": "a b", "password": "p"}, "invalid user"),
    ("username too long", {"op": "login", "username": "a" * 33, "password": "p"}, "invalid user"),
    ("username punctuation", {"op": "login", "username": "a@b", "password": "p"}, "invalid user"),
    ("username leading dot", {"op": "login", "username": ".a", "password": "p"}, "invalid user"),
    ("username non-ascii", {"op": "login", "username": "ålice", "password": "p"}, "invalid user"),
    ("username newline in middle", {"op": "login", "username": "a\nb", "password": "p"}, "invalid"),
    ("password a number", {"op": "login", "username": "a", "password": 123456}, "must be a string"),
    ("password too long", {"op": "login", "username": "a", "password": "p" * 201}, "longer than"),
    ("password with NUL", {"op": "login", "username": "a", "password": "pass\x00word"}, "NUL"),
    ("create not bool", {"op": "login", "username": "a", "password": "p", "create": 1}, "true or"),
    (
        "resume_after negative",
        {"op": "login", "username": "a", "password": "p", "resume_after": -1},
        "between",
    ),
    (
        "resume_after a bool",
        {"op": "login", "username": "a", "password": "p", "resume_after": True},
        "must be an integer",
    ),
    (
        "resume_after a float",
        {"op": "login", "username": "a", "password": "p", "resume_after": 1.0},
        "must be an integer",
    ),
    (
        "client too long",
        {"op": "login", "username": "a", "password": "p", "client": "c" * 101},
        "longer than",
    ),
    # resume
    ("resume without token", {"op": "resume"}, "missing field 'token'"),
    ("resume empty token", {"op": "resume", "token": "  "}, "must not be empty"),
    ("resume token a list", {"op": "resume", "token": ["t"]}, "must be a string"),
    ("resume token too long", {"op": "resume", "token": "t" * 129}, "longer than"),
    # send: kind
    ("send without kind", {"op": "send", "to": ["bob"], "body": "b"}, "missing field 'kind'"),
    ("send unknown kind", text(kind="fax"), "must be one of"),
    ("send kind a number", text(kind=3), "must be a string"),
    # send: recipients
    ("email without to", email(to=...), "non-empty list"),
    ("email empty to", email(to=[]), "non-empty list"),
    ("email to a dict", email(to={"bob": 1}), "non-empty list"),
    ("email to a number", email(to=5), "non-empty list"),
    ("email to holds a number", email(to=["bob", 5]), "must be a string"),
    ("email to holds a bad name", email(to=["bob", "no such!"]), "invalid user name"),
    (
        "email to too many",
        email(to=[f"u{i}" for i in range(MAX_RECIPIENTS + 1)]),
        f"at most {MAX_RECIPIENTS} recipients",
    ),
    ("text to two users", text(to=["bob", "carol"]), "exactly one user"),
    ("rickroll to two users", {"op": "send", "kind": "rickroll", "to": ["a", "b"]}, "exactly one"),
    ("rickroll without to", {"op": "send", "kind": "rickroll"}, "non-empty list"),
    (
        "announcement with to",
        {"op": "send", "kind": "announcement", "to": ["bob"], "subject": "S", "body": "B"},
        "leave 'to' out",
    ),
    (
        "announcement with to a string",
        {"op": "send", "kind": "announcement", "to": "bob", "subject": "S", "body": "B"},
        "leave 'to' out",
    ),
    # send: subject
    ("email without subject", email(subject=...), "missing field 'subject'"),
    ("email empty subject", email(subject=""), "must not be empty"),
    ("email blank subject", email(subject="   "), "must not be empty"),
    ("email subject a number", email(subject=7), "must be a string"),
    ("email subject with newline", email(subject="one\ntwo"), "one line"),
    ("email subject with CR", email(subject="one\rtwo"), "one line"),
    ("email subject with line separator", email(subject="a\u2028b"), "one line"),
    ("email subject with escape", email(subject="\x1b[2Jboo"), "control characters"),
    ("email subject with NUL", email(subject="a\x00b"), "NUL"),
    (
        "email subject too long",
        email(subject="s" * (MAX_SUBJECT_CHARS + 1)),
        f"longer than {MAX_SUBJECT_CHARS}",
    ),
    (
        "announcement without subject",
        {"op": "send", "kind": "announcement", "body": "B"},
        "missing field 'subject'",
    ),
    ("text with subject", text(subject="S"), "a text has no subject"),
    (
        "rickroll with subject",
        {"op": "send", "kind": "rickroll", "to": ["bob"], "subject": "S"},
        "no subject",
    ),
    # send: body
    ("email without body", email(body=...), "missing field 'body'"),
    ("email empty body", email(body=""), "must not be empty"),
    ("text empty body", text(body=""), "must not be empty"),
    ("text whitespace body", text(body=" \n\t "), "must not be empty"),
    ("text body a list", text(body=["hi"]), "must be a string"),
    ("text body with NUL", text(body="a\x00"), "NUL"),
    ("text body too long", text(body="b" * (MAX_BODY_CHARS + 1)), f"longer than {MAX_BODY_CHARS}"),
    (
        "rickroll with body",
        {"op": "send", "kind": "rickroll", "to": ["bob"], "body": "gotcha"},
        "has no body",
    ),
    # send: client_msg_id
    ("client_msg_id a number", text(client_msg_id=12), "must be a string"),
    ("client_msg_id empty", text(client_msg_id=""), "must not be empty"),
    (
        "client_msg_id too long",
        text(client_msg_id="c" * (MAX_CLIENT_MSG_ID_CHARS + 1)),
        "longer than",
    ),
    # ack
    ("ack without seq", {"op": "ack"}, "missing field 'seq'"),
    ("ack seq a string", {"op": "ack", "seq": "3"}, "must be an integer"),
    ("ack seq a bool", {"op": "ack", "seq": True}, "must be an integer"),
    ("ack seq negative", {"op": "ack", "seq": -1}, "between"),
    ("ack seq huge", {"op": "ack", "seq": 2**63}, "between"),
    # inbox
    ("inbox unread_only a string", {"op": "inbox", "unread_only": "yes"}, "true or false"),
    ("inbox unread_only an int", {"op": "inbox", "unread_only": 1}, "true or false"),
    ("inbox limit zero", {"op": "inbox", "limit": 0}, "between 1"),
    ("inbox limit too big", {"op": "inbox", "limit": MAX_PAGE + 1}, "between 1"),
    ("inbox limit a bool", {"op": "inbox", "limit": True}, "must be an integer"),
    ("inbox before_seq zero", {"op": "inbox", "before_seq": 0}, "between 1"),
    # mark_read
    ("mark_read without seqs", {"op": "mark_read"}, "'seqs' must be a list"),
    ("mark_read empty seqs", {"op": "mark_read", "seqs": []}, "'seqs' must be a list"),
    ("mark_read seqs an int", {"op": "mark_read", "seqs": 3}, "'seqs' must be a list"),
    ("mark_read seqs of bools", {"op": "mark_read", "seqs": [True]}, "positive integers"),
    ("mark_read seqs of strings", {"op": "mark_read", "seqs": ["1"]}, "positive integers"),
    ("mark_read seq zero", {"op": "mark_read", "seqs": [0]}, "positive integers"),
    (
        "mark_read too many seqs",
        {"op": "mark_read", "seqs": list(range(1, MAX_PAGE + 2))},
        "'seqs' must be a list",
    ),
    # history
    ("history with a number", {"op": "history", "with": 5}, "must be a string"),
    ("history with a bad name", {"op": "history", "with": "a b"}, "invalid user name"),
    ("history unknown kind", {"op": "history", "kind": "fax"}, "must be one of"),
    ("history since not a date", {"op": "history", "since": "yesterday"}, "ISO date"),
    ("history since a number", {"op": "history", "since": 20260101}, "must be a string"),
    ("history since after 9999", {"op": "history", "since": "9999-12-31T23:59-14:00"}, "range"),
    ("history since before 1", {"op": "history", "since": "0001-01-01T00:00+14:00"}, "range"),
    ("history search too long", {"op": "history", "search": "s" * 201}, "longer than"),
    ("history limit zero", {"op": "history", "limit": 0}, "between 1"),
    ("history before_id a string", {"op": "history", "before_id": "9"}, "must be an integer"),
    # set_prefs
    ("set_prefs without value", {"op": "set_prefs"}, "true or false"),
    ("set_prefs value an int", {"op": "set_prefs", "prank_opt_out": 1}, "true or false"),
    ("set_prefs value a string", {"op": "set_prefs", "prank_opt_out": "true"}, "true or false"),
]


@pytest.mark.parametrize(
    ("frame", "message"),
    [pytest.param(frame, message, id=name) for name, frame, message in BAD_REQUESTS],
)
def test_parse_request_refuses_invalid_fields_with_bad_request(
    frame: dict[str, Any], message: str
) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_request(frame)
    assert caught.value.code is ErrorCode.BAD_REQUEST
    assert message in caught.value.message


@pytest.mark.parametrize("op", ["subscribe", "LOGIN", "", "x" * 1000])
def test_unknown_op_is_unknown_op(op: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_request({"op": op})
    assert caught.value.code is ErrorCode.UNKNOWN_OP
    assert len(caught.value.message) < 100  # the echoed name is cut short


def test_limits_are_inclusive() -> None:
    at_limit = email(
        to=[f"u{i}" for i in range(MAX_RECIPIENTS)],
        subject="s" * MAX_SUBJECT_CHARS,
        body="b" * MAX_BODY_CHARS,
        client_msg_id="c" * MAX_CLIENT_MSG_ID_CHARS,
    )
    request = parse_request(at_limit)
    assert isinstance(request, Send)
    assert len(request.to) == MAX_RECIPIENTS
    username = parse_request({"op": "login", "username": "a" * 32, "password": "p"})
    assert isinstance(username, Login) and username.username == "a" * 32


def test_kinds_are_the_four_documented_ones() -> None:
    assert KINDS == ("email", "text", "announcement", "rickroll")


# -- properties ---------------------------------------------------------------------------------

# How many inputs each property test tried, asserted > 0 at the end of each test so that a
# strategy that silently generates nothing cannot pass. With max_examples=300 each, a full run
# tries about 300 byte streams, 300 dicts and 300 round trips (hypothesis may stop a little early
# when it has exhausted a small search space).
EXAMPLES = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
REQUEST_TYPES = typing.get_args(Request)  # every request class, however many there are
tried: dict[str, int] = {"bytes": 0, "dicts": 0, "round_trips": 0, "size_bounds": 0}

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "op", "id", "username", "password", "create", "resume_after", "client", "token", "kind",
        "to", "subject", "body", "client_msg_id", "seq", "unread_only", "limit", "before_seq",
        "seqs", "with", "search", "since", "before_id", "prank_opt_out",
    ]
)  # fmt: skip
ops = st.sampled_from(
    [
        "login", "resume", "logout", "ping", "send", "ack", "inbox", "mark_read", "who",
        "history", "set_prefs", "nope",
    ]
)  # fmt: skip
field_values = (
    json_values
    | st.sampled_from(KINDS)
    | st.lists(st.sampled_from(["bob", "carol", "Bob", "b b", ""]), max_size=4)
    | st.sampled_from(["2026-01-01", "2026-01-01T00:00:00+01:00", "not a date"])
)
request_dicts = st.builds(
    lambda op, fields: {"op": op, **fields},
    ops | json_values,
    st.dictionaries(field_names | st.text(max_size=8), field_values, max_size=8),
)


@EXAMPLES
@given(
    data=st.binary(max_size=2000),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
    max_frame_bytes=st.sampled_from([0, 16, 1024, DEFAULT_MAX_FRAME_BYTES]),
)
def test_arbitrary_bytes_in_arbitrary_chunks_raise_only_remote_protocol_error(
    data: bytes, cuts: list[int], max_frame_bytes: int
) -> None:
    """Fed anything, cut anywhere, FrameConnection returns frames or raises RemoteProtocolError."""
    tried["bytes"] += 1
    conn = FrameConnection(max_frame_bytes=max_frame_bytes)
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for start, end in itertools.pairwise(bounds):
        try:
            conn.receive_data(data[start:end])
        except RemoteProtocolError:
            if conn.broken:
                return
            raise
        while True:
            try:
                frame = conn.next_frame()
            except RemoteProtocolError:
                if conn.broken:
                    return
                continue
            if frame is NEED_DATA:
                break
            assert isinstance(frame, dict)
        assert conn.buffered <= 4 + max_frame_bytes


@EXAMPLES
@given(frame=request_dicts)
def test_arbitrary_dicts_parse_to_a_request_or_raise_protocol_error(frame: dict[str, Any]) -> None:
    tried["dicts"] += 1
    try:
        request = parse_request(frame)
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_OP)
        assert exc.message
        return
    assert isinstance(request, REQUEST_TYPES)
    request_id(frame)  # never raises either


@EXAMPLES
@given(
    obj=st.dictionaries(st.text(max_size=10), json_values, max_size=8),
    chunk=st.integers(min_value=1, max_value=64),
)
def test_encode_then_decode_round_trips_any_json_object(obj: dict[str, Any], chunk: int) -> None:
    tried["round_trips"] += 1
    data = encode_frame(obj)
    conn = FrameConnection()
    for start in range(0, len(data), chunk):
        conn.receive_data(data[start : start + chunk])
    assert frames_of(conn) == [json.loads(json.dumps(obj))]
    assert conn.buffered == 0


# -- docs/protocol.md stays true ----------------------------------------------------------------

PROTOCOL_DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def documented_exchanges() -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Every example request (`→ {...}`) in the doc, with the response (`← {...}`) that
    answers it, if the example shows one."""
    requests_: list[dict[str, Any]] = []
    responses: dict[int | None, dict[str, Any]] = {}
    pairs = []
    for line in PROTOCOL_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("→ {"):
            requests_.append(json.loads(line[2:]))
        elif line.startswith("← {"):
            frame = json.loads(line[2:])
            if "re" in frame:
                responses[frame["re"]] = frame
                if requests_ and request_id(requests_[-1]) == frame["re"]:
                    pairs.append((requests_[-1], frame))
    answered = {id(r) for r, _ in pairs}
    pairs += [(r, None) for r in requests_ if id(r) not in answered]
    return pairs


def test_the_protocol_doc_names_every_error_code_and_operation() -> None:
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    for code in ErrorCode:
        assert f"`{code.value}`" in text, f"error code {code.value} is not documented"
    source = (Path(requests_module.__file__)).read_text(encoding="utf-8")
    ops = re.findall(r'^\s+case "(\w+)":', source, flags=re.MULTILINE)
    assert "login" in ops and "send" in ops
    for op in ops:
        assert f"`{op}`" in text, f"operation {op} is not documented"


def test_the_protocol_doc_examples_agree_with_the_parser() -> None:
    """Each example request parses, unless its documented response is the parser's error."""
    exchanges = documented_exchanges()
    assert len(exchanges) >= 20
    for request, response in exchanges:
        try:
            parse_request(request)
        except ProtocolError as exc:
            assert response is not None, request
            assert response["error"] == {"code": exc.code.value, "message": exc.message}
        else:
            if response is not None and not response["ok"]:
                assert response["error"]["code"] not in ("bad_request", "unknown_op"), request


# -- pages cut to fit a frame -------------------------------------------------------------------


def test_fit_page_keeps_a_page_that_fits() -> None:
    items = [{"seq": i, "body": "x" * 100} for i in range(10)]
    assert fit_page(items, budget=10_000) == (items, False)
    assert fit_page([], budget=0) == ([], False)


def test_fit_page_cuts_to_the_budget_but_keeps_one_item() -> None:
    items = [{"seq": i, "body": "é" * 1000} for i in range(10)]
    size = json_size(items[0]) + 1
    page, cut = fit_page(items, budget=3 * size)
    assert cut and page == items[:3]
    assert fit_page(items, budget=1) == (items[:1], True)


def test_broker_pages_fit_in_what_clients_accept() -> None:
    """A page cut to the default budget, wrapped in its response, fits MAX_SENT_FRAME_BYTES."""
    entry = {"seq": 1, "body": "📧" * 64_000, "subject": None, "recipients": ["a" * 32] * 100}
    page, cut = fit_page([entry] * 100)
    assert cut
    frame = ok_response(2**53 - 1, entries=page, unread=2**62, truncated=True)
    assert len(encode_frame(frame, max_frame_bytes=MAX_SENT_FRAME_BYTES)) <= MAX_SENT_FRAME_BYTES


def test_a_frame_connection_may_send_more_than_it_accepts() -> None:
    conn = FrameConnection(max_frame_bytes=100, max_send_bytes=1000)
    assert len(conn.send({"x": "y" * 500})) > 100
    with pytest.raises(LocalProtocolError):
        conn.send({"x": "y" * 1000})
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(struct.pack(">I", 101))


@EXAMPLES
@given(value=json_values)
def test_the_size_bound_is_never_below_the_real_size(value: Any) -> None:
    tried["size_bounds"] += 1
    assert _size_bound(value) >= json_size(value)


PROPERTY_TESTS = {
    "test_arbitrary_bytes_in_arbitrary_chunks_raise_only_remote_protocol_error": "bytes",
    "test_arbitrary_dicts_parse_to_a_request_or_raise_protocol_error": "dicts",
    "test_encode_then_decode_round_trips_any_json_object": "round_trips",
    "test_the_size_bound_is_never_below_the_real_size": "size_bounds",
}


def test_the_property_tests_tried_inputs(request: pytest.FixtureRequest) -> None:
    """Runs after the property tests (file order): each one selected in this run saw examples."""
    selected = {item.name for item in request.session.items}
    ran = {counter: tried[counter] for name, counter in PROPERTY_TESTS.items() if name in selected}
    assert set(PROPERTY_TESTS.values()) == set(tried)
    assert all(count > 0 for count in ran.values()), ran
