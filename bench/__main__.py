"""`python -m bench [--json] [--quick] [--duration S]`: see bench/run.py."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .run import (
    WORKLOADS,
    Plan,
    format_table,
    mosquitto_address,
    rabbitmq_address,
    run_benchmark,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark mailnet on 127.0.0.1 (and Mosquitto, if one is running).",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quick", action="store_true", help="a short run (well under a minute)")
    parser.add_argument("--duration", type=float, help="seconds measured per timed workload")
    parser.add_argument("--load-procs", type=int, help="load generator processes")
    parser.add_argument("--no-mosquitto", action="store_true", help="skip the Mosquitto peer")
    parser.add_argument(
        "--no-rabbitmq", action="store_true", help="skip the RabbitMQ quorum-queue peer"
    )
    parser.add_argument(
        "--mqtt-client",
        choices=("lean", "paho"),
        help="the Mosquitto workload's client: lean (default, like mailnet's) or paho-mqtt",
    )
    parser.add_argument(
        "--tls", action="store_true", help="mailnet over TLS (self-signed), not plaintext"
    )
    parser.add_argument(
        "--rate",
        type=float,
        help="msgs/s for the latency run (default: half the request/response rate measured)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        choices=WORKLOADS,
        help="run only this workload (repeatable)",
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        help="a PostgreSQL URL: benchmark a cluster of --nodes brokers there (in a fresh schema)",
    )
    parser.add_argument("--nodes", type=int, default=2, help="broker nodes with --db (default 2)")
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    if args.duration is not None:
        plan = dataclasses.replace(plan, duration=args.duration)
    if args.load_procs is not None:
        plan = dataclasses.replace(plan, load_procs=args.load_procs)
    if args.only:
        plan = dataclasses.replace(plan, only=tuple(args.only))
    if args.rate is not None:
        plan = dataclasses.replace(plan, steady_rate=args.rate)
    if args.tls:
        plan = dataclasses.replace(plan, tls=True)
    if args.mqtt_client is not None:
        plan = dataclasses.replace(plan, mqtt_client=args.mqtt_client)
    if args.db:
        plan = dataclasses.replace(plan, db=args.db, nodes=args.nodes)
    if not args.no_mosquitto and not args.db:
        plan = dataclasses.replace(plan, mosquitto=mosquitto_address())
    if not args.no_rabbitmq:
        plan = dataclasses.replace(plan, rabbitmq=rabbitmq_address())
    results = run_benchmark(plan)
    if args.json:
        print(json.dumps(dataclasses.asdict(results), indent=2))
    else:
        print(format_table(results))
    failed = [name for name, r in results.scenarios.items() if "error" in r]
    if failed:
        print("workloads failed: " + ", ".join(failed), file=sys.stderr)
    refused = [name for name, r in results.scenarios.items() if r.get("errors")]
    if refused:
        print("workloads with error responses: " + ", ".join(refused), file=sys.stderr)
    if failed or refused:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
