"""broker.protocol.wire: typed frames are encoded to exactly the bytes the dict frames were,
and read back into their types."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.protocol import (
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    encode_frame,
    error_response,
    event,
    ok_response,
    parse_request,
)
from broker.protocol import requests as rq
from broker.protocol.events import Entry, MailEvent, PresenceEvent
from broker.protocol.framing import frame_payload
from broker.protocol.responses import (
    Failure,
    HistoryResult,
    InboxResult,
    LoginResult,
    LogoutResult,
    OnlineUser,
    PingResult,
    SendResult,
    WhoResult,
)
from broker.protocol.wire import (
    decode_event,
    decode_failure,
    decode_result,
    error_payload,
    event_payload,
    failure_payload,
    request_payload,
    result_payload,
)

ENTRY: dict[str, Any] = {
    "seq": 3,
    "message_id": 3,
    "kind": "announcement",
    "sender": "alice",
    "recipients": [],
    "subject": "Maintenance",
    "body": "The broker restarts at 18:00 UTC.",
    "sent_at": "2026-11-30T08:21:34.195178Z",
    "read": False,
    "direction": "in",
    "thread_id": 3,
    "in_reply_to": None,
    "require_ack": False,
}

request_ids = st.none() | st.integers(min_value=0, max_value=2**53 - 1)


@given(rid=request_ids, message_id=st.integers(1, 2**62), duplicate=st.booleans())
def test_a_send_result_is_the_bytes_of_the_old_dict_frame(
    rid: int | None, message_id: int, duplicate: bool
) -> None:
    typed = frame_payload(
        result_payload(rid, SendResult(message_id=message_id, duplicate=duplicate))
    )
    assert typed == encode_frame(ok_response(rid, message_id=message_id, duplicate=duplicate))


@given(text=st.text(), subject=st.none() | st.text(), sender=st.none() | st.text())
def test_a_mail_event_is_the_bytes_of_the_old_dict_frame(
    text: str, subject: str | None, sender: str | None
) -> None:
    fields = ENTRY | {"body": text, "subject": subject, "sender": sender, "recipients": [text]}
    try:
        old = encode_frame(event("mail", entry=fields))
    except LocalProtocolError:  # a lone surrogate: neither can send it
        with pytest.raises(LocalProtocolError):
            event_payload(MailEvent(entry=Entry(**fields)))
        return
    assert frame_payload(event_payload(MailEvent(entry=Entry(**fields)))) == old


@pytest.mark.parametrize("interval", [10.0, 0.1, 1e16, 1e-07, 2.5])
def test_floats_are_spelled_as_the_standard_encoder_spells_them(interval: float) -> None:
    result = LoginResult(
        username="bob",
        role="user",
        token="t",
        created=False,
        last_seq=4,
        resume_after=2,
        heartbeat_interval=interval,
    )
    fields = {f: getattr(result, f) for f in result.__struct_fields__}
    fields = {f: v for f, v in fields.items() if v is not msgspec.UNSET}  # left out on the wire
    assert frame_payload(result_payload(1, result)) == encode_frame(ok_response(1, **fields))
    who = WhoResult(
        users=[OnlineUser(username="a", since=ENTRY["sent_at"], idle_seconds=interval, sessions=1)]
    )
    assert json.loads(result_payload(2, who))["users"][0]["idle_seconds"] == interval


def test_results_pages_errors_and_events_keep_their_documented_shape() -> None:
    assert result_payload(None, PingResult()) == b'{"re":null,"ok":true,"pong":true}'
    assert result_payload(2, LogoutResult()) == b'{"re":2,"ok":true,"bye":true}'
    page = InboxResult(entries=[Entry(**ENTRY)], unread=4)
    assert json.loads(result_payload(2, page)) == {
        "re": 2,
        "ok": True,
        "entries": [ENTRY],
        "unread": 4,
    }
    cut = json.loads(result_payload(3, HistoryResult(items=[], truncated=True)))
    assert cut == {"re": 3, "ok": True, "items": [], "truncated": True}
    assert frame_payload(
        error_payload(7, ErrorCode.RATE_LIMITED, "sending too fast; slow down", retry_after=1.972)
    ) == encode_frame(
        error_response(7, ErrorCode.RATE_LIMITED, "sending too fast; slow down", retry_after=1.972)
    )
    failure = Failure(code="not_found", message="no such message in your mailbox")
    assert failure_payload(4, failure) == json.dumps(
        error_response(4, ErrorCode.NOT_FOUND, "no such message in your mailbox"),
        separators=(",", ":"),
    ).encode("utf-8")
    presence = event_payload(PresenceEvent(username="bob", online=True))
    assert presence == b'{"event":"presence","username":"bob","online":true}'


def test_an_unencodable_result_fails_as_encode_frame_does() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        result_payload(1, HistoryResult(items=[Entry(**ENTRY | {"body": "\ud800"})]))
    assert caught.value.code == ErrorCode.BAD_FRAME


@pytest.mark.parametrize(
    ("request_", "rid"),
    [
        (rq.Ping(), 1),
        (rq.Ack(seq=4), None),
        (rq.Login(username="bob", password="pw", create=True, client="cli"), 2**53 - 1),
        (rq.Resume(token="abc", resume_after=3, live=False), 5),
        (rq.Send(kind="email", to=("bob", "carol"), subject="S", body="B", client_msg_id="c"), 6),
        (rq.Send(kind="announcement", subject="S", body="B"), 7),
        (rq.Send(kind="rickroll", to=("bob",)), 8),
        (rq.Inbox(unread_only=True, limit=2, before_seq=9), 9),
        (rq.MarkRead(seqs=(1, 2)), 10),
        (rq.History(with_user="bob", kind="text", search="50%", limit=5, before_id=3), 11),
        (rq.SetPrefs(prank_opt_out=False), 12),
        (rq.AdminSetDisabled(username="bob", disabled=True), 13),
        (rq.AdminAudit(limit=3), 14),
    ],
)
def test_an_encoded_request_parses_back_to_itself_with_its_id(
    request_: rq.Request, rid: int | None
) -> None:
    frame = json.loads(request_payload(request_, rid))
    assert frame.get("id") == rid
    if rid is not None:
        assert list(frame)[:2] == ["op", "id"]
    assert parse_request(frame) == request_


def test_defaults_are_left_out_of_an_encoded_request() -> None:
    assert request_payload(rq.Inbox(), 3) == b'{"op":"inbox","id":3}'
    assert request_payload(rq.Send(kind="rickroll", to=("bob",)), 1) == (
        b'{"op":"send","id":1,"kind":"rickroll","to":["bob"]}'
    )


def test_decoding_reads_answers_into_their_types_and_refuses_other_shapes() -> None:
    frame = {"re": 1, "ok": True, "message_id": 3, "duplicate": True, "new_field": 1}
    assert decode_result(frame, SendResult) == SendResult(message_id=3, duplicate=True)
    with pytest.raises(RemoteProtocolError) as caught:
        decode_result({"re": 1, "ok": True, "message_id": "3"}, SendResult)
    assert caught.value.code == ErrorCode.BAD_FRAME
    error = {
        "re": 1,
        "ok": False,
        "error": {"code": "rate_limited", "message": "m", "retry_after": 2},
    }
    assert decode_failure(error) == Failure(code="rate_limited", message="m", retry_after=2.0)
    assert decode_event({"event": "mail", "entry": ENTRY}) == MailEvent(entry=Entry(**ENTRY))
    assert decode_event({"event": "presence", "username": "b", "online": False}) == PresenceEvent(
        username="b", online=False
    )
    with pytest.raises(RemoteProtocolError):
        decode_event({"event": "weather", "sunny": True})


@pytest.mark.parametrize(
    ("kind", "direction"),
    [("text", "in"), ("rickroll", "in"), ("rickroll", "out"), ("email", "out")],
)
def test_the_core_s_typed_views_encode_as_its_dict_views(kind: str, direction: str) -> None:
    from datetime import UTC, datetime

    from broker.core.presence import OnlineUser
    from broker.core.views import (
        mail_event,
        online_user_view,
        typed_entry,
        typed_online_user,
    )
    from broker.store import EntryRecord

    record = EntryRecord(
        seq=None if direction == "out" else 5,
        message_id=9,
        kind=kind,
        sender="alice",
        recipients=("bob", "carol"),
        subject=None if kind == "text" else "S",
        body="héllo \u2028 \x1b[2J",
        sent_at=datetime(2026, 11, 30, 8, 21, 34, 195178, tzinfo=UTC),
        read=True,
        direction=direction,
    )
    typed = frame_payload(event_payload(MailEvent(entry=typed_entry(record))))
    assert typed == encode_frame(mail_event(record))
    user = OnlineUser("bob", record.sent_at, 3.14159, 2)
    assert json.loads(result_payload(1, WhoResult(users=[typed_online_user(user)]))) == {
        "re": 1,
        "ok": True,
        "users": [online_user_view(user)],
    }
