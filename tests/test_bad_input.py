"""Bad input against a live broker over raw sockets: each gets a clear error frame or a clean
close, the broker logs it, keeps serving everyone else, and loses or corrupts nothing stored.

These tests speak the wire protocol by hand (no client library), as a hostile or buggy client
would.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from broker.protocol import NEED_DATA, FrameConnection, encode_frame
from broker.store import MailStore
from tests.conftest import RunningBroker

WAIT = 30  # seconds for any network wait (longer than the 10 s login timeout)


class RawClient:
    """A socket that sends hand-made bytes and reads whole frames, keeping their raw bytes."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.wait: float = WAIT  # per receive; raise it under autojump_clock (virtual time)
        self._buffer = bytearray()
        self._next_id = 0

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.send_raw(encode_frame(frame))

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a request with a fresh id and return the response that answers it."""
        self._next_id += 1
        rid = self._next_id
        await self.send({"op": op, "id": rid, **fields})
        while True:
            frame = await self.receive()
            if frame.get("re") == rid:
                return frame

    async def receive_raw(self) -> bytes | None:
        """The next frame's bytes, header included; None if the broker closed the connection."""
        with trio.fail_after(self.wait):
            while True:
                if len(self._buffer) >= 4:
                    (length,) = struct.unpack_from(">I", self._buffer)
                    if len(self._buffer) >= 4 + length:
                        raw = bytes(self._buffer[: 4 + length])
                        del self._buffer[: 4 + length]
                        return raw
                data = await self.stream.receive_some(65536)
                if not data:
                    assert not self._buffer, "connection closed in the middle of a frame"
                    return None
                self._buffer += data

    async def receive(self) -> dict[str, Any]:
        raw = await self.receive_raw()
        assert raw is not None, "the broker closed the connection"
        frames = FrameConnection()
        frames.receive_data(raw)
        frame = frames.next_frame()
        assert frame is not NEED_DATA and isinstance(frame, dict)
        return frame

    async def receive_error(self) -> dict[str, Any]:
        """The next error frame (skipping pushed events)."""
        while True:
            frame = await self.receive()
            if "event" not in frame:
                assert frame["ok"] is False, frame
                return frame

    async def assert_closed(self) -> None:
        """The broker closes the connection (pushed frames before the close are allowed)."""
        while await self.receive_raw() is not None:
            pass

    async def login(self, username: str, password: str = "password1") -> dict[str, Any]:
        response = await self.request("login", username=username, password=password, create=True)
        assert response["ok"], response
        return response


@asynccontextmanager
async def raw_connection(broker: RunningBroker) -> AsyncIterator[RawClient]:
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream("127.0.0.1", broker.info.tcp_port)
    try:
        yield RawClient(stream)
    finally:
        await trio.aclose_forcefully(stream)


def frame_with_payload(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def store_of(broker: RunningBroker) -> MailStore:
    return MailStore.open(broker.info.db_url)


async def assert_still_serving(broker: RunningBroker) -> None:
    """Two fresh users can log in and exchange a text, and the database is intact."""
    with trio.fail_after(WAIT):
        async with broker.user("healthy1") as one, broker.user("healthy2") as two:
            ack = await one.send_text("healthy2", "still here?")
            assert ack["message_id"] > 0
            entry = await two.next_mail()
            assert (entry["sender"], entry["body"]) == ("healthy1", "still here?")
    store = store_of(broker)
    try:
        assert store.integrity_check() == "ok"
    finally:
        store.close()


# -- malformed frames ---------------------------------------------------------------------------


async def test_bad_json_gets_bad_frame_and_the_connection_keeps_working(
    broker: RunningBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailnet")
    async with raw_connection(broker) as raw:
        await raw.send_raw(frame_with_payload(b'{"op": "ping", "id": 1'))
        error = await raw.receive_error()
        assert error["re"] is None  # the id could not be read
        assert error["error"]["code"] == "bad_frame"
        assert error["error"]["message"]
        assert (await raw.request("ping"))["pong"] is True
    assert any("bad frame" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\xc3\x28 not utf-8", "bad_frame"),
        (b"[1, 2, 3]", "bad_frame"),
        (b"", "bad_frame"),
        (b'{"n": ' + b"9" * 5000 + b"}", "bad_frame"),
        (b'{"op": "send", "kind": "text", "to": ["bob"], "body": "\\udc00"}', "bad_frame"),
    ],
)
async def test_every_malformed_frame_is_answered_and_the_next_one_works(
    broker: RunningBroker, payload: bytes, code: str
) -> None:
    async with raw_connection(broker) as raw:
        await raw.login("alice")
        await raw.send_raw(frame_with_payload(payload))
        error = await raw.receive_error()
        assert error["error"]["code"] == code
        assert (await raw.request("who"))["ok"] is True
    await assert_still_serving(broker)


async def test_unknown_op_gets_unknown_op_with_the_request_id(broker: RunningBroker) -> None:
    async with raw_connection(broker) as raw:
        await raw.send({"op": "subscribe", "id": 41, "topic": "#"})
        error = await raw.receive_error()
        assert error == {
            "re": 41,
            "ok": False,
            "error": {"code": "unknown_op", "message": "unknown operation 'subscribe'"},
        }
        assert (await raw.request("ping"))["ok"] is True


async def test_missing_fields_get_bad_request(broker: RunningBroker) -> None:
    async with raw_connection(broker) as raw:
        await raw.send({"id": 1})
        assert (await raw.receive_error())["error"]["code"] == "bad_request"
        response = await raw.request("login", username="alice")
        assert response["error"] == {"code": "bad_request", "message": "missing field 'password'"}
        await raw.login("alice")
        response = await raw.request("send", kind="email", to=["alice"], body="no subject")
        assert response["error"] == {"code": "bad_request", "message": "missing field 'subject'"}
        response = await raw.request("ack")
        assert response["error"] == {"code": "bad_request", "message": "missing field 'seq'"}


async def test_oversized_frame_header_is_refused_at_once_and_the_connection_closed(
    broker: RunningBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailnet")
    async with raw_connection(broker) as raw:
        await raw.login("alice")
        # Only the 4-byte header of a 4 GiB frame: the broker must refuse it without waiting
        # for (or making room for) the body, which is never sent.
        await raw.send_raw(struct.pack(">I", 0xFFFFFFFF))
        error = await raw.receive_error()
        assert error["re"] is None
        assert error["error"]["code"] == "frame_too_large"
        assert str(broker.config.max_frame_bytes) in error["error"]["message"]
        await raw.assert_closed()
    assert any("over the limit" in r.getMessage() for r in caplog.records)
    await assert_still_serving(broker)


async def test_oversized_header_behind_a_valid_frame_in_one_write(broker: RunningBroker) -> None:
    async with raw_connection(broker) as raw:
        limit = broker.config.max_frame_bytes
        await raw.send_raw(encode_frame({"op": "ping", "id": 1}) + struct.pack(">I", limit + 1))
        assert await raw.receive() == {"re": 1, "ok": True, "pong": True}
        assert (await raw.receive_error())["error"]["code"] == "frame_too_large"
        await raw.assert_closed()


async def test_frame_of_exactly_the_limit_is_read(broker: RunningBroker) -> None:
    async with raw_connection(broker) as raw:
        # Before login the limit is the pre-login one (a login is a few hundred bytes) ...
        limit = broker.config.max_pre_login_frame_bytes
        padding = limit - len(encode_frame({"op": "ping", "id": 1, "pad": ""})) + 4
        await raw.send({"op": "ping", "id": 1, "pad": "x" * padding})
        assert await raw.receive() == {"re": 1, "ok": True, "pong": True}
        # ... and once logged in, the full one.
        await raw.login("alice")
        limit = broker.config.max_frame_bytes
        padding = limit - len(encode_frame({"op": "ping", "id": 1, "pad": ""})) + 4
        await raw.send({"op": "ping", "id": 1, "pad": "x" * padding})
        while "event" in (answer := await raw.receive()):
            pass  # presence events may come first
        assert answer == {"re": 1, "ok": True, "pong": True}


# -- requests the broker refuses ----------------------------------------------------------------


@pytest.mark.parametrize("op", ["send", "inbox", "who", "history", "mark_read", "ack", "logout"])
async def test_requests_before_login_get_not_authenticated(broker: RunningBroker, op: str) -> None:
    fields: dict[str, Any] = {
        "send": {"kind": "text", "to": ["bob"], "body": "hi"},
        "mark_read": {"seqs": [1]},
        "ack": {"seq": 1},
    }.get(op, {})
    async with raw_connection(broker) as raw:
        response = await raw.request(op, **fields)
        assert response["error"] == {"code": "not_authenticated", "message": "log in first"}
        assert (await raw.request("ping"))["ok"] is True  # ping needs no login
    store = store_of(broker)
    try:
        assert store.count_users() == 0
    finally:
        store.close()


async def test_unknown_recipient_in_a_half_valid_list_stores_nothing_for_anyone(
    broker: RunningBroker,
) -> None:
    async with raw_connection(broker) as raw:
        for name in ("bob", "carol"):
            async with raw_connection(broker) as other:
                await other.login(name)
        await raw.login("alice")
        response = await raw.request(
            "send",
            kind="email",
            to=["bob", "ghost", "carol", "nobody"],
            subject="hello",
            body="half of you exist",
            client_msg_id="half-valid",
        )
        assert response["ok"] is False
        assert response["error"]["code"] == "unknown_recipient"
        assert "ghost" in response["error"]["message"]
        assert "nobody" in response["error"]["message"]
        assert "bob" not in response["error"]["message"]
        text = await raw.request("send", kind="text", to=["ghost"], body="boo")
        assert text["error"]["code"] == "unknown_recipient"
        history = await raw.request("history")
        assert history["items"] == []
        # The refused client_msg_id was not kept: the same id can be used once it is fixed.
        fixed = await raw.request(
            "send", kind="email", to=["bob"], subject="s", body="b", client_msg_id="half-valid"
        )
        assert fixed["ok"] is True and fixed["duplicate"] is False
    store = store_of(broker)
    try:
        for name, expected_seq in (("bob", 1), ("carol", 0), ("alice", 0)):
            user = store.user_by_name(name)
            assert user is not None and user.last_seq == expected_seq, name
        carol = store.user_by_name("carol")
        assert carol is not None and store.entries_after(carol.id, 0, 10) == []
        assert store.integrity_check() == "ok"
    finally:
        store.close()


async def test_empty_bodies_and_absurd_subjects_are_refused_and_nothing_is_stored(
    broker: RunningBroker,
) -> None:
    async with raw_connection(broker) as raw:
        async with raw_connection(broker) as bob:
            await bob.login("bob")
        await raw.login("alice")
        refused = [
            {"kind": "text", "to": ["bob"], "body": ""},
            {"kind": "text", "to": ["bob"], "body": "   \n"},
            {"kind": "text", "to": ["bob"]},
            {"kind": "email", "to": ["bob"], "subject": "s", "body": ""},
            {"kind": "email", "to": ["bob"], "subject": "s" * 500_000, "body": "b"},
            {"kind": "email", "to": ["bob"], "subject": "line one\nline two", "body": "b"},
            {"kind": "email", "to": ["bob"], "subject": "s", "body": "b" * 64_001},
            {"kind": "announcement", "subject": "s" * 201, "body": "b"},
            {"kind": "text", "to": ["bob"], "body": "nul \x00 byte"},
        ]
        for fields in refused:
            response = await raw.request("send", **fields)
            assert response["ok"] is False, fields
            assert response["error"]["code"] == "bad_request", fields
            assert len(response["error"]["message"]) < 200  # the absurd value is not echoed
        assert (await raw.request("history"))["items"] == []
    store = store_of(broker)
    try:
        bob_record = store.user_by_name("bob")
        assert bob_record is not None and bob_record.last_seq == 0
    finally:
        store.close()


async def test_wrong_password_and_unknown_user_get_byte_identical_errors(
    broker: RunningBroker,
) -> None:
    async with broker.user("alice", "right-password"):
        pass
    answers = []
    for username, password in (("alice", "wrong-password"), ("mallory", "wrong-password")):
        async with raw_connection(broker) as raw:
            await raw.send({"op": "login", "id": 1, "username": username, "password": password})
            answers.append(await raw.receive_raw())
    assert answers[0] is not None
    assert answers[0] == answers[1]
    frame = json.loads(answers[0][4:])
    assert frame["error"]["code"] == "auth_failed"


async def test_a_second_login_on_one_connection_is_refused(broker: RunningBroker) -> None:
    async with raw_connection(broker) as raw:
        await raw.login("alice")
        response = await raw.request("login", username="alice", password="password1")
        assert response["error"]["code"] == "already_authenticated"
        assert (await raw.request("who"))["ok"] is True


async def test_mark_read_of_someone_elses_seq_is_not_found(broker: RunningBroker) -> None:
    async with raw_connection(broker) as raw:
        await raw.login("alice")
        response = await raw.request("mark_read", seqs=[1, 2])
        assert response["error"]["code"] == "not_found"


# -- clients that go away -------------------------------------------------------------------------


async def test_client_disconnecting_mid_frame_does_not_disturb_the_broker(
    broker: RunningBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mailnet")
    with trio.fail_after(WAIT):
        async with broker.user("watcher") as watcher:
            for cut in (2, 4, 20):  # inside the header, right after it, inside the body
                async with raw_connection(broker) as raw:
                    await raw.login(f"quitter{cut}")
                    data = encode_frame(
                        {"op": "send", "id": 9, "kind": "text", "to": ["watcher"], "body": "x"}
                    )
                    await raw.send_raw(data[:cut])
                # closed: the half frame must not be stored or delivered
            assert await watcher.who() is not None
            store = store_of(broker)
            try:
                record = store.user_by_name("watcher")
                assert record is not None and record.last_seq == 0
            finally:
                store.close()
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)
    await assert_still_serving(broker)


async def test_client_vanishing_with_sends_in_flight_leaves_the_store_consistent(
    broker: RunningBroker,
) -> None:
    async with broker.user("bob"):
        pass
    async with raw_connection(broker) as raw:
        await raw.login("alice")
        await raw.send_raw(
            b"".join(
                encode_frame(
                    {
                        "op": "send",
                        "id": 100 + i,
                        "kind": "text",
                        "to": ["bob"],
                        "body": f"m{i}",
                        "client_msg_id": f"m{i}",
                    }
                )
                for i in range(50)
            )
        )
    # Whatever was stored is whole: bob's sequence has no gaps and every entry has its message.
    with trio.fail_after(WAIT):
        async with broker.user("bob") as bob:
            inbox = await bob.inbox(limit=100)
    seqs = sorted(entry["seq"] for entry in inbox["entries"])
    assert seqs == list(range(1, len(seqs) + 1))
    assert len({entry["body"] for entry in inbox["entries"]}) == len(seqs)
    await assert_still_serving(broker)


async def test_the_broker_survives_every_bad_input_in_a_row(broker: RunningBroker) -> None:
    """All of the above against one broker, with a well-behaved client connected throughout."""
    with trio.fail_after(WAIT * 3):
        async with broker.user("steady") as steady, broker.user("peer") as peer:
            async with raw_connection(broker) as raw:
                await raw.send_raw(frame_with_payload(b"{nope"))
                assert (await raw.receive_error())["error"]["code"] == "bad_frame"
                assert (await raw.request("fly"))["error"]["code"] == "unknown_op"
                assert (await raw.request("send"))["error"]["code"] == "bad_request"
                not_yet = await raw.request("send", kind="text", to=["peer"], body="hi")
                assert not_yet["error"]["code"] == "not_authenticated"
                await raw.login("rogue")
                ghost = await raw.request("send", kind="text", to=["ghost"], body="hi")
                assert ghost["error"]["code"] == "unknown_recipient"
                await raw.send_raw(struct.pack(">I", 2**31))
                assert (await raw.receive_error())["error"]["code"] == "frame_too_large"
                await raw.assert_closed()
            async with raw_connection(broker) as raw:
                await raw.send_raw(encode_frame({"op": "ping", "id": 1})[:-3])
            ack = await steady.send_text("peer", "business as usual")
            entry = await peer.next_mail()
            assert entry["message_id"] == ack["message_id"]
            assert {u["username"] for u in await steady.who()} == {"steady", "peer"}
    await assert_still_serving(broker)


async def test_a_client_that_never_logs_in_is_closed_after_the_login_timeout(
    broker: RunningBroker, autojump_clock: trio.abc.Clock
) -> None:
    async with raw_connection(broker) as raw:
        await raw.request("ping")  # chatting does not extend the login deadline
        error = await raw.receive_error()
        assert error == {
            "re": None,
            "ok": False,
            "error": {"code": "timeout", "message": "login took too long"},
        }
        await raw.assert_closed()


async def test_an_ack_beyond_the_mailbox_does_not_hide_later_mail(broker: RunningBroker) -> None:
    """A buggy client acking a seq it was never sent must not silence its user's future mail."""
    async with raw_connection(broker) as raw:
        await raw.login("bob")
        await raw.send({"op": "ack", "seq": 10**12})
        assert (await raw.request("ping"))["ok"] is True  # the ack got no response
        assert (await raw.request("logout"))["bye"] is True
    with trio.fail_after(WAIT):
        async with broker.user("bob") as bob, broker.user("alice") as alice:
            await alice.send_text("bob", "can you still hear me?")
            entry = await bob.next_mail()
            assert entry["body"] == "can you still hear me?"


async def test_an_announcement_nobody_else_can_receive_is_stored_without_error(
    broker: RunningBroker,
) -> None:
    """The only user announces: no mailbox gets an entry, and the group commit must not choke on
    a batch that allocates no sequence numbers (nor fail the other sends in it)."""
    with trio.fail_after(WAIT):
        async with broker.user("alone") as alone:
            ack = await alone.announce("Hello?", "is anyone out there")
            assert ack["message_id"] > 0 and ack["duplicate"] is False
            items = await alone.history()
            assert [(i["kind"], i["direction"]) for i in items] == [("announcement", "out")]
    await assert_still_serving(broker)


async def test_a_resume_point_beyond_the_mailbox_does_not_hide_mail(broker: RunningBroker) -> None:
    """resume_after past the last seq (a client from before a database restore, or a buggy one)
    starts from the end of the mailbox instead of skipping whatever comes next."""
    async with broker.user("alice"), broker.user("bob"):
        pass
    with trio.fail_after(WAIT):
        async with raw_connection(broker) as raw, broker.user("alice") as alice:
            response = await raw.request(
                "login", username="bob", password="password1", resume_after=10**12
            )
            assert response["ok"] is True
            assert response["resume_after"] == response["last_seq"] == 0
            await alice.send_text("bob", "first")
            while (frame := await raw.receive()).get("event") != "mail":
                pass
            assert frame["entry"]["seq"] == 1
            await raw.send({"op": "ack", "seq": 10**12})
            assert (await raw.request("logout"))["bye"] is True
        async with broker.user("bob") as bob, broker.user("alice") as alice:
            await alice.send_text("bob", "second")
            entry = await bob.next_mail()
            assert (entry["seq"], entry["body"]) == (2, "second")


async def test_extreme_dates_and_numbers_are_refused_or_answered_never_internal(
    broker: RunningBroker,
) -> None:
    """Values at the edges of what the database can hold get a clear answer, not a traceback."""
    async with raw_connection(broker) as raw:
        await raw.login("alice")
        for fields in (
            {"since": "9999-12-31T23:59:59-14:00"},
            {"since": "0001-01-01T00:00:00+14:00"},
        ):
            response = await raw.request("history", **fields)
            assert response["error"]["code"] == "bad_request", fields
        edge_cases: list[tuple[str, dict[str, Any]]] = [
            ("history", {"since": "9999-12-31T00:00:00Z"}),
            ("history", {"since": "0001-01-01"}),
            ("history", {"before_id": 2**62}),
            ("inbox", {"before_seq": 2**62}),
        ]
        for op, fields in edge_cases:
            response = await raw.request(op, **fields)
            assert response["ok"] is True, (op, fields, response)
        for seqs in ([2**62], [2**63], [10**30]):
            response = await raw.request("mark_read", seqs=seqs)
            assert response["error"]["code"] in ("not_found", "bad_request"), seqs
        response = await raw.request("ack", seq=2**63)
        assert response["error"]["code"] == "bad_request"


async def test_only_well_formed_frames_keep_a_session_alive(
    broker: RunningBroker, autojump_clock: trio.abc.Clock
) -> None:
    """Any frame that is a JSON object resets the heartbeat timer, even an ack (no response) or
    a request refused as unknown or invalid; garbage does not, so it cannot hold a session."""
    timeout = broker.config.heartbeat_timeout
    keepalives: list[dict[str, Any]] = [
        {"op": "ack", "seq": 0},
        {"op": "fly", "id": 900},  # unknown_op
        {"op": "send", "id": 901},  # bad_request
    ]
    with trio.fail_after(24 * 3600):  # virtual time; a hang jumps straight here
        async with raw_connection(broker) as raw:
            # Waiting on bcrypt's thread lets virtual time race ahead: no per-receive limit.
            raw.wait = 24 * 3600
            await raw.login("keeper")
            for frame in keepalives * 2:
                await trio.sleep(timeout * 2 / 3)
                await raw.send(frame)
            assert (await raw.request("ping"))["ok"] is True  # 4 timeouts later, still here
            last_good = trio.current_time()
            await trio.sleep(timeout * 2 / 3)
            await raw.send_raw(frame_with_payload(b"not json"))
            assert (await raw.receive_error())["error"]["code"] == "bad_frame"
            expired = await raw.receive_error()
            assert expired["error"] == {
                "code": "timeout",
                "message": "no heartbeat: session expired",
            }
            assert trio.current_time() - last_good >= timeout
            await raw.assert_closed()


async def test_a_page_of_long_messages_is_cut_to_fit_a_frame_never_dropped(
    broker: RunningBroker,
) -> None:
    """70 maximal texts (64,000 four-byte characters each, ~17 MiB) do not fit one frame: the
    inbox and history pages stop short, say so, and the next page carries on."""
    body = "📧" * 64_000
    with trio.fail_after(60):
        async with broker.user("alice") as alice, broker.user("bob") as bob:
            async with trio.open_nursery() as nursery:
                for _ in range(70):
                    nursery.start_soon(alice.send_text, "bob", body)
            first = await bob.inbox(limit=100)
            assert first["truncated"] is True
            assert 1 <= len(first["entries"]) < 70
            assert all(e["body"] == body for e in first["entries"])
            rest = await bob.inbox(limit=100, before_seq=first["entries"][-1]["seq"])
            assert "truncated" not in rest
            seqs = [e["seq"] for e in first["entries"] + rest["entries"]]
            assert seqs == list(range(70, 0, -1))
            history = await bob.request("history", limit=100)
            assert history["truncated"] is True and len(history["items"]) < 70
            small = await bob.inbox(limit=5)
            assert len(small["entries"]) == 5 and "truncated" not in small
