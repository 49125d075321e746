"""Run one broker in this process for the durability tests and the benchmark.

    python -m bench.runbroker --data-dir DIR [--port N] [--set field=value ...]

Plaintext on 127.0.0.1 only. Prints one JSON line ({"port": N, "pid": P}) on stdout once it is
listening, and stops gracefully (pending acks flushed, store closed) on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
from functools import partial
from pathlib import Path

import trio

from broker.config import Config
from broker.server import serve


def make_config(data_dir: Path, port: int, settings: list[str]) -> Config:
    config = Config(
        host="127.0.0.1",
        port=port,
        web_port=-1,
        data_dir=data_dir,
        insecure_plaintext=True,
        bcrypt_rounds=4,
    )
    changes: dict[str, object] = {}
    types = {f.name: f.type for f in dataclasses.fields(Config)}
    for setting in settings:
        name, _, raw = setting.partition("=")
        if name not in types:
            raise SystemExit(f"unknown config field {name!r}")
        current = getattr(config, name)
        if isinstance(current, bool):
            changes[name] = raw.lower() in ("1", "true", "yes", "on")
        elif isinstance(current, int):
            changes[name] = int(raw)
        elif isinstance(current, float):
            changes[name] = float(raw)
        else:
            changes[name] = raw
    return dataclasses.replace(config, **changes)


async def run(config: Config) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            info = await nursery.start(partial(serve, config))
            print(json.dumps({"port": info.tcp_port, "pid": _pid()}), flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def _pid() -> int:
    import os

    return os.getpid()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.runbroker")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr)
    trio.run(run, make_config(args.data_dir, args.port, args.set))


if __name__ == "__main__":
    main()
