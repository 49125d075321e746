"""`mailnet bench`: run the benchmark (broker.bench) and print its table or JSON."""

from __future__ import annotations

import dataclasses
import json

import click

from broker.bench.run import (
    WORKLOADS,
    Plan,
    format_table,
    mosquitto_address,
    rabbitmq_address,
    run_benchmark,
)

from . import output


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.option("--quick", is_flag=True, help="A short run (well under a minute).")
@click.option("--duration", type=float, help="Seconds measured per timed workload.")
@click.option("--load-procs", type=click.IntRange(1, 16), help="Load generator processes.")
@click.option("--no-mosquitto", is_flag=True, help="Skip the Mosquitto comparison.")
@click.option("--no-rabbitmq", is_flag=True, help="Skip the RabbitMQ quorum-queue comparison.")
@click.option("--rate", type=float, help="Msgs/s for the latency run (default 5000).")
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(list(WORKLOADS)),
    help="Run only this workload (repeatable).",
)
def bench(
    as_json: bool,
    quick: bool,
    duration: float | None,
    load_procs: int | None,
    no_mosquitto: bool,
    no_rabbitmq: bool,
    rate: float | None,
    only: tuple[str, ...],
) -> None:
    """Benchmark a fresh local broker (127.0.0.1, temporary database) and print the figures.

    Progress goes to stderr. Where an MQTT broker answers on 127.0.0.1:1883 (Mosquitto), the
    same peer workload runs against it and mailnet's figure is shown as a ratio; where RabbitMQ
    answers on 127.0.0.1:5672 (guest/guest), the peer and request/response workloads also run
    against its quorum queues.
    """
    plan = Plan.quick() if quick else Plan()
    if duration is not None:
        plan = dataclasses.replace(plan, duration=duration)
    if load_procs is not None:
        plan = dataclasses.replace(plan, load_procs=load_procs)
    if only:
        plan = dataclasses.replace(plan, only=only)
    if rate is not None:
        plan = dataclasses.replace(plan, steady_rate=rate)
    if not no_mosquitto:
        plan = dataclasses.replace(plan, mosquitto=mosquitto_address())
    if not no_rabbitmq:
        plan = dataclasses.replace(plan, rabbitmq=rabbitmq_address())
    results = run_benchmark(plan)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(results), indent=2))
    else:
        click.echo(format_table(results))
    failed = [name for name, r in results.scenarios.items() if "error" in r]
    if failed:
        output.fail("workloads failed: " + ", ".join(failed), output.EXIT_UNEXPECTED)
