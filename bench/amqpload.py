"""The RabbitMQ peer workloads, on quorum queues, with a client as lean as mailnet's.

    python -m bench.amqpload SCENARIO HOST:PORT JSON_PARAMS

`peer`: publisher→consumer pairs, like mailnet's durable 1:1 texts: each publisher keeps
`window` persistent messages (delivery mode 2) unconfirmed on its own durable quorum queue
(publisher confirms: RabbitMQ confirms after its write-ahead log's fsync), its consumer takes
them with manual acks. `request_response`: `connections` publishers, one persistent message in
flight each, to one quorum queue nobody consumes (a durable store and an answer per request,
like mailnet's send to an offline user). Every queue is fresh (named after this process) and
deleted at the end. Same ready/go protocol and result keys as bench.load.

The handshake and queue set-up are pamqp's frames; the hot path (Basic.Publish with its header
and body, Basic.Ack, Basic.Deliver) is framed and parsed here by hand, on the trio shape of the
lean mailnet client (one reader and one coalescing writer per connection, callbacks, no task per
message), so that the figures compare the brokers and not the client libraries.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Callable
from typing import Any

import trio
from pamqp import commands, frame

from .load import CoalescingWriter, latency_summary, now, ready_and_wait_for_go

PamqpFrame = Any  # a reply to a set-up method: one of pamqp's frame classes

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = b"\xce"
BASIC = 60
BASIC_PUBLISH, BASIC_DELIVER, BASIC_ACK, BASIC_NACK = 40, 60, 80, 120
_frame_head = struct.Struct(">BHI")
_method_head = struct.Struct(">HH")
_u64 = struct.Struct(">Q")


def method_frame(channel: int, payload: bytes) -> bytes:
    return _frame_head.pack(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END


def publish_frames(channel: int, queue: str, body: bytes) -> bytes:
    """Basic.Publish to the default exchange (routing key = queue), persistent, with its body."""
    key = queue.encode()
    method = (
        _method_head.pack(BASIC, BASIC_PUBLISH)
        + b"\x00\x00\x00"  # reserved short, empty exchange name
        + bytes((len(key),))
        + key
        + b"\x00"  # mandatory, immediate: off
    )
    # Content header: class, weight, body size, property flags (delivery-mode only), mode 2.
    props = struct.pack(">HHQH", BASIC, 0, len(body), 0x1000) + b"\x02"
    return (
        method_frame(channel, method)
        + _frame_head.pack(FRAME_HEADER, channel, len(props))
        + props
        + FRAME_END
        + _frame_head.pack(FRAME_BODY, channel, len(body))
        + body
        + FRAME_END
    )


def ack_frame(channel: int, tag: int, *, multiple: bool) -> bytes:
    payload = (
        _method_head.pack(BASIC, BASIC_ACK) + _u64.pack(tag) + (b"\x01" if multiple else b"\x00")
    )
    return method_frame(channel, payload)


class AmqpClient(CoalescingWriter):
    """One AMQP 0-9-1 connection with one channel (1).

    on_confirm(tag, multiple) runs for each publisher confirm, on_deliver(tag, body) for each
    delivered message (after its body frame); set-up replies are awaited by call()."""

    def __init__(self, stream: trio.SocketStream) -> None:
        super().__init__(stream)
        self.buffer = bytearray()
        self.on_confirm: Callable[[int, bool], None] = lambda tag, multiple: None
        self.on_deliver: Callable[[int, bytes], None] = lambda tag, body: None
        self.replies: list[tuple[trio.Event, list[PamqpFrame]]] = []
        self._delivering = 0  # the delivery tag whose header/body are still to come
        self.failed: str | None = None

    async def reader(self) -> None:
        buffer = self.buffer
        while True:
            data = await self.stream.receive_some(256 * 1024)
            if not data:
                raise trio.BrokenResourceError(f"RabbitMQ hung up: {self.failed or ''}")
            buffer += data
            size, pos = len(buffer), 0
            while size - pos >= 7:
                kind, _channel, length = _frame_head.unpack_from(buffer, pos)
                end = pos + 7 + length + 1
                if end > size:
                    break
                start = pos + 7
                if kind == FRAME_METHOD:
                    class_id, method_id = _method_head.unpack_from(buffer, start)
                    if class_id == BASIC and method_id == BASIC_ACK:
                        (tag,) = _u64.unpack_from(buffer, start + 4)
                        self.on_confirm(tag, bool(buffer[start + 12] & 1))
                    elif class_id == BASIC and method_id == BASIC_DELIVER:
                        at = start + 4
                        at += 1 + buffer[at]  # consumer tag
                        (self._delivering,) = _u64.unpack_from(buffer, at)
                    elif class_id == BASIC and method_id == BASIC_NACK:
                        raise RuntimeError("RabbitMQ refused a message (Basic.Nack)")
                    else:
                        self._reply(bytes(buffer[pos:end]))
                elif kind == FRAME_BODY:
                    self.on_deliver(self._delivering, bytes(buffer[start : end - 1]))
                elif kind == FRAME_HEARTBEAT:
                    self.queue(_frame_head.pack(FRAME_HEARTBEAT, 0, 0) + FRAME_END)
                pos = end
            del buffer[:pos]

    def _reply(self, raw: bytes) -> None:
        _, _, reply = frame.unmarshal(raw)
        if isinstance(reply, commands.Connection.Close | commands.Channel.Close):
            self.failed = f"{reply.reply_code} {reply.reply_text}"
            raise RuntimeError(f"RabbitMQ closed: {self.failed}")
        if self.replies:
            event, box = self.replies.pop(0)
            box.append(reply)
            event.set()

    async def call(self, channel: int, method: PamqpFrame) -> PamqpFrame:
        """Send a set-up method and wait for its reply."""
        event, box = trio.Event(), list[PamqpFrame]()
        self.replies.append((event, box))
        self.queue(frame.marshal(method, channel))
        with trio.fail_after(30):
            await event.wait()
        return box[0]


OPENED: list[AmqpClient] = []  # closed by close_all at the end of a scenario


async def close_all() -> None:
    while OPENED:
        await trio.aclose_forcefully(OPENED.pop().stream)


async def open_amqp(nursery: trio.Nursery, host: str, port: int) -> AmqpClient:
    stream = await trio.open_tcp_stream(host, port)
    client = AmqpClient(stream)
    OPENED.append(client)
    await stream.send_all(b"AMQP\x00\x00\x09\x01")
    # Connection.Start arrives unasked: read it (and Tune) before the reader takes over.
    waiting = trio.Event()
    box: list[PamqpFrame] = []
    client.replies.append((waiting, box))
    nursery.start_soon(client.reader)
    nursery.start_soon(client.writer)
    with trio.fail_after(30):
        await waiting.wait()
    tuned = trio.Event()
    tune: list[PamqpFrame] = []
    client.replies.append((tuned, tune))
    client.queue(
        frame.marshal(
            commands.Connection.StartOk(
                client_properties={"product": "mailnet-bench"},
                mechanism="PLAIN",
                response="\0guest\0guest",
                locale="en_US",
            ),
            0,
        )
    )
    with trio.fail_after(30):
        await tuned.wait()
    limits = tune[0]
    assert isinstance(limits, commands.Connection.Tune)
    client.queue(
        frame.marshal(
            commands.Connection.TuneOk(
                channel_max=limits.channel_max, frame_max=limits.frame_max, heartbeat=0
            ),
            0,
        )
    )
    await client.call(0, commands.Connection.Open(virtual_host="/"))
    await client.call(1, commands.Channel.Open())
    return client


async def declare_quorum_queue(client: AmqpClient, name: str) -> None:
    await client.call(
        1,
        commands.Queue.Declare(queue=name, durable=True, arguments={"x-queue-type": "quorum"}),
    )


class Tally:
    def __init__(self) -> None:
        self.measuring = False
        self.acked = 0
        self.delivered = 0
        self.latencies: list[float] = []


class Publisher:
    """Persistent publishes to one queue, `window` unconfirmed; each confirm posts the next."""

    def __init__(self, client: AmqpClient, queue: str, tally: Tally, *, timed: bool) -> None:
        self.client, self.queue, self.tally, self.timed = client, queue, tally, timed
        self.sent = 0  # delivery tags are 1, 2, 3, ... on a channel in confirm mode
        self.confirmed = 0
        self.running = True
        self.sent_at: dict[int, float] = {}
        client.on_confirm = self.on_confirm

    def post(self) -> None:
        self.sent += 1
        stamp = now()
        if self.timed:
            self.sent_at[self.sent] = stamp
        self.client.queue(publish_frames(1, self.queue, repr(stamp).encode()))

    def on_confirm(self, tag: int, multiple: bool) -> None:
        tally = self.tally
        through = tag if multiple else max(self.confirmed, tag)
        count = through - self.confirmed if multiple else 1
        self.confirmed = max(self.confirmed, through)
        if tally.measuring:
            tally.acked += count
            if self.timed:
                for t in range(tag - count + 1, tag + 1):
                    sent = self.sent_at.pop(t, None)
                    if sent is not None:
                        tally.latencies.append(now() - sent)
        elif self.timed:
            for t in range(tag - count + 1, tag + 1):
                self.sent_at.pop(t, None)
        if self.running:
            for _ in range(count):
                self.post()


async def peer(host: str, port: int, p: dict[str, Any]) -> dict[str, Any]:
    pairs, window, duration, warmup = p["pairs"], p["window"], p["duration"], p["warmup"]
    run_id = f"mailnet-bench-{os.getpid()}-{p.get('shard', 0)}"
    tally = Tally()
    queues = [f"{run_id}-{i}" for i in range(pairs)]

    def consumer_for(client: AmqpClient) -> Callable[[int, bytes], None]:
        def on_deliver(tag: int, body: bytes) -> None:
            if tally.measuring:
                tally.delivered += 1
                if tally.delivered % 16 == 0:
                    tally.latencies.append(now() - float(body))
            client.queue(ack_frame(1, tag, multiple=False))

        return on_deliver

    async with trio.open_nursery() as nursery:
        publishers = []
        setup = await open_amqp(nursery, host, port)
        for queue in queues:
            await declare_quorum_queue(setup, queue)
            sub = await open_amqp(nursery, host, port)
            await sub.call(1, commands.Basic.Qos(prefetch_count=window * 2))
            sub.on_deliver = consumer_for(sub)
            await sub.call(1, commands.Basic.Consume(queue=queue))
            pub = await open_amqp(nursery, host, port)
            await pub.call(1, commands.Confirm.Select())
            publishers.append(Publisher(pub, queue, tally, timed=False))
        await ready_and_wait_for_go()
        for publisher in publishers:
            for _ in range(window):
                publisher.post()
        await trio.sleep(warmup)
        tally.measuring = True
        started = now()
        await trio.sleep(duration)
        tally.measuring = False
        elapsed = now() - started
        for publisher in publishers:
            publisher.running = False
        for queue in queues:
            await setup.call(1, commands.Queue.Delete(queue=queue))
        nursery.cancel_scope.cancel()
    await close_all()
    return {
        "acked": tally.acked,
        "delivered": tally.delivered,
        "elapsed": elapsed,
        "latency": latency_summary(tally.latencies),
        "errors": 0,
    }


async def request_response(host: str, port: int, p: dict[str, Any]) -> dict[str, Any]:
    connections, duration, warmup = p["connections"], p["duration"], p["warmup"]
    queue = f"mailnet-bench-{os.getpid()}-{p.get('shard', 0)}-sink"
    tally = Tally()
    async with trio.open_nursery() as nursery:
        setup = await open_amqp(nursery, host, port)
        await declare_quorum_queue(setup, queue)
        publishers = []
        for _ in range(connections):
            pub = await open_amqp(nursery, host, port)
            await pub.call(1, commands.Confirm.Select())
            publishers.append(Publisher(pub, queue, tally, timed=True))
        await ready_and_wait_for_go()
        for publisher in publishers:
            publisher.post()
        await trio.sleep(warmup)
        tally.measuring = True
        started = now()
        await trio.sleep(duration)
        tally.measuring = False
        elapsed = now() - started
        for publisher in publishers:
            publisher.running = False
        await trio.sleep(0.5)  # the last confirms
        await setup.call(1, commands.Queue.Delete(queue=queue))
        nursery.cancel_scope.cancel()
    await close_all()
    return {
        "acked": tally.acked,
        "elapsed": elapsed,
        "latency": latency_summary(tally.latencies),
        "errors": 0,
    }


SCENARIOS = {"peer": peer, "request_response": request_response}


def main() -> None:
    scenario, address, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    host, port = address.rsplit(":", 1)
    result = trio.run(SCENARIOS[scenario], host, int(port), params)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
