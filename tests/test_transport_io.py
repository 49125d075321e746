"""The TCP transport's own I/O: FastSocketStream over real loopback sockets, and ReadDeadlines.

FastSocketStream skips trio's scheduling pass when a read or write can complete at once; these
tests pin what it must still do like trio's SocketStream: deliver every byte in order however
full the socket gets, report EOF, a reset and a close, stay cancellable, and let other tasks
run when its socket never runs dry.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

import pytest
import trio
import trustme

from broker.transport.deadlines import ReadDeadlines
from broker.transport.fastsocket import FAIR_EVERY, FastSocketStream, FastTLSStream


async def _connected_pair() -> tuple[FastSocketStream, trio.SocketStream, trio.abc.Listener]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    assert isinstance(server, trio.SocketStream)
    return FastSocketStream(server), client, listener


async def _read_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = await stream.receive_some(65536)
        assert chunk, "EOF before every byte arrived"
        got += chunk
    return bytes(got)


async def test_a_send_larger_than_the_socket_buffers_arrives_whole_and_in_order() -> None:
    fast, client, listener = await _connected_pair()
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB: the socket fills, the send must wait
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fast.send_all, payload)
        assert await _read_exactly(client, len(payload)) == payload
    # And the other way: the peer's many writes arrive through receive_some in order.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, payload)
        assert await _read_exactly(fast, len(payload)) == payload
    await fast.aclose()
    await client.aclose()
    await listener.aclose()


async def test_eof_reset_and_close_are_reported_like_trios_socket_stream() -> None:
    fast, client, listener = await _connected_pair()
    await client.send_all(b"last words")
    await client.send_eof()
    assert await _read_exactly(fast, 10) == b"last words"
    assert await fast.receive_some(100) == b""  # EOF

    fast2, client2, listener2 = await _connected_pair()
    # A reset: the peer closes with unread data and SO_LINGER 0, which sends RST.
    client2.socket.setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
    )
    await client2.aclose()
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(100):  # writes to a reset connection fail (the first may be taken)
            await fast2.send_all(b"x" * 65536)
            await trio.sleep(0.01)

    await fast2.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await fast2.receive_some(10)
    with pytest.raises(trio.ClosedResourceError):
        fast2.try_send(b"x")
    for resource in (fast, client, listener, listener2):
        await resource.aclose()


async def test_a_read_waiting_for_data_can_be_cancelled_and_closed_under_it() -> None:
    fast, client, listener = await _connected_pair()
    with trio.move_on_after(0.05) as scope:
        await fast.receive_some(10)  # nothing comes
    assert scope.cancelled_caught

    async def close_soon() -> None:
        await trio.sleep(0.05)
        await fast.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_soon)
        with pytest.raises(trio.ClosedResourceError):
            await fast.receive_some(10)
    await client.aclose()
    await listener.aclose()


async def test_a_reader_whose_socket_never_runs_dry_still_lets_other_tasks_run() -> None:
    fast, client, listener = await _connected_pair()
    reads = 50 * FAIR_EVERY
    await client.send_all(b"z" * reads)  # all queued: every 1-byte read completes at once
    ticks = 0

    async def count_turns() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(count_turns)
        await trio.lowlevel.checkpoint()  # the counter has started
        before = ticks
        for _ in range(reads):
            assert await fast.receive_some(1) == b"z"
        during = ticks - before
        nursery.cancel_scope.cancel()
    # The reader yielded about once every FAIR_EVERY reads: the other task had its turns.
    assert during >= reads // FAIR_EVERY - 1
    for resource in (fast, client, listener):
        await resource.aclose()


async def test_try_send_writes_what_fits_now_and_never_waits() -> None:
    fast, client, listener = await _connected_pair()
    written = 0
    chunk = b"y" * 65536
    for _ in range(1000):  # fill the socket: eventually it takes nothing
        n = fast.try_send(chunk)
        written += n
        if n == 0:
            break
    else:
        pytest.fail("the socket never filled up")
    assert written > 0
    assert await _read_exactly(client, written) == b"y" * written
    for resource in (fast, client, listener):
        await resource.aclose()


@dataclass(eq=False)
class _Reader:
    deadline: float
    waiting: bool
    expired: int = 0

    def expire_soon(self) -> None:
        self.expired += 1


def test_read_deadlines_end_only_readers_waiting_past_their_deadline() -> None:
    deadlines = ReadDeadlines(10.0, 30.0)
    assert deadlines.period == 1.0  # a quarter of the shortest timeout, at most a second
    assert ReadDeadlines(0.2, 30.0).period == pytest.approx(0.05)
    late = _Reader(deadline=99.0, waiting=True)
    busy = _Reader(deadline=99.0, waiting=False)  # past it, but handling what it read
    early = _Reader(deadline=101.0, waiting=True)
    for reader in (late, busy, early):
        deadlines.add(reader)
    assert deadlines.expire_due(100.0) == 1
    assert (late.expired, busy.expired, early.expired) == (1, 0, 0)
    assert deadlines.expire_due(100.5) == 0  # ended once, not at every pass
    assert len(deadlines) == 2
    assert deadlines.expire_due(102.0) == 1  # the early one's time came
    assert early.expired == 1
    deadlines.discard(busy)
    busy.waiting = True
    assert deadlines.expire_due(200.0) == 0  # gone (its connection closed)


# -- TLS on the descriptor (FastTLSStream) -------------------------------------------------------


async def _tls_pair(
    ca: trustme.CA,
) -> tuple[FastTLSStream, trio.SSLStream[trio.SocketStream], trio.abc.Listener]:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    fast, plain_client, listener = await _connected_pair()
    tls = FastTLSStream(fast, server_context)
    client = trio.SSLStream(plain_client, client_context, server_hostname="127.0.0.1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tls.do_handshake)
        nursery.start_soon(client.do_handshake)
    return tls, client, listener


async def test_tls_on_the_descriptor_carries_large_writes_both_ways_and_reports_eof() -> None:
    tls, client, listener = await _tls_pair(trustme.CA())
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB: OpenSSL's writes must wait and retry
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tls.send_all, payload)
        assert await _read_exactly(client, len(payload)) == payload
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, payload)
        assert await _read_exactly(tls, len(payload)) == payload
    await client.aclose()  # close_notify
    assert await tls.receive_some(100) == b""
    await tls.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await tls.receive_some(10)
    await listener.aclose()


async def test_a_client_that_does_not_speak_tls_fails_the_handshake_cleanly() -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(server_context)
    fast, client, listener = await _connected_pair()
    tls = FastTLSStream(fast, server_context)
    await client.send_all(b'\x00\x00\x00\x10{"op": "ping"}\n' * 4)  # plaintext, not a hello
    with pytest.raises(trio.BrokenResourceError):
        await tls.do_handshake()
    await tls.aclose()
    await client.aclose()
    await listener.aclose()


async def test_tls_small_records_one_at_a_time_are_each_read_at_once() -> None:
    # Request/response over TLS: every small record must be readable as soon as it arrives
    # (nothing may sit decrypted inside OpenSSL while the reader waits on the socket).
    tls, client, listener = await _tls_pair(trustme.CA())
    with trio.fail_after(10):
        for n in range(300):
            message = f"ping {n}".encode()
            await client.send_all(message)
            assert await tls.receive_some(65536) == message
            await tls.send_all(b"pong " + message)
            assert await client.receive_some(65536) == b"pong " + message
        # And many records in one burst: all of them come out, in order.
        burst = [f"record {n};".encode() for n in range(200)]
        for record in burst:
            await client.send_all(record)
        assert await _read_exactly(tls, sum(map(len, burst))) == b"".join(burst)
    await client.aclose()
    await tls.aclose()
    await listener.aclose()
