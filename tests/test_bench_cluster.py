"""`mailnet bench --db URL --nodes N`: the benchmark runs a cluster on PostgreSQL and reports
msgs/s and CPU per message of each node and of the PostgreSQL backends."""

from __future__ import annotations

import os

import pytest

from bench.run import Plan, format_table, run_benchmark

PG_URL = os.environ.get("MAILNET_TEST_PG_URL")
pytestmark = pytest.mark.skipif(
    not PG_URL, reason="MAILNET_TEST_PG_URL is not set (a PostgreSQL URL; .ci/run sets it)"
)


def test_the_benchmark_runs_two_nodes_on_postgresql() -> None:
    assert PG_URL is not None
    plan = Plan(db=PG_URL, nodes=2, duration=1.0, warmup=0.5, pairs=4, window=2)
    results = run_benchmark(plan)
    cluster = results.scenarios["cluster_peer_texts"]
    assert "error" not in cluster, cluster
    assert cluster["errors"] == 0
    assert cluster["delivered_per_s"] > 0
    assert [n["node"] for n in cluster["per_node"]] == ["node-0", "node-1"]
    assert all(n["delivered_per_s"] > 0 for n in cluster["per_node"])
    assert "postgres_cpu_us_per_msg" in cluster
    assert "cluster texts across 2 nodes" in format_table(results)
