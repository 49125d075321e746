"""The benchmark: a broker in a child process, load processes driving it, a table of figures.

Each scenario gets a fresh broker on a fresh temporary SQLite file (WAL, synchronous=FULL: every
acknowledgement is after fsync, exactly as in production), plaintext on 127.0.0.1, with the
per-user send rate limits and quotas raised so the benchmark measures throughput, not policy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bcrypt

from .load import PASSWORD, TLS_CA_ENV
from .process import BrokerProcess, child_env, child_pids, known_settings, proc_stat

BENCH_SETTINGS: dict[str, object] = {
    "send_rate": 1e9,
    "send_burst": 1_000_000_000,
    "mailbox_quota": 10_000_000,
    "max_connections": 19_000,
    "max_connections_per_ip": 19_000,
    "heartbeat_timeout": 600.0,
    "login_timeout": 120.0,
    "min_free_disk_bytes": 0,
    # Every load client logs in from 127.0.0.1 at once: keep login throttling out of the way.
    "login_slow_after": 1_000_000,
    "login_max_delay": 0.0,
}

WORKLOADS = (
    "peer_texts",
    "request_response",
    "steady_rate",
    "backlog",
    "announcement",
    "presence_storm",
    "idle",
)

TARGETS = {  # issue 15's, measured side by side in one run
    "peer_texts": "≥ 1.25× RabbitMQ quorum, at ≤ its CPU a message",
    "request_response": "≤ 100 µs of broker CPU a request, ≥ RabbitMQ quorum's rate",
    "steady_rate": "p99 ≤ 10 ms at half the request/response rate",
    "backlog": "≥ 150,000 msgs/s",
    "announcement": "(no target)",
    "presence_storm": "10,000 live logins ≤ 60 s; at 1,000 online ≤ 2× the cost at 100",
    "password_logins": "(bcrypt, reported apart)",
    "idle": "≤ 15 % of a core, ≤ 25 KiB a connection",
    "trio_echo": "",
}


@dataclass
class Plan:
    duration: float = 10.0
    warmup: float = 2.0
    load_procs: int = 1
    pairs: int = 100  # peer texts: senders (each with an online recipient)
    window: int = 32
    rr_connections: int = 100
    # msgs/s of the latency run; None: half the request/response rate measured in this run
    # (the saturation point of one-in-flight sends), or 5,000 if that did not run.
    steady_rate: float | None = None
    steady_pairs: int = 50
    backlog: int = 100_000
    backlog_senders: int = 50
    announce_users: int = 10_000
    announce_online: int = 1_000
    storm_users: int = 10_000  # returning users (token resume) logging in together, live
    storm_in_flight: int = 200  # logins in flight at a time
    password_logins: int = 16  # password logins at bcrypt cost 12, reported on their own
    idle_connections: int = 10_000
    idle_duration: float = 30.0  # seconds of heartbeats measured (the default interval: 10 s)
    mosquitto: str | None = None  # host:port of a Mosquitto to compare with
    rabbitmq: str | None = None  # host:port of a RabbitMQ (guest/guest): quorum-queue peer
    mqtt_client: str = "lean"  # the Mosquitto workload's client: "lean" or "paho" (paho-mqtt)
    tls: bool = False  # mailnet over TLS (its default outside loopback), not plaintext
    only: tuple[str, ...] = ()  # run just these workloads (names as in the JSON)
    db: str | None = None  # a PostgreSQL URL: run the cluster workload there instead
    nodes: int = 2  # broker nodes on that database

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            duration=3.0,
            warmup=1.0,
            backlog=20_000,
            announce_users=2_000,
            announce_online=200,
            storm_users=2_000,
            password_logins=4,
            idle_connections=2_000,
            idle_duration=10.0,
        )


@dataclass
class Results:
    machine: dict[str, Any] = field(default_factory=dict)
    mailnet_transport: str = "plaintext"  # or "tls" (--tls)
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine_info() -> dict[str, Any]:
    import os
    import platform

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
    }


def mosquitto_address() -> str | None:
    """127.0.0.1:1883 if a Mosquitto (or any MQTT broker) answers there."""
    try:
        with socket.create_connection(("127.0.0.1", 1883), timeout=0.5):
            return "127.0.0.1:1883"
    except OSError:
        return None


def rabbitmq_address() -> str | None:
    """127.0.0.1:5672 if an AMQP broker (RabbitMQ) answers there and pamqp (the `bench`
    extra) is installed for its client."""
    if importlib.util.find_spec("pamqp") is None:
        progress("RabbitMQ peer skipped: pip install 'mailnet[bench]' for pamqp")
        return None
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=0.5):
            return "127.0.0.1:5672"
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and of its living children (a broker's writer
    process), from /proc; 0 where /proc is not there."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    for each in [pid, *child_pids(pid)]:
        try:
            fields = proc_stat(each)
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def process_named(name: str) -> int | None:
    """The pid of a running process by its command name (the system's Mosquitto)."""
    for entry in Path("/proc").glob("[0-9]*/comm"):
        try:
            if entry.read_text().strip() == name:
                return int(entry.parent.name)
        except OSError:
            continue
    return None


def run_load(
    module: str,
    address: str | list[str],
    shards: list[dict[str, Any]],
    *,
    scenario: str | None = None,
    watch: int | None = None,
    on_go: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Start one load process per shard, let them connect, start them together, collect.

    `address` is the broker's, or one per shard (a cluster's nodes). With `watch` (a broker's
    pid), the first result also carries `broker_cpu_cores`: the CPU the broker (and its
    children) used from the go signal to the results, per second. `on_go` runs just before the
    go signal (to sample CPU counters)."""
    procs = []
    addresses = [address] * len(shards) if isinstance(address, str) else address
    spilled: list[Path] = []  # parameters too long for a command line, passed as @file
    for params, shard_address in zip(shards, addresses, strict=True):
        cmd = [sys.executable, "-m", module]
        if scenario is not None:
            cmd.append(scenario)
        raw = json.dumps(params)
        if len(raw) > 32_000:  # 10,000 tokens do not fit in a command line: a file does
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as spill:
                spill.write(raw)
            spilled.append(Path(spill.name))
            raw = "@" + spill.name
        cmd += [shard_address, raw]
        procs.append(
            subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env()
            )
        )
    try:
        for proc in procs:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line or not json.loads(line).get("ready"):
                raise RuntimeError(f"a load process ({module} {scenario}) failed to start")
        if on_go is not None:
            on_go()
        started, cpu_before = time.monotonic(), cpu_seconds(watch) if watch else 0.0
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line:
                raise RuntimeError(f"a load process ({module} {scenario}) failed")
            results.append(json.loads(line))
        if watch:
            used = cpu_seconds(watch) - cpu_before
            results[0]["broker_cpu_cores"] = round(used / (time.monotonic() - started), 2)
        return results
    finally:
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        for path in spilled:
            path.unlink(missing_ok=True)


class CpuSampler:
    """Samples a process's CPU time (with its children's) every `every` seconds in a thread,
    so that the CPU spent between two moments of a run can be read afterwards."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = []  # (time.monotonic(), CPU seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), cpu_seconds(self.pid)))
            self._stop.wait(self.every)

    def cpu_at(self, moment: float) -> float:
        """CPU seconds used by `moment` (monotonic clock), interpolated between samples."""
        before = [s for s in self.samples if s[0] <= moment]
        after = [s for s in self.samples if s[0] >= moment]
        if not before:
            return self.samples[0][1] if self.samples else 0.0
        if not after:
            return self.samples[-1][1]
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 if t1 == t0 else c0 + (c1 - c0) * (moment - t0) / (t1 - t0)


def shards_of(total: int, procs: int) -> list[int]:
    return [total // procs + (1 if i < total % procs else 0) for i in range(procs)]


def merge_latency(results: list[dict[str, Any]]) -> dict[str, float]:
    # Shards' percentiles are combined conservatively: the worst shard's p99.
    lat = [r["latency"] for r in results if r["latency"]["samples"]]
    if not lat:
        return {}
    return {
        "p50_ms": max(x["p50_ms"] for x in lat),
        "p99_ms": max(x["p99_ms"] for x in lat),
        "max_ms": max(x["max_ms"] for x in lat),
        "samples": sum(x["samples"] for x in lat),
    }


def rate(count: float, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


MQTT_CLIENTS = {
    "lean": "lean MQTT 3.1.1 client on trio (bench/mqttload.py)",
    "paho": "paho-mqtt, one thread",
}


def errors(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Error responses the load processes got (each one counted, none taken for an ack)."""
    count = sum(r.get("errors", 0) for r in results)
    if not count:
        return {"errors": 0}
    first = next(r["first_error"] for r in results if r.get("first_error") is not None)
    return {"errors": count, "first_error": first}


def broker_cpu(results: list[dict[str, Any]], per_s: float) -> dict[str, Any]:
    """The broker's CPU (cores in use, and CPU time a message) where it could be read."""
    cores = results[0].get("broker_cpu_cores")
    if not cores or not per_s:
        return {}
    return {"broker_cpu_cores": cores, "broker_cpu_us_per_msg": round(cores / per_s * 1e6, 1)}


class Bench:
    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self.results = Results(
            machine=machine_info(), mailnet_transport="tls" if plan.tls else "plaintext"
        )

    def fresh_broker(self, name: str, **overrides: object) -> BrokerProcess:
        settings = {**BENCH_SETTINGS, **overrides}
        if self.plan.tls:  # its own self-signed certificate, which the load clients trust
            settings["insecure_plaintext"] = False
        broker = BrokerProcess(
            self.workdir / name, settings=known_settings(settings), stderr=subprocess.DEVNULL
        )
        broker.start()
        if self.plan.tls:  # the load processes (started after this) read it from their env
            os.environ[TLS_CA_ENV] = str(broker.data_dir / "tls" / "cert.pem")
        else:
            os.environ.pop(TLS_CA_ENV, None)
        return broker

    def scenario(
        self, name: str, fn: Callable[[], dict[str, Any]], workload: str | None = None
    ) -> None:
        """Run one scenario, unless its workload (its own name by default) is left out."""
        if self.plan.only and (workload or name) not in self.plan.only:
            return
        progress(f"{name}: running")
        try:
            result = fn()
        except Exception as exc:  # one failed scenario should not hide the others' figures
            result = {"error": f"{type(exc).__name__}: {exc}"}
        self.results.scenarios[name] = result
        progress(f"{name}: {json.dumps(result)}")

    def run(self) -> Results:
        if self.plan.db:  # the cluster on PostgreSQL; the other workloads are SQLite's
            self.scenario("cluster_peer_texts", self.cluster_peer_texts)
            return self.results
        self.scenario("peer_texts", self.peer_texts)
        if self.plan.mosquitto and (not self.plan.only or "peer_texts" in self.plan.only):
            self.scenario("mosquitto_peer", self.mosquitto_peer, workload="peer_texts")
            mailnet = self.results.scenarios["peer_texts"].get("delivered_per_s")
            peer = self.results.scenarios["mosquitto_peer"].get("delivered_per_s")
            if mailnet and peer:
                self.results.scenarios["peer_texts"]["ratio_to_mosquitto"] = round(
                    mailnet / peer, 3
                )
        if self.plan.rabbitmq and (not self.plan.only or "peer_texts" in self.plan.only):
            self.scenario("rabbitmq_peer", self.rabbitmq_peer, workload="peer_texts")
            self._ratio("peer_texts", "rabbitmq_peer", "delivered_per_s", "ratio_to_rabbitmq")
        self.scenario("request_response", self.request_response)
        if self.plan.rabbitmq and (not self.plan.only or "request_response" in self.plan.only):
            self.scenario("rabbitmq_rr", self.rabbitmq_rr, workload="request_response")
            self._ratio("request_response", "rabbitmq_rr", "msgs_per_s", "ratio_to_rabbitmq")
        self.scenario("trio_echo", self.trio_echo, workload="request_response")
        self.scenario("steady_rate", self.steady_rate)
        self.scenario("backlog", self.backlog)
        self.scenario("announcement", self.announcement)
        self.scenario("presence_storm", self.presence_storm)
        self.scenario("password_logins", self.password_logins, workload="presence_storm")
        self.scenario("idle", self.idle)
        self.scenario("idle_echo", self.idle_echo, workload="idle")
        return self.results

    def _ratio(self, mine: str, peer: str, key: str, name: str) -> None:
        a = self.results.scenarios.get(mine, {}).get(key)
        b = self.results.scenarios.get(peer, {}).get(key)
        if a and b:
            self.results.scenarios[mine][name] = round(a / b, 3)

    def rabbitmq_peer(self) -> dict[str, Any]:
        """The peer workload on RabbitMQ quorum queues (bench/amqpload.py)."""
        p = self.plan
        assert p.rabbitmq is not None
        shards = self._timed_shards(window=p.window)
        for shard, pairs in zip(shards, shards_of(p.pairs, p.load_procs), strict=True):
            shard["pairs"] = pairs
        results = run_load(
            "bench.amqpload",
            p.rabbitmq,
            shards,
            scenario="peer",
            watch=process_named("beam.smp"),
        )
        elapsed = max(r["elapsed"] for r in results)
        delivered = rate(sum(r["delivered"] for r in results), elapsed)
        return {
            "address": p.rabbitmq,
            "queues": "quorum (durable, persistent messages, publisher confirms, manual acks)",
            "pairs": p.pairs,
            "window": p.window,
            "acked_per_s": rate(sum(r["acked"] for r in results), elapsed),
            "delivered_per_s": delivered,
            "send_to_deliver": merge_latency(results),
            **broker_cpu(results, delivered),
            **errors(results),
        }

    def rabbitmq_rr(self) -> dict[str, Any]:
        """request/response on RabbitMQ: one confirmed persistent publish in flight each."""
        p = self.plan
        assert p.rabbitmq is not None
        shards = self._timed_shards()
        for shard, n in zip(shards, shards_of(p.rr_connections, p.load_procs), strict=True):
            shard["connections"] = n
        results = run_load(
            "bench.amqpload",
            p.rabbitmq,
            shards,
            scenario="request_response",
            watch=process_named("beam.smp"),
        )
        elapsed = max(r["elapsed"] for r in results)
        per_s = rate(sum(r["acked"] for r in results), elapsed)
        return {
            **broker_cpu(results, per_s),
            "connections": p.rr_connections,
            "msgs_per_s": per_s,
            "latency": merge_latency(results),
            **errors(results),
        }

    def _timed_shards(self, **params: Any) -> list[dict[str, Any]]:
        p = self.plan
        return [
            {"duration": p.duration, "warmup": p.warmup, "shard": i, **params}
            for i in range(p.load_procs)
        ]

    def cluster_peer_texts(self) -> dict[str, Any]:
        from .cluster import ClusterBench

        p = self.plan
        assert p.db is not None
        bench = ClusterBench(p.db, p.nodes, self.workdir / "cluster", dict(BENCH_SETTINGS))
        return bench.peer_texts(
            pairs=p.pairs, window=p.window, duration=p.duration, warmup=p.warmup
        )

    def peer_texts(self) -> dict[str, Any]:
        p = self.plan
        broker = self.fresh_broker("peer")
        try:
            shards = self._timed_shards(window=p.window)
            for shard, pairs in zip(shards, shards_of(p.pairs, p.load_procs), strict=True):
                shard["pairs"] = pairs
            results = run_load(
                "bench.load",
                broker.address,
                shards,
                scenario="peer_texts",
                watch=broker.pid,
            )
        finally:
            broker.kill()
        elapsed = max(r["elapsed"] for r in results)
        delivered = rate(sum(r["delivered"] for r in results), elapsed)
        return {
            "senders": p.pairs,
            "window": p.window,
            "acked_per_s": rate(sum(r["acked"] for r in results), elapsed),
            "delivered_per_s": delivered,
            "send_to_deliver": merge_latency(results),
            **broker_cpu(results, delivered),
            **errors(results),
        }

    def mosquitto_peer(self) -> dict[str, Any]:
        p = self.plan
        assert p.mosquitto is not None
        shards = self._timed_shards(window=p.window, client=p.mqtt_client)
        for shard, pairs in zip(shards, shards_of(p.pairs, p.load_procs), strict=True):
            shard["pairs"] = pairs
        results = run_load("bench.mqttload", p.mosquitto, shards, watch=process_named("mosquitto"))
        elapsed = max(r["elapsed"] for r in results)
        delivered = rate(sum(r["delivered"] for r in results), elapsed)
        return {
            "address": p.mosquitto,
            "client": p.mqtt_client,
            "client_is": MQTT_CLIENTS[p.mqtt_client],
            "pairs": p.pairs,
            "window": p.window,
            "acked_per_s": rate(sum(r["acked"] for r in results), elapsed),
            "delivered_per_s": delivered,
            "send_to_deliver": merge_latency(results),
            **broker_cpu(results, delivered),
            **errors(results),
        }

    def idle_echo(self) -> dict[str, Any]:
        """idle's floor: a bare trio echo server, as many connections, the same ping rate."""
        p = self.plan
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.echo", "serve", "0"],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        try:
            assert server.stdout is not None
            port = json.loads(server.stdout.readline())["port"]
            shard = {"connections": p.idle_connections, "interval": 10.0}
            shard["duration"] = p.idle_duration
            result = run_load(
                "bench.echo",
                f"127.0.0.1:{port}",
                [shard],
                scenario="idle",
                watch=server.pid,
            )[0]
        finally:
            server.kill()
            server.wait()
        per_s = rate(result["pings"], result["elapsed"])
        cores = result.get("broker_cpu_cores") or 0.0
        return {
            "connections": p.idle_connections,
            "pings_per_s": per_s,
            "server_cpu_percent_of_core": round(cores * 100, 1),
            "server_cpu_us_per_ping": round(cores / max(1.0, per_s) * 1e6, 1),
        }

    def trio_echo(self) -> dict[str, Any]:
        """request/response's floor: a bare trio echo server, one request in flight per
        connection, on the same machine (bench/echo.py)."""
        p = self.plan
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.echo", "serve", "0"],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        try:
            assert server.stdout is not None
            port = json.loads(server.stdout.readline())["port"]
            shards = self._timed_shards()
            for shard, n in zip(shards, shards_of(p.rr_connections, p.load_procs), strict=True):
                shard["connections"] = n
            results = run_load(
                "bench.echo", f"127.0.0.1:{port}", shards, scenario="load", watch=server.pid
            )
        finally:
            server.kill()
            server.wait()
        elapsed = max(r["elapsed"] for r in results)
        per_s = rate(sum(r["acked"] for r in results), elapsed)
        return {
            "connections": p.rr_connections,
            "msgs_per_s": per_s,
            "latency": merge_latency(results),
            **broker_cpu(results, per_s),
        }

    def request_response(self) -> dict[str, Any]:
        p = self.plan
        broker = self.fresh_broker("rr")
        try:
            create_users(broker.db_path, ["sink"])
            shards = self._timed_shards(sink="sink")
            for shard, n in zip(shards, shards_of(p.rr_connections, p.load_procs), strict=True):
                shard["connections"] = n
            results = run_load(
                "bench.load",
                broker.address,
                shards,
                scenario="request_response",
                watch=broker.pid,
            )
        finally:
            broker.kill()
        elapsed = max(r["elapsed"] for r in results)
        per_s = rate(sum(r["acked"] for r in results), elapsed)
        return {
            **broker_cpu(results, per_s),
            "connections": p.rr_connections,
            "msgs_per_s": per_s,
            "latency": merge_latency(results),
            **errors(results),
        }

    def steady_rate(self) -> dict[str, Any]:
        p = self.plan
        target = p.steady_rate
        if target is None:
            saturation = self.results.scenarios.get("request_response", {}).get("msgs_per_s")
            target = round(saturation / 2) if saturation else 5000.0
        broker = self.fresh_broker("steady")
        try:
            shards = self._timed_shards(rate=target / p.load_procs)
            for shard, n in zip(shards, shards_of(p.steady_pairs, p.load_procs), strict=True):
                shard["pairs"] = n
            results = run_load("bench.load", broker.address, shards, scenario="steady_rate")
        finally:
            broker.kill()
        elapsed = max(r["elapsed"] for r in results)
        return {
            "target_per_s": target,
            "rate_from": "asked" if p.steady_rate is not None else "half of request/response",
            "sent_per_s": rate(sum(r["sent"] for r in results), elapsed),
            "delivered_per_s": rate(sum(r["delivered"] for r in results), elapsed),
            "send_to_deliver": merge_latency(results),
            **errors(results),
        }

    def backlog(self) -> dict[str, Any]:
        p = self.plan
        broker = self.fresh_broker("backlog")
        try:
            create_users(broker.db_path, ["offline"])
            shards = [
                {"senders": n, "window": p.window, "to": "offline", "shard": i}
                for i, n in enumerate(shards_of(p.backlog_senders, p.load_procs))
            ]
            counts = shards_of(p.backlog, p.load_procs)
            for shard, n in zip(shards, counts, strict=True):
                shard["count"] = n
            progress(f"backlog: queueing {p.backlog} messages through {p.backlog_senders} senders")
            fill = run_load("bench.load", broker.address, shards, scenario="fill_backlog")
            fill_elapsed = max(r["elapsed"] for r in fill)
            refused = errors(fill)
            if refused["errors"]:  # the drain would wait for messages that were never queued
                raise RuntimeError(
                    f"backlog fill: {refused['errors']} sends refused, first: "
                    f"{refused['first_error']}"
                )
            progress("backlog: draining")
            drain = run_load(
                "bench.load",
                broker.address,
                [{"user": "offline", "count": p.backlog}],
                scenario="drain_backlog",
            )[0]
        finally:
            broker.kill()
        return {
            "messages": p.backlog,
            "queued_per_s": rate(p.backlog, fill_elapsed),
            "drain_per_s": rate(drain["delivered"], drain["elapsed"]),
            "drain_s": round(drain["elapsed"], 3),
            "login_s": round(drain["login_s"], 4),
        }

    def announcement(self) -> dict[str, Any]:
        p = self.plan
        broker = self.fresh_broker("announce")
        try:
            users = [f"a{i}" for i in range(p.announce_users)]
            progress(f"announcement: creating {len(users)} users by direct insert (setup)")
            create_users(broker.db_path, ["announcer", *users])
            result = run_load(
                "bench.load",
                broker.address,
                [{"users": users, "online": p.announce_online, "announcer": "announcer"}],
                scenario="announcement",
            )[0]
        finally:
            broker.kill()
        return {
            "users": p.announce_users,
            "online": p.announce_online,
            "durable_s": round(result["durable_s"], 4),
            "pushed_to_all_online_s": round(result["pushed_s"], 4),
        }

    def presence_storm(self) -> dict[str, Any]:
        """Returning users resume with their token together, live, presence on (batched)."""
        p = self.plan
        broker = self.fresh_broker("storm")
        try:
            users = [f"p{i}" for i in range(p.storm_users)]
            progress(f"presence_storm: creating {len(users)} users and their logins (setup)")
            tokens = create_users(broker.db_path, ["observer", *users], with_tokens=True)
            shards = [
                {"tokens": tokens[1:][i :: p.load_procs], "in_flight": p.storm_in_flight}
                for i in range(p.load_procs)
            ]
            shards[0].update(observe=True, observer_token=tokens[0])
            assert broker.pid is not None
            with CpuSampler(broker.pid) as sampler:
                results = run_load(
                    "bench.load",
                    broker.address,
                    shards,
                    scenario="presence_storm",
                    watch=broker.pid,
                )
        finally:
            broker.kill()
        started = min(r["started"] for r in results)  # the load's clock is CLOCK_MONOTONIC too
        done = sorted(t for r in results for t in r["done_at"])
        elapsed = max(r["elapsed"] for r in results)

        def per_login_ms(first: int, last: int) -> float | None:
            """Wall time per login while logins first..last completed (others in flight)."""
            if len(done) < last or last - first < 2:
                return None
            return round(float(done[last - 1] - done[first]) / (last - first - 1) * 1000, 3)

        def cpu_per_login_ms(first: int, last: int) -> float | None:
            """The broker's CPU per login while logins first..last completed."""
            if len(done) < last or last - first < 2:
                return None
            used = sampler.cpu_at(started + done[last - 1]) - sampler.cpu_at(started + done[first])
            return round(used / (last - first - 1) * 1000, 3)

        cores = results[0].get("broker_cpu_cores") or 0.0
        return {
            "users": p.storm_users,
            "in_flight": p.storm_in_flight,
            "logins": len(done),
            "storm_s": round(elapsed, 2),
            "logins_per_s": rate(len(done), elapsed),
            "per_login_ms_first_100": per_login_ms(0, 100),
            "per_login_ms_900_to_1000": per_login_ms(900, 1000),
            "per_login_ms_last_1000": per_login_ms(max(0, len(done) - 1000), len(done)),
            # The first 200 logins go out together (in flight): time per login from 200 on.
            "cpu_ms_per_login_200_to_300": cpu_per_login_ms(200, 300),
            "cpu_ms_per_login_900_to_1000": cpu_per_login_ms(900, 1000),
            "cpu_ms_per_login_last_1000": cpu_per_login_ms(max(0, len(done) - 1000), len(done)),
            "observer_learned_all_s": results[0]["observer_learned_all_s"],
            "observer_saw": results[0]["observer_saw"],
            "broker_cpu_s": round(cores * elapsed, 2),
            "broker_cpu_ms_per_login": round(cores * elapsed / max(1, len(done)) * 1000, 3),
        }

    def password_logins(self) -> dict[str, Any]:
        """Password logins at the default bcrypt cost (12): each pays ~240 ms of CPU."""
        p = self.plan
        broker = self.fresh_broker("bcrypt")
        try:
            users = [f"pw{i}" for i in range(p.password_logins)]
            create_users(broker.db_path, users, rounds=12)
            results = run_load(
                "bench.load",
                broker.address,
                [{"users": users}],
                scenario="password_logins",
                watch=broker.pid,
            )
        finally:
            broker.kill()
        r = results[0]
        cores = r.get("broker_cpu_cores") or 0.0
        return {
            "logins": r["logins"],
            "bcrypt_cost": 12,
            "elapsed_s": round(r["elapsed"], 3),
            "logins_per_s": rate(r["logins"], r["elapsed"]),
            "broker_cpu_ms_per_login": round(cores * r["elapsed"] / r["logins"] * 1000, 1),
        }

    def idle(self) -> dict[str, Any]:
        """Live connections (presence on) that only heartbeat at the documented interval."""
        p = self.plan
        settings = {"heartbeat_timeout": 30.0}  # the default: clients ping every 10 s
        broker = self.fresh_broker("idle", **settings)
        interval = 30.0 / 3
        try:
            users = [f"i{i}" for i in range(p.idle_connections)]
            progress(f"idle: creating {len(users)} users and their logins (setup)")
            tokens = create_users(broker.db_path, users, with_tokens=True)
            pid = broker.pid
            assert pid is not None
            rss_before = rss_bytes(pid)
            rss_connected: list[int] = []
            shards = [
                {
                    "tokens": tokens[i :: p.load_procs],
                    "interval": interval,
                    "duration": p.idle_duration,
                }
                for i in range(p.load_procs)
            ]
            results = run_load(
                "bench.load",
                broker.address,
                shards,
                scenario="idle_live",
                watch=broker.pid,
                on_go=lambda: rss_connected.append(rss_bytes(pid)),
            )
            rss_after = rss_bytes(pid)
        finally:
            broker.kill()
        connections = sum(r["connections"] for r in results)
        cores = results[0].get("broker_cpu_cores") or 0.0
        elapsed = max(r["elapsed"] for r in results)
        pongs = sum(r["pongs"] for r in results)
        grown = max(rss_connected[0], rss_after) - rss_before
        return {
            "connections": connections,
            "heartbeat_interval_s": interval,
            "heartbeats_per_s": rate(pongs, elapsed),
            "broker_cpu_percent_of_core": round(cores * 100, 1),
            "broker_cpu_us_per_heartbeat": round(cores / max(1.0, pongs / elapsed) * 1e6, 1),
            "rss_before_mib": round(rss_before / 2**20, 1),
            "rss_connected_mib": round(max(rss_connected[0], rss_after) / 2**20, 1),
            "kib_per_connection": round(grown / max(1, connections) / 1024, 1),
            **errors(results),
        }


def rss_bytes(pid: int) -> int:
    """A process's resident memory, from /proc (0 where there is none)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def create_users(
    db_path: Path, names: list[str], *, rounds: int = 4, with_tokens: bool = False
) -> list[str]:
    """Benchmark setup only: insert accounts straight into the broker's SQLite file.

    One transaction and one precomputed bcrypt hash (cost 4 unless `rounds`) instead of a
    login per account; the broker reads users from the database, so they work like any other
    account. With `with_tokens`, each also gets a login (an auth_sessions row, as a password
    login would leave) and the tokens are returned in the order of `names`, for `resume`.
    """
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds)).decode()
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    tokens = [secrets.token_urlsafe(32) for _ in names] if with_tokens else []
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO users (username, password_hash, role, disabled, prank_opt_out,"
                " last_seq, acked_seq, created_at) VALUES (?, ?, 'user', 0, 0, 0, 0, ?)",
                [(name, hashed, created) for name in names],
            )
            if tokens:
                conn.executemany(
                    "INSERT INTO auth_sessions (user_id, token_hash, client, created_at,"
                    " last_used_at) SELECT id, ?, 'bench', ?, ? FROM users WHERE username = ?",
                    [
                        (hashlib.sha256(token.encode()).hexdigest(), created, created, name)
                        for name, token in zip(names, tokens, strict=True)
                    ],
                )
    finally:
        conn.close()
    return tokens


def format_table(results: Results) -> str:
    s = results.scenarios
    rows: list[tuple[str, str, str]] = []

    def add(name: str, figure: str, target_key: str) -> None:
        rows.append((name, figure, TARGETS.get(target_key, "")))

    def err(name: str) -> str | None:
        return s.get(name, {}).get("error")

    def cpu(r: dict[str, Any]) -> str:
        """The broker's own CPU, where it was read: comparable across brokers and clients."""
        if "broker_cpu_us_per_msg" not in r:
            return ""
        return f"; broker CPU {r['broker_cpu_us_per_msg']:,.0f} µs/msg"

    def refused(r: dict[str, Any]) -> str:
        """Error responses, if the load got any: the figure counts only successful sends."""
        if not r.get("errors"):
            return ""
        return f"; {r['errors']:,} ERROR RESPONSES (first: {r.get('first_error')})"

    if "cluster_peer_texts" in s:
        r = s["cluster_peer_texts"]
        if err("cluster_peer_texts"):
            add("cluster texts across nodes", "error: " + r["error"], "")
        else:
            add(
                f"cluster texts across {r['nodes']} nodes",
                f"{r['delivered_per_s']:,.0f} msgs/s delivered; PostgreSQL backends "
                f"{r['postgres_cpu_us_per_msg']} µs/msg ({r['postgres_cpu_cores']} cores)"
                + refused(r),
                "",
            )
            for node in r["per_node"]:
                add(
                    f"  {node['node']} (senders)",
                    f"{node['delivered_per_s']:,.0f} msgs/s; CPU {node['cpu_us_per_msg']} µs/msg "
                    f"({node['cpu_cores']} cores)",
                    "",
                )
    if "peer_texts" in s:
        r = s["peer_texts"]
        if err("peer_texts"):
            add("durable 1:1 texts e2e", "error: " + r["error"], "peer_texts")
        else:
            ratio = r.get("ratio_to_mosquitto")
            figure = (
                f"{r['delivered_per_s']:,.0f} msgs/s delivered ({r['acked_per_s']:,.0f} acked), "
                f"{r['senders']} senders × window {r['window']}"
            )
            if ratio is not None:
                figure += f"; {ratio:.2f}× Mosquitto"
            if r.get("ratio_to_rabbitmq") is not None:
                figure += f"; {r['ratio_to_rabbitmq']:.2f}× RabbitMQ quorum"
            figure += cpu(r) + refused(r)
            add("durable 1:1 texts e2e", figure, "peer_texts")
    if "mosquitto_peer" in s:
        r = s["mosquitto_peer"]
        figure = (
            "error: " + r["error"]
            if err("mosquitto_peer")
            else f"{r['delivered_per_s']:,.0f} msgs/s delivered (QoS 1, {r['pairs']} pairs, "
            f"{r['client']} client){cpu(r)}{refused(r)}"
        )
        add("  Mosquitto, same workload", figure, "")
    if "rabbitmq_peer" in s:
        r = s["rabbitmq_peer"]
        figure = (
            "error: " + r["error"]
            if err("rabbitmq_peer")
            else f"{r['delivered_per_s']:,.0f} msgs/s delivered (quorum queues, {r['pairs']} "
            f"pairs, confirms after fsync, lean client){cpu(r)}{refused(r)}"
        )
        add("  RabbitMQ, same workload", figure, "")
    if "request_response" in s:
        r = s["request_response"]
        figure = (
            "error: " + r["error"]
            if err("request_response")
            else f"{r['msgs_per_s']:,.0f} msgs/s, p50 {r['latency']['p50_ms']:.2f} ms, "
            f"p99 {r['latency']['p99_ms']:.2f} ms ({r['connections']} conns){cpu(r)}{refused(r)}"
            + (
                f"; {r['ratio_to_rabbitmq']:.2f}× RabbitMQ quorum"
                if r.get("ratio_to_rabbitmq") is not None
                else ""
            )
        )
        add("request/response", figure, "request_response")
    if "rabbitmq_rr" in s:
        r = s["rabbitmq_rr"]
        figure = (
            "error: " + r["error"]
            if err("rabbitmq_rr")
            else f"{r['msgs_per_s']:,.0f} msgs/s, p50 {r['latency']['p50_ms']:.2f} ms, "
            f"p99 {r['latency']['p99_ms']:.2f} ms (quorum queue){cpu(r)}{refused(r)}"
        )
        add("  RabbitMQ, same workload", figure, "")
    if "trio_echo" in s:
        r = s["trio_echo"]
        figure = (
            "error: " + r["error"]
            if err("trio_echo")
            else f"{r['msgs_per_s']:,.0f} round trips/s, p99 {r['latency']['p99_ms']:.2f} ms"
            f"{cpu(r).replace('broker CPU', 'server CPU').replace('/msg', '/round trip')}"
        )
        add("  bare trio echo (floor)", figure, "")
    if "steady_rate" in s:
        r = s["steady_rate"]
        if err("steady_rate"):
            figure = "error: " + r["error"]
        else:
            lat = r["send_to_deliver"]
            figure = (
                f"at {r['delivered_per_s']:,.0f} msgs/s delivered "
                f"(asked {r['target_per_s']:,.0f}): "
                f"p50 {lat.get('p50_ms', float('nan')):.2f} ms, "
                f"p99 {lat.get('p99_ms', float('nan')):.2f} ms{refused(r)}"
            )
        add("send→deliver latency", figure, "steady_rate")
    if "backlog" in s:
        r = s["backlog"]
        figure = (
            "error: " + r["error"]
            if err("backlog")
            else f"{r['drain_per_s']:,.0f} msgs/s ({r['messages']:,} in {r['drain_s']:.2f} s)"
        )
        add("backlog drain at login", figure, "backlog")
    if "announcement" in s:
        r = s["announcement"]
        figure = (
            "error: " + r["error"]
            if err("announcement")
            else f"{r['users']:,} users: durable in {r['durable_s'] * 1000:.0f} ms, pushed to "
            f"{r['online']:,} online in {r['pushed_to_all_online_s'] * 1000:.0f} ms"
        )
        add("announcement", figure, "announcement")
    if "presence_storm" in s:
        r = s["presence_storm"]
        if err("presence_storm"):
            figure = "error: " + r["error"]
        else:
            learned = r["observer_learned_all_s"]
            figure = (
                f"{r['logins']:,} returning users (token resume, live, presence on) in "
                f"{r['storm_s']:.1f} s ({r['logins_per_s']:,.0f}/s, {r['in_flight']} in flight); "
                f"per login: first 100 {r['per_login_ms_first_100']} ms, 900-1,000 "
                f"{r['per_login_ms_900_to_1000']} ms, last 1,000 {r['per_login_ms_last_1000']} ms; "
                f"broker CPU {r['broker_cpu_ms_per_login']} ms/login (logins 200-300: "
                f"{r['cpu_ms_per_login_200_to_300']}, 900-1,000: "
                f"{r['cpu_ms_per_login_900_to_1000']}, last 1,000: "
                f"{r['cpu_ms_per_login_last_1000']}); an observer knew all "
                + (f"after {learned:.1f} s" if learned is not None else "NEVER")
            )
        add("presence: login storm", figure, "presence_storm")
    if "password_logins" in s:
        r = s["password_logins"]
        figure = (
            "error: " + r["error"]
            if err("password_logins")
            else f"{r['logins']} together in {r['elapsed_s']:.2f} s ({r['logins_per_s']:.1f}/s), "
            f"broker CPU {r['broker_cpu_ms_per_login']:.0f} ms/login (bcrypt cost "
            f"{r['bcrypt_cost']})"
        )
        add("  password logins", figure, "password_logins")
    if "idle" in s:
        r = s["idle"]
        figure = (
            "error: " + r["error"]
            if err("idle")
            else f"{r['connections']:,} live connections, a heartbeat each "
            f"{r['heartbeat_interval_s']:.0f} s: {r['broker_cpu_percent_of_core']}% of a core "
            f"({r['broker_cpu_us_per_heartbeat']} µs/heartbeat), {r['kib_per_connection']} "
            f"KiB/connection (RSS {r['rss_before_mib']} -> {r['rss_connected_mib']} MiB)"
            f"{refused(r)}"
        )
        add("idle live connections", figure, "idle")
    if "idle_echo" in s:
        r = s["idle_echo"]
        figure = (
            "error: " + r["error"]
            if err("idle_echo")
            else f"{r['connections']:,} connections, {r['pings_per_s']:,.0f} pings/s: "
            f"{r['server_cpu_percent_of_core']}% of a core ({r['server_cpu_us_per_ping']} µs/ping)"
        )
        add("  bare trio echo, same pings (floor)", figure, "")
    width = max(len(r[0]) for r in rows) if rows else 10
    fig_width = max(len(r[1]) for r in rows) if rows else 10
    lines = [f"{'workload':<{width}}  {'measured':<{fig_width}}  target"]
    lines.append("-" * len(lines[0]) + "-" * 20)
    lines += [f"{a:<{width}}  {b:<{fig_width}}  {c}" for a, b, c in rows]
    m = results.machine
    lines.append("")
    if "mosquitto_peer" in s and "client_is" in s["mosquitto_peer"]:
        lines.append(f"Mosquitto driven by: {s['mosquitto_peer']['client_is']}")
    lines.append(f"mailnet over: {results.mailnet_transport} on 127.0.0.1")
    lines.append(
        f"machine: {m.get('cpus')} CPUs ({m.get('cpu_model')}), Python {m.get('python')}, "
        f"SQLite {m.get('sqlite')}"
    )
    return "\n".join(lines)


def run_benchmark(plan: Plan) -> Results:
    with tempfile.TemporaryDirectory(prefix="mailnet-bench-") as tmp:
        return Bench(plan, Path(tmp)).run()
