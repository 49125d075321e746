"""The long kill -9 chaos run: `python scripts/chaos.py --kills 50 [--seed N] [--keep DIR]`.

Starts a broker subprocess on a temporary SQLite file, keeps clients sending (and resending what
was not acknowledged) while it SIGKILLs and restarts the broker, then checks the file: every
acknowledged message stored once and in each recipient's mailbox once, seqs 1..N with no gaps,
`PRAGMA integrity_check` ok. Exit code 0 when all of that holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from bench.chaos import CHAOS_SETTINGS, ChaosRun
from bench.process import BrokerProcess


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--max-per-sender", type=int, default=20_000)
    parser.add_argument("--keep", type=Path, help="use this directory and keep the database")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailnet-chaos-") as tmp:
        data_dir = args.keep or Path(tmp)
        started = time.monotonic()
        with BrokerProcess(data_dir, settings=CHAOS_SETTINGS) as broker:
            run = ChaosRun(
                broker,
                kills=args.kills,
                seed=args.seed,
                senders=args.senders,
                max_per_sender=args.max_per_sender,
                progress=True,
            )
            report = trio.run(run.run)
            verdict = run.verify()
            problems = run.delivery_problems()
        print(f"chaos ({time.monotonic() - started:.1f}s): {report.summary()}")
        print(f"database: {verdict.summary()}")
        failures = report.failures + report.id_mismatches + problems + verdict.seq_problems
        for line in failures[:20]:
            print("problem:", line)
        ok = verdict.ok and not failures and report.acked == report.sent
        print("OK: 0 lost, 0 duplicated" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
