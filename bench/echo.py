"""The floor under request/response: a bare trio echo server driven like the broker is.

    python -m bench.echo serve PORT           # prints {"port": ..., "pid": ...}
    python -m bench.echo load ADDRESS JSON    # ready/go protocol of bench.load
    python -m bench.echo idle ADDRESS JSON    # idle connections, one ping each interval

The server reads whatever arrives and writes it back: no framing, no parsing, no store. The
load keeps one 60-byte request in flight on each of `connections` connections, as the
request/response workload does. What this reaches on a machine is what trio's socket layer
and scheduler allow one process at best; the broker's figure is read against it. `idle` is the
floor under the idle workload: `connections` connections, each sending a ping-sized request
once every `interval` seconds (spread evenly), the rest of the time silent.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import trio

from .load import latency_summary, now, ready_and_wait_for_go

REQUEST = b"x" * 60


async def _echo(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def serve(port: int) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, _echo, port)
        bound = listeners[0].socket.getsockname()[1]
        print(json.dumps({"port": bound, "pid": os.getpid()}), flush=True)


async def load(address: str, p: dict[str, Any]) -> dict[str, Any]:
    connections, duration, warmup = p["connections"], p["duration"], p["warmup"]
    host, port = address.rsplit(":", 1)
    latencies: list[float] = []
    count = [0]
    measuring = [False]

    async def one(stream: trio.SocketStream) -> None:
        while True:
            started = now()
            await stream.send_all(REQUEST)
            got = 0
            while got < len(REQUEST):
                data = await stream.receive_some(65536)
                if not data:
                    raise trio.BrokenResourceError("the echo server closed the connection")
                got += len(data)
            if measuring[0]:
                count[0] += 1
                latencies.append(now() - started)

    streams = [await trio.open_tcp_stream(host, int(port)) for _ in range(connections)]
    await ready_and_wait_for_go()
    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(one, stream)
        await trio.sleep(warmup)
        measuring[0] = True
        begun = now()
        await trio.sleep(duration)
        measuring[0] = False
        elapsed = now() - begun
        nursery.cancel_scope.cancel()
    return {"acked": count[0], "elapsed": elapsed, "latency": latency_summary(latencies)}


PING = b'\x00\x00\x00\x14{"op":"ping","id":1}'


async def idle(address: str, p: dict[str, Any]) -> dict[str, Any]:
    connections, interval, duration = p["connections"], p["interval"], p["duration"]
    host, port = address.rsplit(":", 1)
    echoed = [0]

    async def drain(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(65536):
            echoed[0] += len(data)

    async with trio.open_nursery() as nursery:
        streams = [await trio.open_tcp_stream(host, int(port)) for _ in range(connections)]
        for stream in streams:
            nursery.start_soon(drain, stream)
        await ready_and_wait_for_go()
        begun, next_at, i = now(), trio.current_time(), 0
        while now() - begun < duration:
            await streams[i % connections].send_all(PING)
            i += 1
            next_at += interval / connections
            await trio.sleep_until(next_at)
        elapsed = now() - begun
        nursery.cancel_scope.cancel()
    return {"pings": i, "echoed": echoed[0] // len(PING), "elapsed": elapsed}


def main() -> None:
    if sys.argv[1] == "serve":
        trio.run(serve, int(sys.argv[2]))
    else:
        scenario = idle if sys.argv[1] == "idle" else load
        result = trio.run(scenario, sys.argv[2], json.loads(sys.argv[3]))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
