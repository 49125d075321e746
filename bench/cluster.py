"""The benchmark on PostgreSQL: N broker nodes on one fresh schema, sender i on node i and its
recipient on the next node (every message crosses nodes: commit, NOTIFY, fetch), printing
msgs/s and the CPU per message of each node and of the PostgreSQL backends serving them."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from .process import BrokerProcess, known_settings, proc_stat


def _tick() -> int:
    return os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = proc_stat(pid)
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _tick()
    return total


def _schema_url(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


class ClusterBench:
    """One cluster run: make the schema, start the nodes, run the load, drop the schema."""

    def __init__(self, db_url: str, nodes: int, workdir: Path, settings: dict[str, object]):
        from sqlalchemy import create_engine

        self.db_url = db_url
        self.nodes = nodes
        self.workdir = workdir
        self.settings = settings
        self.schema = "mailnet_bench_" + uuid.uuid4().hex[:8]
        self.admin = create_engine(db_url)

    def _sql(self, sql: str, **params: object) -> list[Any]:
        from sqlalchemy import text

        with self.admin.begin() as conn:
            result = conn.execute(text(sql), params)
            return list(result) if result.returns_rows else []

    def backend_pids(self) -> list[int]:
        """The PostgreSQL backends of this run's nodes (their application_name)."""
        rows = self._sql(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE :pattern",
            pattern=f"{self.schema}-%",
        )
        return [row[0] for row in rows]

    def peer_texts(
        self, *, pairs: int, window: int, duration: float, warmup: float
    ) -> dict[str, Any]:
        from .run import rate, run_load, shards_of

        self._sql(f"CREATE SCHEMA {self.schema}")
        brokers: list[BrokerProcess] = []
        try:
            url = _schema_url(self.db_url, self.schema)
            for i in range(self.nodes):
                settings = dict(self.settings)
                settings["db"] = url + f"&application_name={self.schema}-node-{i}"
                settings["node_name"] = f"node-{i}"
                broker = BrokerProcess(
                    self.workdir / f"node-{i}",
                    settings=known_settings(settings),
                    stderr=subprocess.DEVNULL,
                )
                broker.start()
                brokers.append(broker)
            shards = [
                {
                    "duration": duration,
                    "warmup": warmup,
                    "shard": i,
                    "window": window,
                    "pairs": count,
                    "recipient_address": brokers[(i + 1) % self.nodes].address,
                }
                for i, count in enumerate(shards_of(pairs, self.nodes))
            ]
            samples: dict[str, float] = {}

            def sample() -> dict[str, float]:
                now = {f"node-{i}": _cpu([b.pid or 0]) for i, b in enumerate(brokers)}
                now["postgres"] = _cpu(self.backend_pids())
                now["at"] = time.monotonic()
                return now

            results = run_load(
                "bench.load",
                [b.address for b in brokers],
                shards,
                scenario="peer_texts",
                on_go=lambda: samples.update(sample()),
            )
            after = sample()
            elapsed_wall = after["at"] - samples["at"]  # from the go signal to the results
        finally:
            for broker in brokers:
                broker.kill()
            self._sql(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            self.admin.dispose()
        elapsed = max(r["elapsed"] for r in results)
        delivered = rate(sum(r["delivered"] for r in results), elapsed)
        per_node = []
        for i, result in enumerate(results):
            node_rate = rate(result["delivered"], elapsed)
            cores = (after[f"node-{i}"] - samples.get(f"node-{i}", 0.0)) / elapsed_wall
            per_node.append(
                {
                    "node": f"node-{i}",
                    "delivered_per_s": node_rate,
                    "cpu_cores": round(cores, 2),
                    "cpu_us_per_msg": round(cores / node_rate * 1e6, 1) if node_rate else None,
                }
            )
        pg_cores = (after["postgres"] - samples.get("postgres", 0.0)) / elapsed_wall
        return {
            "nodes": self.nodes,
            "senders": pairs,
            "window": window,
            "acked_per_s": rate(sum(r["acked"] for r in results), elapsed),
            "delivered_per_s": delivered,
            "per_node": per_node,
            "postgres_cpu_cores": round(pg_cores, 2),
            "postgres_cpu_us_per_msg": round(pg_cores / delivered * 1e6, 1) if delivered else None,
            "errors": sum(r.get("errors", 0) for r in results),
        }
