"""The Mosquitto peer workload: publisher→subscriber pairs at QoS 1, like mailnet's peer texts.

    python -m bench.mqttload HOST:PORT JSON_PARAMS

Each publisher keeps `window` QoS 1 PUBLISHes unacknowledged (a PUBACK frees a slot) to its own
subscriber, who is on a persistent session (clean session off, a fresh client id per run) at
QoS 1 and answers every PUBLISH with a PUBACK. Deliveries and PUBACKs are counted inside the
measured interval, after a warm-up; send→deliver latency from a timestamp in the payload. The
subscribers' sessions are removed afterwards (a reconnect with clean session on), so Mosquitto
keeps nothing of ours. Same parameters, the same ready/go protocol on stdin/stdout and the same
result keys as bench.load.

The default client ("client": "lean") is a minimal MQTT 3.1.1 client on trio sockets, built
like bench.load's lean mailnet client: per connection one reader task and one writer
task that coalesces everything queued into one send_all, callbacks in the reader (a PUBACK
posts the next PUBLISH, a PUBLISH queues its PUBACK), no task per message. So the ratio of the
two figures compares the brokers, not the client libraries. `"client": "paho"` drives
paho-mqtt instead (all clients from one thread through its external-loop API), as before; it
costs about ten times as much CPU per message.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from .load import CoalescingWriter, latency_summary, ready_and_wait_for_go

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

now = time.perf_counter

# MQTT 3.1.1 control packet types (the high nibble of the first byte).
CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP = 2, 3, 4, 9, 13
DISCONNECT_PACKET = b"\xe0\x00"
KEEPALIVE = 300  # seconds; every connection sends all through the run, so no PINGREQ needed


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer: 7 bits a byte, low bits first."""
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str, *, clean_session: bool) -> bytes:
    body = (
        utf8("MQTT")
        + bytes((4, 0x02 if clean_session else 0x00))  # protocol level 4 = 3.1.1; flags
        + KEEPALIVE.to_bytes(2, "big")
        + utf8(client_id)
    )
    return b"\x10" + remaining_length(len(body)) + body


def subscribe_packet(packet_id: int, topic: str, qos: int) -> bytes:
    body = packet_id.to_bytes(2, "big") + utf8(topic) + bytes((qos,))
    return b"\x82" + remaining_length(len(body)) + body


def ignore(*_args: Any) -> None:
    pass


class MqttClient(CoalescingWriter):
    """One MQTT 3.1.1 connection: a reader task, a coalescing writer task, callbacks.

    on_message(payload) runs in the reader for each PUBLISH received (a QoS 1 one is answered
    with a PUBACK, queued there and sent with the others of the same read); on_puback(packet_id)
    for each PUBACK. CONNACK and SUBACK are awaited by connect() and subscribe().
    """

    def __init__(self, stream: trio.SocketStream, client_id: str) -> None:
        super().__init__(stream)
        self.client_id = client_id
        self.buffer = bytearray()
        self.closing = False
        self.sent_disconnect = trio.Event()
        self.reader_done = trio.Event()
        self.on_message: Callable[[bytes], None] = ignore
        self.on_puback: Callable[[int], None] = ignore
        self.replies: dict[int, tuple[trio.Event, list[bytes]]] = {}  # CONNACK, SUBACK

    async def reader(self) -> None:
        receive, buffer = self.stream.receive_some, self.buffer
        try:
            while True:
                data = await receive(256 * 1024)
                if not data:
                    if self.closing:
                        return
                    raise trio.BrokenResourceError(f"{self.client_id}: the broker hung up")
                if buffer:
                    buffer += data
                    source: bytes | bytearray = buffer
                else:
                    source = data
                out = self.out  # the writer swaps the list: take the current one
                size, pos, queued = len(source), 0, len(out)
                while size - pos >= 2:
                    first, length = source[pos], source[pos + 1]
                    start = pos + 2
                    if length & 0x80:  # a longer remaining length: up to 3 more bytes
                        length &= 0x7F
                        shift = 7
                        while True:
                            if start >= size:
                                length = -1
                                break
                            byte = source[start]
                            start += 1
                            length |= (byte & 0x7F) << shift
                            shift += 7
                            if not byte & 0x80:
                                break
                        if length < 0:
                            break
                    end = start + length
                    if end > size:
                        break
                    kind = first >> 4
                    if kind == PUBLISH:
                        at = start + 2 + ((source[start] << 8) | source[start + 1])
                        qos = (first >> 1) & 3
                        if qos == 1:
                            if not self.closing:
                                out.append(b"\x40\x02" + source[at : at + 2])
                            at += 2
                        elif qos:
                            raise RuntimeError(f"{self.client_id}: a QoS {qos} PUBLISH")
                        self.on_message(source[at:end])
                    elif kind == PUBACK:
                        self.on_puback((source[start] << 8) | source[start + 1])
                    elif kind in self.replies:
                        event, box = self.replies.pop(kind)
                        box.append(bytes(source[start:end]))
                        event.set()
                    elif kind != PINGRESP:
                        raise RuntimeError(f"{self.client_id}: unexpected packet type {kind}")
                    pos = end
                if source is buffer:
                    del buffer[:pos]
                elif pos < size:
                    buffer += data[pos:]
                if len(out) > queued and self.writer_task is not None:
                    self._wake_writer()
        finally:
            self.reader_done.set()

    def _writer_done(self) -> bool:
        if self.closing:  # DISCONNECT was the last packet queued, and it is sent
            self.sent_disconnect.set()
            return True
        return False

    def post(self, packet: bytes) -> None:
        if self.closing:
            return
        self.queue(packet)

    async def exchange(self, packet: bytes, reply_kind: int) -> bytes:
        """Send a packet and wait for its reply (CONNACK or SUBACK); the reply's body."""
        event, box = trio.Event(), []
        self.replies[reply_kind] = (event, box)
        self.post(packet)
        with trio.fail_after(30):
            await event.wait()
        return box[0]

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        body = await self.exchange(subscribe_packet(1, topic, qos), SUBACK)
        if body[:2] != b"\x00\x01" or body[2:] != bytes((qos,)):
            raise RuntimeError(f"{self.client_id}: SUBSCRIBE {topic} refused: {body.hex()}")

    async def disconnect(self) -> None:
        """Send DISCONNECT after everything queued, then wait for the broker to hang up."""
        self.out.append(DISCONNECT_PACKET)
        self.closing = True
        self._wake_writer()
        with trio.move_on_after(10):
            await self.sent_disconnect.wait()
            await self.reader_done.wait()
        await self.stream.aclose()


async def open_mqtt(
    nursery: trio.Nursery, host: str, port: int, client_id: str, *, clean_session: bool
) -> MqttClient:
    stream = await trio.open_tcp_stream(host, port)
    client = MqttClient(stream, client_id)
    nursery.start_soon(client.reader)
    nursery.start_soon(client.writer)
    body = await client.exchange(connect_packet(client_id, clean_session=clean_session), CONNACK)
    if len(body) != 2 or body[1] != 0:
        raise RuntimeError(f"{client_id}: CONNECT refused: {body.hex()}")
    return client


class Counts:
    def __init__(self) -> None:
        self.measuring = False
        self.acked = 0
        self.delivered = 0
        self.errors = 0
        self.latencies: list[float] = []


class Publisher:
    """QoS 1 PUBLISHes to one topic, `window` unacknowledged; each PUBACK posts the next."""

    def __init__(self, client: MqttClient, topic: str, counts: Counts) -> None:
        self.client, self.counts = client, counts
        self.topic = utf8(topic)
        self.packet_id = 0
        self.unacked: set[int] = set()
        self.running = True
        client.on_puback = self.on_puback

    def post(self) -> None:
        packet_id = self.packet_id % 0xFFFF + 1  # 1..65535, never 0
        self.packet_id = packet_id
        self.unacked.add(packet_id)
        rest = self.topic + packet_id.to_bytes(2, "big") + repr(now()).encode()
        self.client.post(b"\x32" + remaining_length(len(rest)) + rest)

    def on_puback(self, packet_id: int) -> None:
        counts = self.counts
        if packet_id in self.unacked:
            self.unacked.remove(packet_id)
            if counts.measuring:
                counts.acked += 1
        else:
            counts.errors += 1  # a PUBACK for nothing we sent
        if self.running:
            self.post()


async def run_lean(address: str, p: dict[str, Any]) -> dict[str, Any]:
    host, raw_port = address.rsplit(":", 1)
    port = int(raw_port)
    pairs, window, duration, warmup, shard = (
        p["pairs"],
        p["window"],
        p["duration"],
        p["warmup"],
        p["shard"],
    )
    counts = Counts()
    run_id = f"mnb-{os.getpid()}-{shard}"  # fresh sessions: nothing left over from other runs

    def on_message(payload: bytes) -> None:
        if counts.measuring:
            counts.delivered += 1
            if counts.delivered % 16 == 0:
                counts.latencies.append(now() - float(payload))

    async with trio.open_nursery() as nursery:
        clients: list[MqttClient] = []
        publishers: list[Publisher] = []
        for i in range(pairs):
            topic = f"mailnet-bench/{run_id}/{i}"
            sub = await open_mqtt(nursery, host, port, f"{run_id}-sub-{i}", clean_session=False)
            sub.on_message = on_message
            await sub.subscribe(topic, qos=1)
            pub = await open_mqtt(nursery, host, port, f"{run_id}-pub-{i}", clean_session=True)
            clients += [sub, pub]
            publishers.append(Publisher(pub, topic, counts))
        await ready_and_wait_for_go()
        for publisher in publishers:
            for _ in range(window):
                publisher.post()
        await trio.sleep(warmup)
        counts.measuring = True
        started = now()
        await trio.sleep(duration)
        counts.measuring = False
        elapsed = now() - started
        for publisher in publishers:
            publisher.running = False
        async with trio.open_nursery() as closing:
            for client in clients:
                closing.start_soon(client.disconnect)
        nursery.cancel_scope.cancel()  # a reader that timed out waiting for the hang-up
    # End the persistent sessions, so Mosquitto keeps nothing of ours.
    async with trio.open_nursery() as nursery:
        for i in range(pairs):
            cleaner = await open_mqtt(nursery, host, port, f"{run_id}-sub-{i}", clean_session=True)
            await cleaner.disconnect()
    return {
        "acked": counts.acked,
        "delivered": counts.delivered,
        "elapsed": elapsed,
        "latency": latency_summary(counts.latencies),
        "errors": counts.errors,
    }


# -- the paho-mqtt client -----------------------------------------------------------------------


def run_paho(address: str, p: dict[str, Any]) -> dict[str, Any]:
    """The same workload through paho-mqtt, every client driven from this one thread."""
    import paho.mqtt.client as mqtt  # only this client needs it

    host, port = address.rsplit(":", 1)
    pairs, window, duration, warmup, shard = (
        p["pairs"],
        p["window"],
        p["duration"],
        p["warmup"],
        p["shard"],
    )
    counts = {"acked": 0, "delivered": 0}
    latencies: list[float] = []
    measuring = [False]
    inflight = [0] * pairs
    clients: list[mqtt.Client] = []
    subscribed = [0]

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        if measuring[0]:
            counts["delivered"] += 1
            if counts["delivered"] % 16 == 0:
                latencies.append(now() - float(message.payload))

    def on_subscribe(*_args: Any) -> None:
        subscribed[0] += 1

    def make_on_publish(i: int):  # type: ignore[no-untyped-def]
        def on_publish(*_args: Any) -> None:
            inflight[i] -= 1
            if measuring[0]:
                counts["acked"] += 1

        return on_publish

    publishers = []
    run_id = f"mnb-{os.getpid()}-{shard}"  # fresh sessions: nothing left over from other runs
    for i in range(pairs):
        topic = f"mailnet-bench/{run_id}/{i}"
        sub = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"{run_id}-sub-{i}",
            clean_session=False,
        )
        sub.max_inflight_messages_set(window)
        sub.on_message = on_message
        sub.on_subscribe = on_subscribe
        sub.on_connect = lambda c, _u, _f, _rc, _p, topic=topic: c.subscribe(topic, qos=1)
        sub.connect(host, int(port), keepalive=300)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{run_id}-pub-{i}")
        pub.max_inflight_messages_set(window)
        pub.max_queued_messages_set(0)
        pub.on_publish = make_on_publish(i)
        pub.connect(host, int(port), keepalive=300)
        clients += [sub, pub]
        publishers.append((pub, topic))
    by_socket = {c.socket(): c for c in clients}

    def pump(timeout: float) -> None:
        readers = list(by_socket)
        writers = [s for s, c in by_socket.items() if c.want_write()]
        readable, writable, _ = select.select(readers, writers, [], timeout)
        for s in readable:
            client = by_socket[s]
            # loop_read() reads one packet per call when few messages are in flight; read
            # until the socket is drained, as paho's own threaded loop would by re-selecting.
            for _ in range(10_000):
                if client._packet_read() != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        for s in writable:
            by_socket[s].loop_write()

    deadline = now() + 30
    while subscribed[0] < pairs:
        if now() > deadline:
            raise RuntimeError("mosquitto subscriptions did not complete")
        pump(0.1)
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    started = now()
    warm_until = started + warmup
    stop_at = warm_until + duration
    measured_from = None
    last_misc = now()
    while True:
        t = now()
        if not measuring[0] and measured_from is None and t >= warm_until:
            measuring[0] = True
            measured_from = t
        if t >= stop_at:
            measuring[0] = False
            break
        for i, (pub, topic) in enumerate(publishers):
            while inflight[i] < window:
                inflight[i] += 1
                pub.publish(topic, repr(now()), qos=1)
        pump(0.01)
        if t - last_misc > 1:
            last_misc = t
            for c in clients:
                c.loop_misc()
    elapsed = now() - (measured_from or started)
    for c in clients:
        c.disconnect()
    for i in range(pairs):  # end the persistent sessions, so Mosquitto keeps nothing of ours
        cleaner = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{run_id}-sub-{i}", clean_session=True
        )
        cleaner.connect(host, int(port), keepalive=30)
        cleaner.loop(0.05)
        cleaner.disconnect()
    return {
        "acked": counts["acked"],
        "delivered": counts["delivered"],
        "elapsed": elapsed,
        "latency": latency_summary(latencies),
        "errors": 0,  # paho handles protocol errors itself (a refused CONNECT raises)
    }


def main() -> None:
    address, params = sys.argv[1], json.loads(sys.argv[2])
    client = params.get("client", "lean")
    if client == "lean":
        result = trio.run(run_lean, address, params)
    elif client == "paho":
        result = run_paho(address, params)
    else:
        raise SystemExit(f"unknown MQTT client {client!r} (lean or paho)")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
