"""docs/protocol.schema.json: generated from broker.protocol's types, kept up to date, and
true of what a live broker really sends and accepts."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jsonschema_rs
import msgspec
import pytest
import trio
from conftest import RunningBroker, make_config, running_broker
from hypothesis import given, settings
from hypothesis import strategies as st
from test_protocol import documented_exchanges

from broker.protocol import NEED_DATA, FrameConnection, ProtocolError, parse_request
from broker.protocol import requests as rq
from broker.protocol.framing import frame_payload
from broker.protocol.schema import protocol_schema, request_types, schema_text
from broker.protocol.wire import request_payload
from broker.web.openapi import openapi_schema

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "protocol.schema.json"
SCHEMA = protocol_schema()
OPERATIONS: dict[str, dict[str, str | None]] = SCHEMA["x-mailnet-operations"]


def _validator(ref: str, schema: dict[str, Any] = SCHEMA) -> Any:
    return jsonschema_rs.Draft202012Validator({"$ref": ref, "$defs": schema["$defs"]})


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with every broker-sent object closed to fields it does not name: a field the
    broker sends that the types do not know is drift (the published schema stays open so that
    clients accept fields a newer broker adds)."""
    closed = copy.deepcopy(schema)
    requests = {kind.__name__ for kind in request_types()}
    for name, definition in closed["$defs"].items():
        if name not in requests and "properties" in definition:
            definition["additionalProperties"] = False
    return closed


CLOSED = _closed(SCHEMA)
REQUEST = _validator("#/$defs/Request")
EVENT = _validator("#/$defs/Event", CLOSED)
ERROR = _validator("#/$defs/ErrorResponse", CLOSED)
RESPONSE = {
    op: _validator(ref, CLOSED) for op, ops in OPERATIONS.items() if (ref := ops["response"])
}


def _errors(validator: Any, frame: dict[str, Any]) -> list[str]:
    return [f"{error.instance_path}: {error.message}" for error in validator.iter_errors(frame)]


def check_request(frame: dict[str, Any]) -> None:
    op = frame["op"]
    assert op in OPERATIONS, op
    assert not _errors(_validator(str(OPERATIONS[op]["request"])), frame), frame
    assert REQUEST.is_valid(frame), frame


def check_answer(op: str | None, frame: dict[str, Any]) -> None:
    """A frame the broker sent, answering a request of `op` (None: no particular one)."""
    if "event" in frame:
        assert not _errors(EVENT, frame), (frame, _errors(EVENT, frame))
    elif frame.get("ok") is False or op is None:
        assert not _errors(ERROR, frame), (frame, _errors(ERROR, frame))
    else:
        assert not _errors(RESPONSE[op], frame), (frame, _errors(RESPONSE[op], frame))


def test_the_schema_file_is_generated_from_the_types_and_up_to_date() -> None:
    # Compared as JSON: another msgspec may order keys differently without changing a thing.
    written = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert written == json.loads(schema_text()), (
        "docs/protocol.schema.json is stale: python -m broker.protocol.schema > "
        "docs/protocol.schema.json"
    )


def test_the_schema_is_a_valid_draft_2020_12_schema_naming_every_operation() -> None:
    assert jsonschema_rs.meta.is_valid(SCHEMA)
    parsed_ops = {str(kind.__struct_config__.tag) for kind in request_types()}
    assert set(OPERATIONS) == parsed_ops
    assert OPERATIONS["ack"]["response"] is None  # ack is not answered when it succeeds
    for op in parsed_ops - {"ack"}:
        assert OPERATIONS[op]["response"] is not None, op


def test_every_documented_example_frame_validates() -> None:
    """docs/protocol.md's requests validate unless the parser refuses them, and so do the
    documented answers."""
    exchanges = documented_exchanges()
    assert len(exchanges) >= 20
    for request, response in exchanges:
        try:
            parse_request(request)
        except ProtocolError:
            pass
        else:
            check_request(request)
        if response is not None:
            check_answer(request["op"], response)


def test_every_documented_event_and_unanswering_error_validates() -> None:
    """The events and the `re: null` errors docs/protocol.md shows, with nothing the types
    do not name."""
    shown = []
    for line in SCHEMA_FILE.with_name("protocol.md").read_text(encoding="utf-8").splitlines():
        text = line.removeprefix("← ")
        if text.startswith(('{"event"', '{"re": null')):
            shown.append(json.loads(text))
    assert {frame.get("event") for frame in shown} == {
        "mail",
        "presence",
        "presence_batch",
        "mailbox",
        "receipt",
        None,
    }
    for frame in shown:
        check_answer(None, frame)


@pytest.mark.parametrize(
    "frame",
    [
        {"op": "send", "kind": "text", "to": ["bob", "carol"], "body": "x"},
        {"op": "send", "kind": "text", "to": ["bob"], "body": ""},
        {"op": "send", "kind": "email", "to": ["bob"], "body": "no subject"},
        {"op": "send", "kind": "text", "to": ["bob"], "subject": "S", "body": "x"},
        {"op": "send", "kind": "announcement", "to": ["bob"], "subject": "S", "body": "B"},
        {"op": "send", "kind": "rickroll", "to": ["bob"], "body": "mine"},
        {"op": "send", "kind": "fax", "to": ["bob"], "body": "x"},
        {"op": "send", "kind": "text", "to": ["b" * 33], "body": "x"},
        {"op": "send", "kind": "text", "to": ["bob"], "body": "x" * 64_001},
        {"op": "ack", "seq": -1},
        {"op": "ack", "seq": True},
        {"op": "inbox", "limit": 1001},
        {"op": "mark_read", "seqs": []},
        {"op": "mark_read", "seqs": [0]},
        {"op": "login", "username": "alice"},
        {"op": "resume", "token": ""},
        {"op": "set_prefs"},
        {"op": "change_password", "old_password": "a", "new_password": "short"},
        {"op": "admin_set_disabled", "username": "bob"},
        {"op": "history", "kind": "fax"},
    ],
)
def test_the_schema_refuses_what_the_parser_refuses(frame: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        parse_request(frame)
    assert not REQUEST.is_valid(frame)


# -- real frames, both ways, from a live broker -------------------------------------------------


class Recorder:
    """A bare protocol client that keeps every frame it sends and receives."""

    def __init__(self, stream: trio.SocketStream, log: list[tuple[str | None, dict[str, Any]]]):
        self.stream = stream
        self.frames = FrameConnection(max_frame_bytes=16 * 1024 * 1024)
        self.log = log  # (op answered or None, frame received)
        self.sent: list[dict[str, Any]] = []
        self.ids = iter(range(1, 10**6))
        self.ops: dict[int, str] = {}

    async def send_raw(self, frame: dict[str, Any]) -> None:
        self.sent.append(frame)
        await self.stream.send_all(self.frames.send(frame))

    async def send(self, request: rq.Request, *, answered: bool = True) -> int | None:
        rid = next(self.ids) if answered else None
        payload = request_payload(request, rid)
        self.sent.append(json.loads(payload))
        if rid is not None:
            self.ops[rid] = str(type(request).__struct_config__.tag)
        await self.stream.send_all(frame_payload(payload))
        return rid

    async def receive(self) -> dict[str, Any] | None:
        while True:
            frame = self.frames.next_frame()
            if frame is not NEED_DATA:
                assert isinstance(frame, dict)
                re = frame.get("re")
                self.log.append((self.ops.get(re) if isinstance(re, int) else None, frame))
                return frame
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.frames.receive_data(data)

    async def call(self, request: rq.Request) -> dict[str, Any]:
        rid = await self.send(request)
        while True:
            frame = await self.receive()
            assert frame is not None, "the broker closed the connection"
            if "re" in frame and frame["re"] == rid:
                return frame

    async def drain(self) -> None:
        """Read what has arrived (events) until a ping's answer."""
        await self.call(rq.Ping())


@asynccontextmanager
async def recorder(
    broker: RunningBroker, log: list[tuple[str | None, dict[str, Any]]]
) -> AsyncIterator[Recorder]:
    stream = await trio.open_tcp_stream("127.0.0.1", broker.info.tcp_port)
    try:
        yield Recorder(stream, log)
    finally:
        await trio.aclose_forcefully(stream)


async def test_real_frames_exchanged_with_a_live_broker_validate(tmp_path: Path) -> None:
    received: list[tuple[str | None, dict[str, Any]]] = []
    sent: list[dict[str, Any]] = []
    config = make_config(tmp_path, send_burst=12, send_rate=0.5)
    with trio.fail_after(60):
        async with (
            running_broker(config) as broker,
            recorder(broker, received) as alice,
            recorder(broker, received) as bob,
        ):
            login = rq.Login(username="alice", password="password1", create=True, client="t")
            assert (await alice.call(login))["ok"]
            answer = await bob.call(rq.Login(username="bob", password="password1", create=True))
            bob_token = answer["token"]
            for send in [
                rq.Send(kind="email", to=("bob",), subject="Lunch?", body="At noon ☕"),
                rq.Send(kind="text", to=("bob",), body="running late", client_msg_id="c1"),
                rq.Send(kind="text", to=("bob",), body="running late", client_msg_id="c1"),
                rq.Send(kind="announcement", subject="Maintenance", body="at 18:00"),
                rq.Send(kind="rickroll", to=("bob",)),
                rq.Send(kind="text", to=("nobody",), body="x"),
            ]:
                await alice.call(send)
            await alice.send_raw({"op": "send", "id": 90, "kind": "text", "to": "bob"})
            await alice.send_raw({"op": "teleport", "id": 91})
            await alice.stream.send_all(b"\x00\x00\x00\x05[1,2]")  # bad_frame, re null
            await bob.drain()
            await bob.send(rq.Ack(seq=4), answered=False)
            await bob.call(rq.Inbox(unread_only=True, limit=2))
            await bob.call(rq.MarkRead(seqs=(1, 2)))
            await bob.call(rq.MarkRead(seqs=(99,)))
            await bob.call(rq.MarkUnread(seqs=(1,)))
            drill = rq.Send(kind="announcement", subject="Drill", body="ack it", require_ack=True)
            drill_id = (await alice.call(drill))["message_id"]
            await bob.drain()
            await bob.call(rq.Acknowledge(message_id=drill_id))
            await alice.call(rq.MessageStatus(message_id=drill_id))
            await bob.call(rq.Archive(seqs=(2,)))
            await bob.call(rq.Inbox(archived=True))
            await bob.call(rq.Unarchive(seqs=(2,)))
            await bob.call(rq.Delete(seqs=(3,)))
            await alice.call(rq.AdminRetention(kind="announcement", days=30))
            await bob.call(rq.Who())
            await bob.call(rq.History(with_user="alice", kind="email", search="noon"))
            await alice.call(rq.History(limit=2))
            await bob.call(rq.SetPrefs(prank_opt_out=True))
            await alice.call(rq.Send(kind="rickroll", to=("bob",)))
            await bob.call(rq.Block(username="alice"))
            await bob.call(rq.ListBlocks())
            await bob.call(rq.Unblock(username="alice"))
            await bob.call(rq.AdminUsers())  # forbidden: bob is no admin
            await alice.call(rq.AdminUsers())
            await alice.call(rq.AdminSessions())
            await alice.call(rq.AdminAudit(limit=10))
            await alice.call(rq.AdminInvite())
            async with recorder(broker, received) as bob2:
                await bob2.call(rq.Resume(token=bob_token, resume_after=0, client="t2"))
                await bob2.drain()
                await bob2.call(rq.Login(username="bob", password="password1"))
                sent += bob2.sent
            async with recorder(broker, received) as mallory:
                for _ in range(3):  # auth_failed, then the connection is closed
                    await mallory.call(rq.Login(username="alice", password="wrong-pass"))
                sent += mallory.sent
            for _ in range(20):  # past the burst: rate_limited, with retry_after
                answer = await alice.call(rq.Send(kind="text", to=("bob",), body="spam"))
                if not answer["ok"]:
                    break
            await alice.call(rq.AdminSetDisabled(username="bob", disabled=False))
            await alice.call(rq.ChangePassword(old_password="password1", new_password="pw-2"))
            await alice.call(rq.ChangePassword(old_password="password1", new_password="new-pw2"))
            await alice.call(rq.AdminKick(username="bob"))
            while (await bob.receive()) is not None:  # session_ended, then closed
                pass
            await alice.call(rq.Logout())
            sent += alice.sent + bob.sent
    for frame in sent:
        try:
            parse_request(frame)
        except ProtocolError:
            continue  # sent to be refused (the last test shows the schema refuses such frames)
        check_request(frame)
    for op, frame in received:
        check_answer(op, frame)
    answered_ops = {op for op, frame in received if op is not None and frame.get("ok")}
    assert answered_ops == {op for op, ops in OPERATIONS.items() if ops["response"]}
    events = {frame["event"] for _, frame in received if "event" in frame}
    assert events == {"mail", "presence", "mailbox", "receipt"}
    codes = {frame["error"]["code"] for _, frame in received if frame.get("ok") is False}
    assert {"unknown_recipient", "bad_request", "unknown_op", "bad_frame", "not_found"} <= codes
    assert {"forbidden", "already_authenticated", "rate_limited", "session_ended"} <= codes
    assert any("retry_after" in frame["error"] for _, frame in received if frame.get("ok") is False)


def test_the_http_api_describes_the_answers_it_shares_with_the_wire_protocol_alike() -> None:
    components = openapi_schema()["components"]["schemas"]
    for name in ("SendResult", "InboxResult", "WhoResult", "HistoryResult", "Entry", "Failure"):
        ours = json.dumps(components[name]).replace("#/components/schemas/", "#/$defs/")
        assert json.loads(ours) == SCHEMA["$defs"][name], name


# -- the schema and the parser agree ----------------------------------------------------------

_NAMES = ["bob", "Bob", "b" * 32, "b" * 33, "", "b b", "-bob", 5, ["bob"]]
_FLAGS = [True, False, 1, "true"]
_TEXTS = ["x", "", " ", "\n", "a\x00b", 5]
FIELD_VALUES: dict[str, list[Any]] = {
    "username": _NAMES,
    "with": _NAMES,
    "password": ["", "pw", "x" * 200, "x" * 201, "a\x00", 5],
    "old_password": ["", "pw", "x" * 200, "x" * 201, "a\x00", 5],
    "new_password": ["12345", "123456", "x" * 72, "x" * 73, " " * 8, "abc\x00def", 5],
    "create": _FLAGS,
    "live": _FLAGS,
    "unread_only": _FLAGS,
    "prank_opt_out": _FLAGS,
    "disabled": _FLAGS,
    "resume_after": [-1, 0, 1, 2**62, 2**62 + 1, True, "1", 1.5],
    "seq": [-1, 0, 1, 2**62, 2**62 + 1, True, "1", 1.5],
    "limit": [0, 1, 50, 1000, 1001, True, "5"],
    "before_seq": [0, 1, 2**62, 2**62 + 1, True],
    "before_id": [0, 1, 2**62, 2**62 + 1, True],
    "client": [*_TEXTS, "web", "x" * 100, "x" * 101],
    "invite": [*_TEXTS, "x" * 64, "x" * 65],
    "token": [*_TEXTS, "x" * 128, "x" * 129],
    "kind": ["email", "text", "announcement", "rickroll", "fax", "", 5],
    "to": [
        ["bob"],
        ["bob", "carol"],
        [],
        "bob",
        "",
        [f"u{i}" for i in range(100)],
        [f"u{i}" for i in range(101)],
        [5],
        ["b" * 33],
    ],
    "subject": ["S", "", " ", "x" * 200, "x" * 201, "a\nb", "a\tb", "a\x1bb", "a\u2028b", "a\x85"],
    "body": [*_TEXTS, "x" * 64_000, "x" * 64_001],
    "client_msg_id": [*_TEXTS, "x" * 64, "x" * 65],
    "search": [*_TEXTS, "50%", "x" * 200, "x" * 201],
    "seqs": [[1], [1, 1], [], [0], [2**62], [2**62 + 1], list(range(1, 1002)), ["1"], [True], 5],
}
_ABSENT = object()


@st.composite
def request_frames(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(request_types()))
    frame: dict[str, Any] = {"op": kind.__struct_config__.tag}
    for field in msgspec.structs.fields(kind):
        if field.encode_name not in FIELD_VALUES:  # `since`: an ISO date, beyond a schema
            continue
        value = draw(st.sampled_from([_ABSENT, None, *FIELD_VALUES[field.encode_name]]))
        if value is not _ABSENT:
            frame[field.encode_name] = value
    return frame


@settings(max_examples=600, deadline=None)
@given(frame=request_frames())
def test_the_schema_accepts_exactly_the_requests_the_parser_accepts(frame: dict[str, Any]) -> None:
    """Over canonical names (lower-case-able ASCII, no repeats: the parser also strips and
    de-duplicates them) and values at and past every limit, of the wrong type, null or absent."""
    try:
        parse_request(frame)
    except ProtocolError as exc:
        assert not REQUEST.is_valid(frame), f"the schema accepts what the parser refuses: {exc}"
    else:
        assert not _errors(REQUEST, frame), "the schema refuses what the parser accepts"


# -- the HTTP API's WebSocket, described in the OpenAPI document's x-websocket --------------------


async def test_real_websocket_messages_validate_against_the_openapi_document(
    tmp_path: Path,
) -> None:
    from test_web_api import http, login, open_websocket

    document = openapi_schema()
    closed = copy.deepcopy(document["components"]["schemas"])
    for definition in closed.values():
        if "properties" in definition:
            definition["additionalProperties"] = False

    def validator(side: str, schemas: dict[str, Any]) -> Any:
        text = json.dumps({**document["x-websocket"]["/api/ws"][side], "$defs": schemas})
        return jsonschema_rs.Draft202012Validator(
            json.loads(text.replace("#/components/schemas/", "#/$defs/"))
        )

    client_side = validator("client", document["components"]["schemas"])
    server_side = validator("server", closed)
    sent: list[dict[str, Any]] = []
    received: list[dict[str, Any]] = []

    async def say(ws: Any, message: dict[str, Any]) -> None:
        sent.append(message)
        await ws.send_message(json.dumps(message))

    async def hear(ws: Any, until: str) -> None:
        while True:
            message = json.loads(await ws.get_message())
            received.append(message)
            if message["event"] == until:
                return

    with trio.fail_after(30):
        async with running_broker(make_config(tmp_path, web_port=0)) as broker, http(broker) as api:
            alice, bob = await login(api, "alice"), await login(api, "bob")
            async with open_websocket(broker) as ws:
                await say(ws, {"op": "auth", "token": bob, "after_seq": 0})
                await hear(ws, "ready")
                response = await api.post(
                    "/api/texts",
                    json={"to": "bob", "body": "hi"},
                    headers={"Authorization": f"Bearer {alice}"},
                )
                assert response.status_code == 200
                await hear(ws, "mail")
                await say(ws, {"op": "ack", "seq": 1})
                await say(ws, {"op": "ping"})
                await hear(ws, "pong")
                async with open_websocket(broker) as alice_ws:
                    await say(alice_ws, {"op": "auth", "token": alice})
                    await hear(ws, "presence")
                await ws.send_message(json.dumps({"op": "teleport"}))
                await hear(ws, "error")
    for message in sent:
        assert not [e.message for e in client_side.iter_errors(message)], message
    for message in received:
        assert not [e.message for e in server_side.iter_errors(message)], message
    assert {m["event"] for m in received} == {"ready", "mail", "pong", "presence", "error"}
