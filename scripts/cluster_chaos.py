"""The long chaos run through HAProxy: `python scripts/cluster_chaos.py --kills 30 --blips 15`.

Starts three `mailnet serve` nodes on a fresh schema of the PostgreSQL database named by
MAILNET_TEST_PG_URL (or --db), HAProxy in front of them (docs/deploy.md's configuration), and
keeps clients sending and receiving through HAProxy while it SIGKILLs random nodes (restarting
them) and cuts the nodes' database connections; then checks the schema and drops it. Exit code
0 when nothing acknowledged was lost or duplicated, no `internal` error was answered and every
mailbox is exact; 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import trio
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from bench.cluster_chaos import ClusterChaosRun
from bench.deployment import CHAOS_FLAGS, Cluster, cluster_url, deadlocks, terminate_backends


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=os.environ.get("MAILNET_TEST_PG_URL"))
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--blips", type=int, default=15)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--max-per-sender", type=int, default=20_000)
    parser.add_argument("--keep", type=Path, help="keep node logs and haproxy.cfg here")
    args = parser.parse_args()
    if not args.db:
        parser.error("give --db URL or set MAILNET_TEST_PG_URL (a PostgreSQL URL)")
    schema = "mailnet_chaos_" + uuid.uuid4().hex[:8]
    admin = create_engine(args.db)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        with tempfile.TemporaryDirectory(prefix="mailnet-cluster-chaos-") as tmp:
            base = args.keep or Path(tmp)
            started = time.monotonic()
            deadlocks_before = deadlocks(args.db)
            url = cluster_url(args.db, schema)
            with Cluster(base, url, nodes=args.nodes, extra_flags=CHAOS_FLAGS) as cluster:
                run = ClusterChaosRun(
                    cluster,
                    args.db,
                    schema,
                    kills=args.kills,
                    blips=args.blips,
                    seed=args.seed,
                    senders=args.senders,
                    max_per_sender=args.max_per_sender,
                    progress=True,
                )
                try:
                    report = trio.run(run.run)
                    verdict = run.verify()
                    problems = run.delivery_problems()
                finally:
                    run.close()
            print(
                f"cluster chaos ({time.monotonic() - started:.1f}s, health check "
                f"{cluster.health_check}): {report.summary()} blips={run.blips_done} "
                f"backends_cut={run.backends_cut}"
            )
            print(f"errors answered: {dict(report.error_codes)}")
            print(f"PostgreSQL deadlocks meanwhile: {deadlocks(args.db) - deadlocks_before}")
            print(f"database: {verdict.summary()}")
            failures = report.failures + report.id_mismatches + problems + verdict.seq_problems
            if report.error_codes["internal"]:
                failures.append(f"{report.error_codes['internal']} internal errors answered")
            for line in failures[:20]:
                print("problem:", line)
            ok = verdict.ok and not failures and report.acked == report.sent
            print("OK: 0 lost, 0 duplicated, 0 internal" if ok else "FAILED")
            return 0 if ok else 1
    finally:
        terminate_backends(args.db, schema)
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
