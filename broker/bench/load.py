"""The load generator: one process of benchmark clients, driven by the benchmark over a pipe.

    python -m broker.bench.load SCENARIO ADDRESS JSON_PARAMS

It connects and logs in its clients, prints {"ready": true}, waits for a line on stdin (the go
signal, so every load process starts together), runs the scenario and prints one JSON line of
results. A lean client on the wire protocol (broker.protocol framing) keeps the generator's own
cost low; the broker sees exactly what the client library would send.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import trio

from broker.protocol import NEED_DATA, FrameConnection

PASSWORD = "bench-password"
now = time.perf_counter  # CLOCK_MONOTONIC: comparable across processes on one machine


class LeanClient:
    """Requests with ids, responses matched by id, pushed mail handed to a callback."""

    def __init__(self, stream: trio.SocketStream, on_mail: Callable[[dict], None]) -> None:
        self.stream = stream
        self.frames = FrameConnection(max_frame_bytes=64 * 1024 * 1024)
        self.ids = itertools.count(1)
        self.waiting: dict[int, list[Any]] = {}
        self.on_mail = on_mail
        self.last_seq = 0
        self.out: list[bytes] = []
        self.out_ready = trio.Event()

    async def reader(self) -> None:
        frames, waiting = self.frames, self.waiting
        while True:
            data = await self.stream.receive_some(256 * 1024)
            if not data:
                raise trio.BrokenResourceError("the broker closed the connection")
            frames.receive_data(data)
            while (frame := frames.next_frame()) is not NEED_DATA:
                assert isinstance(frame, dict)
                if "event" in frame:
                    if frame["event"] == "mail":
                        self.last_seq = frame["entry"]["seq"]
                        self.on_mail(frame["entry"])
                    continue
                slot = waiting.pop(frame.get("re"), None)
                if slot is not None:
                    slot[1] = frame
                    slot[0].set()

    async def writer(self) -> None:
        """Coalesces frames queued by concurrent requests into one send_all."""
        while True:
            await self.out_ready.wait()
            self.out_ready = trio.Event()
            data, self.out = b"".join(self.out), []
            await self.stream.send_all(data)

    def post(self, frame: dict[str, Any]) -> None:
        self.out.append(self.frames.send(frame))
        self.out_ready.set()

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        rid = next(self.ids)
        slot: list[Any] = [trio.Event(), None]
        self.waiting[rid] = slot
        self.post({"op": op, "id": rid, **fields})
        await slot[0].wait()
        response = slot[1]
        if not response.get("ok"):
            raise RuntimeError(f"{op} failed: {response.get('error')}")
        return response


async def open_client(
    nursery: trio.Nursery, address: str, username: str, on_mail: Callable[[dict], None], **login
) -> LeanClient:
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    client = LeanClient(stream, on_mail)
    nursery.start_soon(client.reader)
    nursery.start_soon(client.writer)
    await client.request(
        "login", username=username, password=PASSWORD, create=True, client="bench", **login
    )
    return client


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


# -- scenarios ----------------------------------------------------------------------------------


async def peer_texts(address: str, p: dict[str, Any]) -> dict[str, Any]:
    """Pairs: sender i keeps `window` texts in flight to recipient i, who is online.

    Counts acks (durable) and deliveries inside the measured interval, after a warm-up.
    """
    pairs, window, duration, warmup = p["pairs"], p["window"], p["duration"], p["warmup"]
    shard = p["shard"]
    counts = {"acked": 0, "delivered": 0}
    latencies: list[float] = []
    measuring = [False]

    def on_mail(entry: dict) -> None:
        if measuring[0]:
            counts["delivered"] += 1
            if counts["delivered"] % 16 == 0:
                latencies.append(now() - float(entry["body"]))

    async with trio.open_nursery() as nursery:
        senders = []
        for i in range(pairs):
            await open_client(nursery, address, f"r{shard}_{i}", on_mail)
            senders.append(await open_client(nursery, address, f"s{shard}_{i}", noop))
        await ready_and_wait_for_go()
        stop = [False]

        async def send_loop(client: LeanClient, to: str) -> None:
            async def one() -> None:
                await client.request("send", kind="text", to=[to], body=repr(now()))
                if measuring[0]:
                    counts["acked"] += 1

            async with trio.open_nursery() as inner:
                limiter = trio.Semaphore(window)

                async def slot() -> None:
                    try:
                        await one()
                    finally:
                        limiter.release()

                while not stop[0]:
                    await limiter.acquire()
                    inner.start_soon(slot)

        async with trio.open_nursery() as load:
            for i, client in enumerate(senders):
                load.start_soon(send_loop, client, f"r{shard}_{i}")
            await trio.sleep(warmup)
            measuring[0] = True
            started = now()
            await trio.sleep(duration)
            measuring[0] = False
            elapsed = now() - started
            stop[0] = True
            load.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    return {
        "acked": counts["acked"],
        "delivered": counts["delivered"],
        "elapsed": elapsed,
        "latency": latency_summary(latencies),
    }


async def request_response(address: str, p: dict[str, Any]) -> dict[str, Any]:
    """`connections` clients, one send in flight each, to an offline recipient."""
    connections, duration, warmup, shard = p["connections"], p["duration"], p["warmup"], p["shard"]
    latencies: list[float] = []
    count = [0]
    measuring = [False]
    async with trio.open_nursery() as nursery:
        clients = [
            await open_client(nursery, address, f"q{shard}_{i}", noop) for i in range(connections)
        ]
        await ready_and_wait_for_go()

        async def loop(client: LeanClient) -> None:
            while True:
                t0 = now()
                await client.request("send", kind="text", to=[p["sink"]], body="ping")
                if measuring[0]:
                    latencies.append(now() - t0)
                    count[0] += 1

        async with trio.open_nursery() as load:
            for client in clients:
                load.start_soon(loop, client)
            await trio.sleep(warmup)
            measuring[0] = True
            started = now()
            await trio.sleep(duration)
            measuring[0] = False
            elapsed = now() - started
            load.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    return {"acked": count[0], "elapsed": elapsed, "latency": latency_summary(latencies)}


async def steady_rate(address: str, p: dict[str, Any]) -> dict[str, Any]:
    """Paced senders at `rate` msgs/s in total (this shard's share) to online recipients."""
    pairs, rate, duration, warmup, shard = (
        p["pairs"],
        p["rate"],
        p["duration"],
        p["warmup"],
        p["shard"],
    )
    latencies: list[float] = []
    counts = {"sent": 0, "delivered": 0}
    measuring = [False]

    def on_mail(entry: dict) -> None:
        if measuring[0]:
            counts["delivered"] += 1
            latencies.append(now() - float(entry["body"]))

    async with trio.open_nursery() as nursery:
        senders = []
        for i in range(pairs):
            await open_client(nursery, address, f"w{shard}_{i}", on_mail)
            senders.append(await open_client(nursery, address, f"v{shard}_{i}", noop))
        await ready_and_wait_for_go()
        interval = pairs / rate  # each sender's gap between sends

        async def paced(client: LeanClient, to: str, offset: float) -> None:
            async with trio.open_nursery() as inner:
                next_at = trio.current_time() + offset
                while True:
                    next_at += interval
                    await trio.sleep_until(next_at)
                    if measuring[0]:
                        counts["sent"] += 1
                    inner.start_soon(
                        lambda: client.request("send", kind="text", to=[to], body=repr(now()))
                    )

        async with trio.open_nursery() as load:
            for i, client in enumerate(senders):
                load.start_soon(paced, client, f"w{shard}_{i}", interval * i / pairs)
            await trio.sleep(warmup)
            measuring[0] = True
            started = now()
            await trio.sleep(duration)
            measuring[0] = False
            elapsed = now() - started
            load.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    return {
        "sent": counts["sent"],
        "delivered": counts["delivered"],
        "elapsed": elapsed,
        "latency": latency_summary(latencies),
    }


async def fill_backlog(address: str, p: dict[str, Any]) -> dict[str, Any]:
    """Many senders, windowed, queue `count` texts (this shard's share) for an offline user."""
    senders, window, count, shard = p["senders"], p["window"], p["count"], p["shard"]
    per_sender = [count // senders + (1 if i < count % senders else 0) for i in range(senders)]
    async with trio.open_nursery() as nursery:
        clients = [
            await open_client(nursery, address, f"b{shard}_{i}", noop) for i in range(senders)
        ]
        await ready_and_wait_for_go()
        started = now()

        async def fill(client: LeanClient, n: int) -> None:
            limiter = trio.Semaphore(window)

            async def one(k: int) -> None:
                try:
                    await client.request("send", kind="text", to=[p["to"]], body=f"backlog {k}")
                finally:
                    limiter.release()

            async with trio.open_nursery() as inner:
                for k in range(n):
                    await limiter.acquire()
                    inner.start_soon(one, k)

        async with trio.open_nursery() as load:
            for client, n in zip(clients, per_sender, strict=True):
                load.start_soon(fill, client, n)
        elapsed = now() - started
        nursery.cancel_scope.cancel()
    return {"acked": count, "elapsed": elapsed}


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


SCENARIOS = {
    "peer_texts": peer_texts,
    "request_response": request_response,
    "steady_rate": steady_rate,
    "fill_backlog": fill_backlog,
    "drain_backlog": drain_backlog,
    "announcement": announcement,
}


def main() -> None:
    scenario, address, raw = sys.argv[1], sys.argv[2], sys.argv[3]
    result = trio.run(SCENARIOS[scenario], address, json.loads(raw))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
