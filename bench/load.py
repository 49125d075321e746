"""The load generator: one process of benchmark clients, driven by the benchmark over a pipe.

    python -m bench.load SCENARIO ADDRESS JSON_PARAMS    (or @FILE holding them)

It connects and logs in its clients, prints {"ready": true}, waits for a line on stdin (the go
signal, so every load process starts together), runs the scenario and prints one JSON line of
results.

The generator shares the machine's cores with the broker it measures, so its own cost per
message must stay well below the broker's, or it caps the figure. The lean client speaks the
wire protocol itself (a 4-byte big-endian length, then a UTF-8 JSON object) with orjson, and
keeps broker.protocol out of its hot path. Each connection has one reader task and one writer
task, nothing else: a response is handed to a callback in the reader, which counts it and posts
the next request right there; the writer sends everything queued since its last turn in one
send_all. No task and no Event per message (request() with an Event is for login, ping, ...).
The broker sees exactly the bytes the client library would send.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import ssl
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
import trio

PASSWORD = "bench-password"
MAX_FRAME_BYTES = 64 * 1024 * 1024
now = time.perf_counter  # CLOCK_MONOTONIC: comparable across processes on one machine

HEADER = struct.Struct(">I")
_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from
_dumps = orjson.dumps
_loads = orjson.loads

Frame = dict[str, Any]
OnResponse = Callable[[Frame], None]
PRESENCE = b'{"event":"presence'  # how the broker's presence events start (both kinds)


def encode(frame: Frame) -> bytes:
    payload = _dumps(frame)
    return _pack_header(len(payload)) + payload


class CoalescingWriter:
    """What both lean clients (this one and mqttload's) share: bytes queued by callbacks, and
    one writer task that sends everything queued since its last turn in one send_all.

    The writer parks itself when there is nothing to send and the first bytes queued wake it:
    cheaper than a fresh Event per turn, which with one request in flight is per message.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.out: list[bytes] = []
        self.writer_task: trio.lowlevel.Task | None = None  # set while the writer is parked

    def queue(self, data: bytes) -> None:
        self.out.append(data)
        if self.writer_task is not None:
            self._wake_writer()

    async def writer(self) -> None:
        send_all = self.stream.send_all
        while True:
            if not self.out:
                if self._writer_done():
                    return
                self.writer_task = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._abort_park)
            data, self.out = b"".join(self.out), []
            await send_all(data)

    def _writer_done(self) -> bool:
        """Asked when everything queued is sent: True ends the writer."""
        return False

    def _abort_park(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        self.writer_task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _wake_writer(self) -> None:
        task, self.writer_task = self.writer_task, None
        if task is not None:
            trio.lowlevel.reschedule(task)


class LeanClient(CoalescingWriter):
    """Requests with ids, responses handed to a callback by id, pushed mail to on_mail."""

    def __init__(self, stream: trio.abc.Stream, on_mail: Callable[[dict], None]) -> None:
        super().__init__(stream)
        self.buffer = bytearray()  # the start of a frame not yet complete
        self.ids = itertools.count(1)
        self.waiting: dict[int, OnResponse] = {}
        self.on_mail = on_mail
        self.last_seq = 0
        # Presence events are counted, not parsed, unless someone wants them: in a login storm
        # each of 10,000 clients is pushed every change, and parsing that would be the load's
        # own N x N (the broker's side is what is measured).
        self.on_presence: Callable[[Frame], None] | None = None
        self.presence_frames = 0

    async def reader(self) -> None:
        receive, buffer, waiting = self.stream.receive_some, self.buffer, self.waiting
        while True:
            data = await receive(256 * 1024)
            if not data:
                raise trio.BrokenResourceError("the broker closed the connection")
            if buffer:
                buffer += data
                source: bytes | bytearray = buffer
            else:
                source = data  # the common case: parse the received bytes in place
            size, pos = len(source), 0
            with memoryview(source) as view:
                while size - pos >= 4:
                    (length,) = _unpack_header(source, pos)
                    if length > MAX_FRAME_BYTES:
                        raise ValueError(f"frame of {length} bytes from the broker")
                    end = pos + 4 + length
                    if end > size:
                        break
                    if self.on_presence is None and source.startswith(PRESENCE, pos + 4):
                        self.presence_frames += 1
                        pos = end
                        continue
                    frame = _loads(view[pos + 4 : end])
                    pos = end
                    if "event" in frame:
                        if frame["event"] == "mail":
                            entry = frame["entry"]
                            self.last_seq = entry["seq"]
                            self.on_mail(entry)
                        elif self.on_presence is not None:
                            self.on_presence(frame)
                        continue
                    callback = waiting.pop(frame.get("re"), None)  # type: ignore[arg-type]
                    if callback is not None:
                        callback(frame)
            # Drop the consumed frames once per read, not once per frame.
            if source is buffer:
                del buffer[:pos]
            elif pos < size:
                buffer += data[pos:]

    def post(self, frame: Frame) -> None:
        """Queue a frame that expects no response (an ack)."""
        self.queue(encode(frame))

    def send(self, frame: Frame, on_response: OnResponse) -> None:
        """Queue a request (frame without its id); on_response(response) runs in the reader."""
        rid = next(self.ids)
        self.waiting[rid] = on_response
        frame["id"] = rid
        self.queue(encode(frame))

    async def request(self, op: str, **fields: Any) -> Frame:
        """A request awaited with an Event: for the few that are not the measured load."""
        done = trio.Event()
        box: list[Frame] = []

        def got(response: Frame) -> None:
            box.append(response)
            done.set()

        self.send({"op": op, **fields}, got)
        await done.wait()
        response = box[0]
        if not response.get("ok"):
            raise RuntimeError(f"{op} failed: {response.get('error')}")
        return response


# Set by the benchmark (`--tls`): the broker's self-signed certificate, to trust.
TLS_CA_ENV = "MAILNET_BENCH_TLS_CA"


@functools.cache
def _tls_context() -> ssl.SSLContext | None:
    ca = os.environ.get(TLS_CA_ENV)
    return ssl.create_default_context(cafile=ca) if ca else None


async def open_client(
    nursery: trio.Nursery, address: str, username: str, on_mail: Callable[[dict], None], **login
) -> LeanClient:
    host, port = address.rsplit(":", 1)
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, int(port))
    tls = _tls_context()
    if tls is not None:  # the benchmark's --tls: trust the broker's own certificate
        stream = trio.SSLStream(stream, tls, server_hostname=host)
        await stream.do_handshake()
    client = LeanClient(stream, on_mail)
    nursery.start_soon(client.reader)
    nursery.start_soon(client.writer)
    await client.request(
        "login", username=username, password=PASSWORD, create=True, client="bench", **login
    )
    return client


class Tally:
    """What a scenario counts: acks inside the measured interval, errors at any time."""

    def __init__(self) -> None:
        self.measuring = False
        self.acked = 0
        self.delivered = 0
        self.errors = 0
        self.first_error: Any = None
        self.latencies: list[float] = []

    def error(self, response: Frame) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = response.get("error")

    def report(self) -> dict[str, Any]:
        """The error count, and the first error when there was one."""
        if not self.errors:
            return {"errors": 0}
        return {"errors": self.errors, "first_error": self.first_error}


def percentile(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def latency_summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "max_ms": round(max(latencies) * 1000, 3) if latencies else math.nan,
        "samples": len(latencies),
    }


async def ready_and_wait_for_go() -> None:
    print(json.dumps({"ready": True}), flush=True)
    await trio.to_thread.run_sync(sys.stdin.readline)


def noop(_entry: dict) -> None:
    pass


async def measure(tally: Tally, warmup: float, duration: float) -> float:
    """Warm up, then count for `duration`; the measured interval's length."""
    await trio.sleep(warmup)
    tally.measuring = True
    started = now()
    await trio.sleep(duration)
    tally.measuring = False
    return now() - started


# -- scenarios ----------------------------------------------------------------------------------


class TextSender:
    """Keeps its sends in flight: each response is counted and, while running, replaced."""

    def __init__(self, client: LeanClient, to: str, tally: Tally) -> None:
        self.client, self.to, self.tally = client, [to], tally
        self.running = True
        self.on_response = self._on_response  # one bound method, not one per send

    def post(self) -> None:
        self.client.send(
            {"op": "send", "kind": "text", "to": self.to, "body": repr(now())}, self.on_response
        )

    def _on_response(self, response: Frame) -> None:
        tally = self.tally
        if response.get("ok"):
            if tally.measuring:
                tally.acked += 1
        else:
            tally.error(response)
        if self.running:
            self.post()


async def peer_texts(address: str, p: dict[str, Any]) -> dict[str, Any]:
    """Pairs: sender i keeps `window` texts in flight to recipient i, who is online.

    Counts acks (durable) and deliveries inside the measured interval, after a warm-up.
    """
    pairs, window, duration, warmup = p["pairs"], p["window"], p["duration"], p["warmup"]
    shard = p["shard"]
    # On a cluster the recipients may be connected to another node.
    recipients_at = p.get("recipient_address", address)
    tally = Tally()

    def on_mail(entry: dict) -> None:
        if tally.measuring:
            tally.delivered += 1
            if tally.delivered % 16 == 0:
                tally.latencies.append(now() - float(entry["body"]))

    async with trio.open_nursery() as nursery:
        senders = []
        for i in range(pairs):
            await open_client(nursery, recipients_at, f"r{shard}_{i}", on_mail)
            client = await open_client(nursery, address, f"s{shard}_{i}", noop)
            senders.append(TextSender(client, f"r{shard}_{i}", tally))
        await ready_and_wait_for_go()
        for sender in senders:
            for _ in range(window):
                sender.post()
        elapsed = await measure(tally, warmup, duration)
        for sender in senders:
            sender.running = False
        nursery.cancel_scope.cancel()
    return {
        "acked": tally.acked,
        "delivered": tally.delivered,
        "elapsed": elapsed,
        "latency": latency_summary(tally.latencies),
        **tally.report(),
    }


class PingSender:
    """One send in flight to `to`; each response takes its latency and posts the next."""

    def __init__(self, client: LeanClient, to: str, tally: Tally) -> None:
        self.client, self.to, self.tally = client, [to], tally
        self.running = True
        self.sent_at = 0.0
        self.on_response = self._on_response

    def post(self) -> None:
        self.sent_at = now()
        self.client.send(
            {"op": "send", "kind": "text", "to": self.to, "body": "ping"}, self.on_response
        )

    def _on_response(self, response: Frame) -> None:
        tally = self.tally
        if response.get("ok"):
            if tally.measuring:
                tally.latencies.append(now() - self.sent_at)
                tally.acked += 1
        else:
            tally.error(response)
        if self.running:
            self.post()


async def request_response(address: str, p: dict[str, Any]) -> dict[str, Any]:
    """`connections` clients, one send in flight each, to an offline recipient."""
    connections, duration, warmup, shard = p["connections"], p["duration"], p["warmup"], p["shard"]
    tally = Tally()
    async with trio.open_nursery() as nursery:
        senders = [
            PingSender(await open_client(nursery, address, f"q{shard}_{i}", noop), p["sink"], tally)
            for i in range(connections)
        ]
        await ready_and_wait_for_go()
        for sender in senders:
            sender.post()
        elapsed = await measure(tally, warmup, duration)
        for sender in senders:
            sender.running = False
        nursery.cancel_scope.cancel()
    return {
        "acked": tally.acked,
        "elapsed": elapsed,
        "latency": latency_summary(tally.latencies),
        **tally.report(),
    }


async def steady_rate(address: str, p: dict[str, Any]) -> dict[str, Any]:
    """Paced senders at `rate` msgs/s in total (this shard's share) to online recipients."""
    pairs, rate, duration, warmup, shard = (
        p["pairs"],
        p["rate"],
        p["duration"],
        p["warmup"],
        p["shard"],
    )
    tally = Tally()
    sent = [0]

    def on_mail(entry: dict) -> None:
        if tally.measuring:
            tally.delivered += 1
            tally.latencies.append(now() - float(entry["body"]))

    def on_response(response: Frame) -> None:
        if not response.get("ok"):
            tally.error(response)

    async with trio.open_nursery() as nursery:
        senders = []
        for i in range(pairs):
            await open_client(nursery, address, f"w{shard}_{i}", on_mail)
            senders.append(await open_client(nursery, address, f"v{shard}_{i}", noop))
        await ready_and_wait_for_go()
        interval = pairs / rate  # each sender's gap between sends

        async def paced(client: LeanClient, to: str, offset: float) -> None:
            recipients = [to]
            next_at = trio.current_time() + offset
            while True:
                next_at += interval
                await trio.sleep_until(next_at)
                if tally.measuring:
                    sent[0] += 1
                client.send(
                    {"op": "send", "kind": "text", "to": recipients, "body": repr(now())},
                    on_response,
                )

        async with trio.open_nursery() as load:
            for i, client in enumerate(senders):
                load.start_soon(paced, client, f"w{shard}_{i}", interval * i / pairs)
            elapsed = await measure(tally, warmup, duration)
            load.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    return {
        "sent": sent[0],
        "delivered": tally.delivered,
        "elapsed": elapsed,
        "latency": latency_summary(tally.latencies),
        **tally.report(),
    }


class BacklogSender:
    """Sends `count` texts to `to`, `window` in flight; calls on_done after the last answer."""

    def __init__(
        self, client: LeanClient, to: str, count: int, tally: Tally, on_done: Callable[[], None]
    ) -> None:
        self.client, self.to, self.count, self.tally, self.on_done = (
            client,
            [to],
            count,
            tally,
            on_done,
        )
        self.posted = self.answered = 0
        self.on_response = self._on_response

    def post(self) -> None:
        body = f"backlog {self.posted}"
        self.posted += 1
        self.client.send(
            {"op": "send", "kind": "text", "to": self.to, "body": body}, self.on_response
        )

    def _on_response(self, response: Frame) -> None:
        if response.get("ok"):
            self.tally.acked += 1
        else:
            self.tally.error(response)
        self.answered += 1
        if self.posted < self.count:
            self.post()
        elif self.answered == self.count:
            self.on_done()


async def fill_backlog(address: str, p: dict[str, Any]) -> dict[str, Any]:
    """Many senders, windowed, queue `count` texts (this shard's share) for an offline user."""
    senders, window, count, shard = p["senders"], p["window"], p["count"], p["shard"]
    per_sender = [count // senders + (1 if i < count % senders else 0) for i in range(senders)]
    tally = Tally()
    done = trio.Event()
    unfinished = [sum(1 for n in per_sender if n)]

    def sender_done() -> None:
        unfinished[0] -= 1
        if not unfinished[0]:
            done.set()

    async with trio.open_nursery() as nursery:
        fillers = [
            BacklogSender(
                await open_client(nursery, address, f"b{shard}_{i}", noop),
                p["to"],
                n,
                tally,
                sender_done,
            )
            for i, n in enumerate(per_sender)
        ]
        await ready_and_wait_for_go()
        started = now()
        if not unfinished[0]:
            done.set()
        for filler in fillers:
            for _ in range(min(window, filler.count)):
                filler.post()
        await done.wait()
        elapsed = now() - started
        nursery.cancel_scope.cancel()
    return {"acked": tally.acked, "elapsed": elapsed, **tally.report()}


async def drain_backlog(address: str, p: dict[str, Any]) -> dict[str, Any]:
    """Log in as the offline user and time the delivery of its whole backlog."""
    count = p["count"]
    got = [0]
    done = trio.Event()

    def on_mail(_entry: dict) -> None:
        got[0] += 1
        if got[0] >= count:
            done.set()

    await ready_and_wait_for_go()
    async with trio.open_nursery() as nursery:
        started = now()
        client = await open_client(nursery, address, p["user"], on_mail)
        logged_in = now() - started
        with trio.fail_after(p.get("timeout", 300)):
            await done.wait()
        elapsed = now() - started
        client.post({"op": "ack", "seq": client.last_seq})
        await client.request("ping")
        nursery.cancel_scope.cancel()
    return {"delivered": got[0], "elapsed": elapsed, "login_s": logged_in}


async def announcement(address: str, p: dict[str, Any]) -> dict[str, Any]:
    """`online` users connected (out of many); one announcement; time to ack and to every push."""
    online = p["online"]
    got = [0]
    done = trio.Event()
    last_push = [0.0]

    def on_mail(_entry: dict) -> None:
        got[0] += 1
        last_push[0] = now()
        if got[0] >= online:
            done.set()

    async with trio.open_nursery() as nursery:
        limiter = trio.Semaphore(50)

        async def join(i: int) -> None:
            async with limiter:
                await open_client(nursery, address, p["users"][i], on_mail)

        async with trio.open_nursery() as joining:
            for i in range(online):
                joining.start_soon(join, i)
        announcer = await open_client(nursery, address, p["announcer"], noop)
        await ready_and_wait_for_go()
        started = now()
        reply = await announcer.request("send", kind="announcement", subject="bench", body="hi")
        durable = now() - started
        with trio.fail_after(p.get("timeout", 120)):
            await done.wait()
        pushed = last_push[0] - started
        nursery.cancel_scope.cancel()
    return {"durable_s": durable, "pushed_s": pushed, "pushed": got[0], "reply": reply["ok"]}


class StormObserver:
    """A client online before the storm: learns from presence_batch events who came online."""

    def __init__(self, expected: int) -> None:
        self.online: set[str] = set()
        self.expected = expected
        self.all_seen = trio.Event()
        self.seen_at = 0.0

    def on_presence(self, frame: Frame) -> None:
        if frame.get("event") == "presence_batch":
            self.online.update(frame["online"])
            self.online.difference_update(frame["offline"])
        elif frame.get("event") == "presence" and frame["online"]:
            self.online.add(frame["username"])
        if len(self.online) >= self.expected and not self.all_seen.is_set():
            self.seen_at = now()
            self.all_seen.set()


async def resume_client(
    nursery: trio.Nursery,
    address: str,
    token: str,
    on_mail: Callable[[Frame], None],
    **resume: Any,
) -> LeanClient:
    """A returning client: connects and resumes with its saved token (no bcrypt)."""
    host, port = address.rsplit(":", 1)
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, int(port))
    tls = _tls_context()
    if tls is not None:
        stream = trio.SSLStream(stream, tls, server_hostname=host)
        await stream.do_handshake()
    client = LeanClient(stream, on_mail)
    nursery.start_soon(client.reader)
    nursery.start_soon(client.writer)
    await client.request("resume", token=token, client="bench", **resume)
    return client


async def presence_storm(address: str, p: dict[str, Any]) -> dict[str, Any]:
    """Returning users log in together (`in_flight` at a time), live, presence on: the time
    each login completes, and when an observer online throughout has learned of every one."""
    tokens, in_flight = p["tokens"], p["in_flight"]
    observer = StormObserver(len(tokens)) if p.get("observe") else None
    done_at: list[float] = []
    async with trio.open_nursery() as nursery:
        if observer is not None:
            watcher = await resume_client(nursery, address, p["observer_token"], noop)
            watcher.on_presence = observer.on_presence
            observer.expected += 1  # it is online too
        await ready_and_wait_for_go()
        started = now()
        limiter = trio.Semaphore(in_flight)

        async def log_in(token: str) -> None:
            async with limiter:
                await resume_client(nursery, address, token, noop, presence_batch=True)
                done_at.append(now() - started)

        async with trio.open_nursery() as storm:
            for token in tokens:
                storm.start_soon(log_in, token)
        elapsed = now() - started
        learned = None
        if observer is not None:
            with trio.move_on_after(p.get("timeout", 120)):
                await observer.all_seen.wait()
            learned = observer.seen_at - started if observer.all_seen.is_set() else None
        nursery.cancel_scope.cancel()
    return {
        "logins": len(done_at),
        "started": started,
        "elapsed": elapsed,
        "done_at": done_at,
        "observer_learned_all_s": learned,
        "observer_saw": len(observer.online) if observer is not None else None,
    }


async def idle_live(address: str, p: dict[str, Any]) -> dict[str, Any]:
    """Live sessions that only heartbeat: a ping to each client in turn, every client once per
    `interval`, from the first login on, so that none expires while the others log in; pongs
    are counted over `duration` after the go."""
    tokens, interval, duration = p["tokens"], p["interval"], p["duration"]
    tally = Tally()
    clients: list[LeanClient] = []

    def on_pong(response: Frame) -> None:
        if not response.get("ok"):
            tally.error(response)
        elif tally.measuring:
            tally.acked += 1

    async def heartbeats() -> None:
        next_at = trio.current_time()
        for i in itertools.count():
            if clients:
                clients[i % len(clients)].send({"op": "ping"}, on_pong)
            # Each client once per interval, however many have logged in so far.
            next_at += interval / max(1, len(clients))
            await trio.sleep_until(next_at)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeats)
        limiter = trio.Semaphore(p.get("in_flight", 200))

        async def join(token: str) -> None:
            async with limiter:
                clients.append(
                    await resume_client(nursery, address, token, noop, presence_batch=True)
                )

        async with trio.open_nursery() as joining:
            for token in tokens:
                joining.start_soon(join, token)
        await ready_and_wait_for_go()
        elapsed = await measure(tally, 0.0, duration)
        nursery.cancel_scope.cancel()
    return {"connections": len(clients), "pongs": tally.acked, "elapsed": elapsed, **tally.report()}


async def password_logins(address: str, p: dict[str, Any]) -> dict[str, Any]:
    """`count` users log in with their password together (each pays bcrypt in the broker)."""
    names = p["users"]
    async with trio.open_nursery() as nursery:
        await ready_and_wait_for_go()
        started = now()
        async with trio.open_nursery() as logins:
            for name in names:
                logins.start_soon(open_client, nursery, address, name, noop)
        elapsed = now() - started
        nursery.cancel_scope.cancel()
    return {"logins": len(names), "elapsed": elapsed}


SCENARIOS = {
    "peer_texts": peer_texts,
    "request_response": request_response,
    "steady_rate": steady_rate,
    "fill_backlog": fill_backlog,
    "drain_backlog": drain_backlog,
    "announcement": announcement,
    "presence_storm": presence_storm,
    "idle_live": idle_live,
    "password_logins": password_logins,
}


def main() -> None:
    scenario, address, raw = sys.argv[1], sys.argv[2], sys.argv[3]
    if raw.startswith("@"):  # parameters too long for a command line (see run.run_load)
        with open(raw[1:]) as params:
            raw = params.read()
    result = trio.run(SCENARIOS[scenario], address, json.loads(raw))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
