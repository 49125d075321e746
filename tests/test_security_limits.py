"""Limits against a live broker: oversized frames, slow and silent sockets, connection counts,
send rate, mailbox quota. Each refusal must reach the client as an error code and the broker's
log as a line."""

from __future__ import annotations

import logging
import ssl
import struct
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from broker.client import RequestFailed, Trust, connect
from broker.core.throttle import ConnectionLimits
from broker.protocol import NEED_DATA, FrameConnection, encode_frame
from broker.transport import tcp
from tests.conftest import RunningBroker, make_config, running_broker

TIMEOUT = 10


class RawConnection:
    """A client speaking frames by hand, so tests can send what no real client would."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.frames = FrameConnection(max_frame_bytes=1 << 30)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        await self.send_raw(encode_frame({"op": op, "id": 1, **fields}))
        return await self.receive()

    async def receive(self) -> dict[str, Any]:
        """The next frame; AssertionError if the broker closes first."""
        frame = await self.receive_or_close()
        assert frame is not None, "the broker closed the connection"
        return frame

    async def receive_or_close(self) -> dict[str, Any] | None:
        while (frame := self.frames.next_frame()) is NEED_DATA:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            self.frames.receive_data(data)
        assert isinstance(frame, dict)
        return frame

    async def wait_closed(self) -> list[dict[str, Any]]:
        """Every frame until the broker closes the connection."""
        frames = []
        while (frame := await self.receive_or_close()) is not None:
            frames.append(frame)
        return frames


@asynccontextmanager
async def raw_connection(
    broker: RunningBroker, *, local_address: str | None = None
) -> AsyncIterator[RawConnection]:
    stream = await trio.open_tcp_stream(
        "127.0.0.1", broker.info.tcp_port, local_address=local_address
    )
    async with stream:
        yield RawConnection(stream)


def logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    """How many broker log lines contain `text`."""
    return sum(text in r.getMessage() for r in caplog.records if r.name.startswith("mailnet"))


# -- oversized frames --------------------------------------------------------------------------


class RecordingFrameConnection(FrameConnection):
    """The broker's FrameConnection, recording the largest buffer it ever held."""

    largest_buffer = 0
    bytes_received = 0

    def receive_data(self, data: bytes) -> None:
        type(self).bytes_received += len(data)
        try:
            super().receive_data(data)
        finally:
            type(self).largest_buffer = max(type(self).largest_buffer, self.buffered)


@pytest.fixture
def recording_frames(monkeypatch: pytest.MonkeyPatch) -> type[RecordingFrameConnection]:
    RecordingFrameConnection.largest_buffer = RecordingFrameConnection.bytes_received = 0
    monkeypatch.setattr(tcp, "FrameConnection", RecordingFrameConnection)
    return RecordingFrameConnection


async def test_frame_claiming_2_gib_is_refused_from_its_header_alone(
    broker: RunningBroker,
    recording_frames: type[RecordingFrameConnection],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with trio.fail_after(TIMEOUT):
            async with raw_connection(broker) as raw:
                await raw.send_raw(struct.pack(">I", 2**31))  # and nothing more
                frames = await raw.wait_closed()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [f["error"]["code"] for f in frames] == ["frame_too_large"]
    assert recording_frames.bytes_received == 4
    assert recording_frames.largest_buffer <= 4
    assert peak - before < 16 * 1024 * 1024  # nowhere near the 2 GiB claimed
    assert logged(caplog, "over the limit") == 1
    async with broker.user("alice") as alice:  # and the broker serves on
        await alice.who()


async def test_oversized_frame_sent_with_its_body_is_never_buffered_whole(
    broker_config: Any,
    tmp_path: Path,
    recording_frames: type[RecordingFrameConnection],
) -> None:
    config = make_config(tmp_path / "small", max_frame_bytes=1024)
    with trio.fail_after(TIMEOUT):
        async with running_broker(config) as broker, raw_connection(broker) as raw:
            body = b"x" * 4096
            await raw.send_raw(struct.pack(">I", len(body)) + body)
            frames = await raw.wait_closed()
    assert [f["error"]["code"] for f in frames] == ["frame_too_large"]
    # Whatever arrived in one read may sit in the buffer; it is dropped, not kept growing.
    assert recording_frames.largest_buffer <= recording_frames.bytes_received
    assert recording_frames.largest_buffer <= 4 + len(body)


# -- slow sockets --------------------------------------------------------------------------------

CLIENT_HELLO_START = bytes.fromhex("16030100f4010000f00303")  # a ClientHello, cut short


async def test_slow_and_silent_sockets_are_closed_at_the_login_timeout_while_a_client_logs_in(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    login_timeout = 5.0  # generous: the 50 sockets and the real client must all start first
    config = make_config(
        tmp_path,
        insecure_plaintext=False,  # TLS, so some sockets can stall inside the handshake
        login_timeout=login_timeout,
        max_connections_per_ip=100,
    )
    silent, mid_handshake, dribbling = 20, 15, 15
    closed: dict[str, int] = {"silent": 0, "mid_handshake": 0, "dribbling": 0}
    still_open = trio.Event()
    client_context = ssl.create_default_context()
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE

    async with running_broker(config) as broker:
        port = broker.info.tcp_port

        async def stall(kind: str, task_status: trio.TaskStatus[None]) -> None:
            stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
            if kind == "mid_handshake":
                await stream.send_all(CLIENT_HELLO_START)
            elif kind == "dribbling":
                stream = trio.SSLStream(stream, client_context, server_hostname="localhost")
                await stream.do_handshake()
            task_status.started()
            async with stream:
                try:
                    if kind == "dribbling":
                        login = encode_frame({"op": "login", "username": "slowpoke"})
                        for byte in login[:-1]:  # never the last byte
                            await stream.send_all(bytes([byte]))
                            await trio.sleep(login_timeout / 20)
                    while await stream.receive_some(4096):
                        pass
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            closed[kind] += 1
            assert still_open.is_set(), "a slow socket was closed before the real client was in"

        with trio.fail_after(login_timeout * 3 + TIMEOUT):
            async with trio.open_nursery() as nursery:
                for kind, count in (
                    ("silent", silent),
                    ("mid_handshake", mid_handshake),
                    ("dribbling", dribbling),
                ):
                    for _ in range(count):
                        await nursery.start(stall, kind)
                # Fifty sockets hang on the broker; a real client still gets in, at once.
                known = tmp_path / "known_servers.json"
                async with connect(broker.address, trust=Trust.pinning(known)) as client:
                    await client.login("alice", "password1", create=True)
                    assert sum(closed.values()) == 0
                    still_open.set()
                    await client.who()
        assert closed == {"silent": silent, "mid_handshake": mid_handshake, "dribbling": dribbling}
    assert logged(caplog, "TLS handshake took too long") == silent + mid_handshake
    assert logged(caplog, "no login within") == dribbling


# -- connection counts -----------------------------------------------------------------------------


async def test_connections_are_limited_per_address_and_in_total(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(tmp_path, max_connections=5, max_connections_per_ip=3)
    with trio.fail_after(TIMEOUT):
        async with running_broker(config) as broker:
            async with trio.open_nursery() as nursery:

                async def hold(local: str, task_status: trio.TaskStatus[None]) -> None:
                    async with raw_connection(broker, local_address=local) as raw:
                        assert (await raw.request("ping"))["pong"]
                        task_status.started()
                        await trio.sleep_forever()

                for _ in range(3):
                    await nursery.start(hold, "127.0.0.1")
                async with raw_connection(broker, local_address="127.0.0.1") as raw:
                    frames = await raw.wait_closed()
                assert [f["error"]["code"] for f in frames] == ["too_many_connections"]
                assert "your address" in frames[0]["error"]["message"]
                for _ in range(2):
                    await nursery.start(hold, "127.0.0.2")
                async with raw_connection(broker, local_address="127.0.0.3") as raw:
                    frames = await raw.wait_closed()
                assert [f["error"]["code"] for f in frames] == ["too_many_connections"]
                assert "too many connections" in frames[0]["error"]["message"]
                assert logged(caplog, "refusing connection from") == 2
                nursery.cancel_scope.cancel()
            # Closed connections give their places back (once the broker has seen them go).
            while True:
                async with raw_connection(broker, local_address="127.0.0.1") as raw:
                    await raw.send_raw(encode_frame({"op": "ping", "id": 1}))
                    reply = await raw.receive_or_close()
                if reply is not None and reply["ok"]:
                    break
                await trio.sleep(0.01)


# -- send rate and quota ---------------------------------------------------------------------------


async def test_send_rate_is_limited_per_user(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(tmp_path, send_rate=0.01, send_burst=3)
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(config) as broker,
            broker.user("alice") as alice,
            broker.user("bob") as bob,
        ):
            for i in range(3):
                await alice.send_text("bob", f"text {i}")
            with pytest.raises(RequestFailed) as refused:
                await alice.send_text("bob", "one too many")
            assert refused.value.code == "rate_limited"
            assert refused.value.details["retry_after"] > 0
            # Another user's budget is their own.
            await bob.send_text("alice", "hello")
            # The same user on a second connection shares the budget.
            async with broker.client() as again:
                await again.login("alice", "password1")
                with pytest.raises(RequestFailed) as refused:
                    await again.send_text("bob", "still too many")
                assert refused.value.code == "rate_limited"
    assert logged(caplog, "sending too fast") == 2


async def test_a_burst_of_one_allows_exactly_one_send(tmp_path: Path) -> None:
    # The first send of a user makes their token bucket while its group already read the
    # clock: that earlier reading must not count as time gone backwards (a lost token).
    config = make_config(tmp_path, send_rate=0.01, send_burst=1)
    with trio.fail_after(TIMEOUT):
        async with running_broker(config) as broker, broker.user("alice") as alice:
            await alice.send_text("alice", "the one the burst allows")
            with pytest.raises(RequestFailed) as refused:
                await alice.send_text("alice", "one too many")
            assert refused.value.code == "rate_limited"


async def test_mailbox_quota_refuses_sends_until_the_owner_catches_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(tmp_path, mailbox_quota=3)
    with trio.fail_after(TIMEOUT):
        async with running_broker(config) as broker:
            async with broker.user("bob"):
                pass
            async with broker.user("alice") as alice:
                for i in range(3):
                    await alice.send_text("bob", f"text {i}")
                with pytest.raises(RequestFailed) as refused:
                    await alice.send_text("bob", "one too many")
                assert refused.value.code == "quota_exceeded"
                assert "bob" in refused.value.message
                async with broker.client() as bob:
                    await bob.login("bob", "password1")
                    for _ in range(3):
                        await bob.next_mail()
                    await bob.logout()  # acknowledges what it received
                await alice.send_text("bob", "room again")
    assert logged(caplog, "mailbox full") == 1


def test_limits_count_an_ipv6_subscriber_by_its_64() -> None:
    from broker.core.throttle import client_network

    assert client_network("2001:db8:1:2:aaaa::1") == client_network("2001:db8:1:2:bbbb::9")
    assert client_network("2001:db8:1:2::1") != client_network("2001:db8:1:3::1")
    assert client_network("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_network("192.0.2.7") == "192.0.2.7"
    limits = ConnectionLimits(total=10, per_ip=2)
    assert limits.admit("2001:db8::1") is None
    assert limits.admit("2001:db8::2") is None
    assert limits.admit("2001:db8::3") == "too many connections from your address"
    limits.release("2001:db8::1")
    assert limits.admit("2001:db8::4") is None
