"""The Mosquitto peer workload: publisher→subscriber pairs at QoS 1, like mailnet's peer texts.

    python -m broker.bench.mqttload HOST:PORT JSON_PARAMS

One thread drives every paho-mqtt client through its external-loop API (select over the
sockets), so the generator costs about what mailnet's lean client costs. Each publisher keeps
`window` QoS 1 publishes unacknowledged (PUBACK) at a time; subscribers use persistent sessions
(clean_session off) at QoS 1. Same ready/go protocol on stdin/stdout as broker.bench.load.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from typing import Any

import paho.mqtt.client as mqtt

from .load import latency_summary

now = time.perf_counter


def run(address: str, p: dict[str, Any]) -> dict[str, Any]:
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
    }


def main() -> None:
    result = run(sys.argv[1], json.loads(sys.argv[2]))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
