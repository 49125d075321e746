"""The client library speaks through broker.protocol's types: requests built from them, answers
and events read through them."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import jsonschema_rs
import pytest
import trio
from conftest import RunningBroker

from broker.client import RequestFailed, Trust, UnexpectedAnswer, connect
from broker.protocol import NEED_DATA, FrameConnection, requests
from broker.protocol.events import Entry
from broker.protocol.responses import InboxResult, SendResult, WhoResult
from broker.protocol.schema import protocol_schema

REQUEST_SCHEMA = jsonschema_rs.Draft202012Validator(
    {"$ref": "#/$defs/Request", "$defs": protocol_schema()["$defs"]}
)
LOGIN_ANSWER = {
    "ok": True,
    "username": "alice",
    "role": "user",
    "token": "t0k3n",
    "created": False,
    "last_seq": 0,
    "resume_after": 0,
    "heartbeat_interval": 10.0,
}


async def scripted_broker(
    answers: dict[str, dict[str, Any]],
    pushes: list[dict[str, Any]],
    received: list[dict[str, Any]],
    stream: trio.SocketStream,
) -> None:
    """Answers each op with answers[op] (plus `re`), pushing `pushes` after the login."""
    frames = FrameConnection()
    while data := await stream.receive_some(65536):
        frames.receive_data(data)
        while (frame := frames.next_frame()) is not NEED_DATA:
            assert isinstance(frame, dict)
            received.append(frame)
            answer = answers.get(frame["op"])
            if answer is not None:
                out = frames.send({"re": frame.get("id"), **answer})
                if frame["op"] == "login":
                    out += b"".join(frames.send(push) for push in pushes)
                await stream.send_all(out)


async def test_the_client_builds_requests_from_the_types_and_checks_the_answers(
    nursery: trio.Nursery,
) -> None:
    received: list[dict[str, Any]] = []
    answers = {
        "login": LOGIN_ANSWER,
        "ping": {"ok": True, "pong": True},
        "who": {"ok": True, "users": [{"username": "bob", "since": 3}]},  # out of shape
        "send": {"ok": True, "message_id": "7", "duplicate": False},  # a string: out of shape
        "inbox": {"ok": True, "entries": [], "unread": 0, "from_the_future": 1},
        "mark_read": {
            "ok": False,
            "error": {"code": "rate_limited", "message": "m", "retry_after": 2},
        },
    }
    pushes = [
        {"event": "weather", "sunny": True},  # unknown to this library: handed on as it is
        {"event": "presence", "username": "bob", "online": True},
    ]
    listeners = await nursery.start(
        partial(
            trio.serve_tcp, partial(scripted_broker, answers, pushes, received), 0, host="127.0.0.1"
        )
    )
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(10):
        async with connect(f"127.0.0.1:{port}", trust=Trust.plaintext()) as client:
            await client.login("alice", "password1")
            assert client.token == "t0k3n"
            await client.ping()
            with pytest.raises(UnexpectedAnswer, match="WhoResult"):
                await client.who()
            with pytest.raises(UnexpectedAnswer, match="SendResult"):
                await client.send_text("bob", "hi", client_msg_id="c1")
            page = await client.call(requests.Inbox(limit=5), InboxResult)  # extra fields: fine
            assert page == InboxResult(entries=[], unread=0)
            with pytest.raises(RequestFailed) as failed:
                await client.mark_read([1])
            assert (failed.value.code, failed.value.details) == ("rate_limited", {"retry_after": 2})
            assert await client.next_event() == pushes[0]
            assert await client.next_event() == pushes[1]
    assert [frame["op"] for frame in received] == [
        "login", "ping", "who", "send", "inbox", "mark_read"
    ]  # fmt: skip
    for frame in received:
        assert list(frame)[:2] == ["op", "id"]
        assert REQUEST_SCHEMA.is_valid(frame), frame
    assert received[0] == {
        "op": "login",
        "id": 1,
        "username": "alice",
        "password": "password1",
        "client": "mailnet-python",
    }
    assert received[3]["to"] == ["bob"] and "subject" not in received[3]


async def test_typed_calls_and_history_since_against_a_live_broker(broker: RunningBroker) -> None:
    with trio.fail_after(20):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            sent = await alice.call(
                requests.Send(kind="text", to=("bob",), body="typed", client_msg_id="t1"),
                SendResult,
            )
            assert sent.duplicate is False
            page = await bob.call(requests.Inbox(limit=5), InboxResult)
            assert [e.body for e in page.entries] == ["typed"]
            assert isinstance(page.entries[0], Entry) and page.entries[0].sender == "alice"
            who = await bob.call(requests.Who(), WhoResult)
            assert {u.username for u in who.users} == {"alice", "bob"}
            assert [i["body"] for i in await bob.history(since="2000-01-01")] == ["typed"]
            assert await bob.history(since="2999-01-01T00:00:00+01:00") == []
            with pytest.raises(RequestFailed) as failed:
                await bob.history(since="yesterday")
            assert failed.value.code == "bad_request"
            assert (
                failed.value.message == "'since' must be an ISO date or date-time, not 'yesterday'"
            )
            assert json.loads(json.dumps(await bob.inbox(limit=1)))["entries"][0]["body"] == "typed"


async def test_events_nobody_takes_keep_only_the_newest_and_count_the_rest(
    nursery: trio.Nursery,
) -> None:
    """`listen` takes only mail: presence, mailbox and receipt events must not pile up for ever
    in a long-running client."""
    from broker.client import MAX_EVENTS_KEPT

    pushes = [
        {"event": "presence", "username": f"u{n}", "online": True}
        for n in range(MAX_EVENTS_KEPT + 200)
    ]
    answers = {"login": LOGIN_ANSWER, "ping": {"ok": True, "pong": True}}
    listeners = await nursery.start(
        partial(trio.serve_tcp, partial(scripted_broker, answers, pushes, []), 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(10):
        async with connect(f"127.0.0.1:{port}", trust=Trust.plaintext()) as client:
            await client.login("alice", "password1")
            await client.ping()  # answered after every push: all of them have arrived
            assert client.events_dropped == 200
            assert (await client.next_event())["username"] == "u200"  # the oldest kept
