"""Full-text search with a million messages stored: `python scripts/search_bench.py`.

Fills a fresh SQLite file (default 1,000,000 messages among 1,000 users, bodies of 8-30 words
drawn from a Zipf-like vocabulary of 20,000 words) through the store's own group-commit path,
so the index is built by the same triggers as in production, then times the first page (50
results) of word and phrase queries for random users, as the broker runs them
(`MailStore.history` with a parsed query). The target (issue 12): at most 50 ms on SQLite.

Options: --messages N, --users N, --queries N (per kind), --keep DIR (reuse or keep the file).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from broker.protocol.search import parse_search
from broker.store import HistoryQuery, MailStore, SendIntent, migrate

VOCABULARY = 20_000
BATCH = 2_000
PAGE = 50


def vocabulary(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: set[str] = set()
    while len(words) < VOCABULARY:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(3, 9))))
    return sorted(words)


def zipf_cumulative(n: int) -> list[float]:
    weights = [1.0 / (rank + 1) for rank in range(n)]
    return list(itertools.accumulate(weights))


def fill(store: MailStore, messages: int, users: int, words: list[str], seed: int) -> None:
    rng = random.Random(seed)
    cumulative = zipf_cumulative(len(words))
    total = cumulative[-1]

    def text(count: int) -> str:
        picks = [bisect.bisect(cumulative, rng.random() * total) for _ in range(count)]
        return " ".join(words[min(p, len(words) - 1)] for p in picks)

    ids = []
    for n in range(users):
        ids.append(store.create_user(f"user{n}", "x" * 60).id)
    started = time.perf_counter()
    sent = 0
    while sent < messages:
        intents = []
        for _ in range(min(BATCH, messages - sent)):
            sender = rng.randrange(users)
            recipient = (sender + 1 + rng.randrange(users - 1)) % users
            kind = "email" if rng.random() < 0.5 else "text"
            intents.append(
                SendIntent(
                    sender_id=ids[sender],
                    sender=f"user{sender}",
                    kind=kind,
                    recipients=(f"user{recipient}",),
                    subject=text(rng.randint(2, 6)) if kind == "email" else None,
                    body=text(rng.randint(8, 30)),
                    client_msg_id=None,
                )
            )
        store.store_sends(intents, quota=10**9)
        sent += len(intents)
        if sent % 100_000 == 0:
            rate = sent / (time.perf_counter() - started)
            print(f"  stored {sent:,} messages ({rate:,.0f}/s)", file=sys.stderr)


def time_queries(
    store: MailStore, names: dict[int, str], label: str, queries: list[tuple[int, str]]
) -> tuple[str, list[float], list[float], float]:
    """Wall and CPU milliseconds of each query's first page, and the mean hits on it."""
    timings, cpu, found = [], [], 0
    for user_id, text in queries:
        query = HistoryQuery(query=parse_search(text), limit=PAGE, username=names[user_id])
        started, started_cpu = time.perf_counter(), time.thread_time()
        page = store.history(user_id, query)
        timings.append((time.perf_counter() - started) * 1000)
        cpu.append((time.thread_time() - started_cpu) * 1000)
        found += len(page)
    return label, timings, cpu, found / len(queries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--keep", type=Path, help="directory for the database (kept, reused)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    words = vocabulary(rng)
    directory = args.keep or Path(tempfile.mkdtemp(prefix="mailnet-search-"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"search-{args.messages}.db"
    fresh = not path.exists()
    store = MailStore.open(f"sqlite:///{path}")
    migrate.upgrade(store.engines.write)
    if fresh:
        print(f"filling {path} with {args.messages:,} messages...", file=sys.stderr)
        started = time.perf_counter()
        fill(store, args.messages, args.users, words, args.seed)
        print(f"  filled in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    names = {store.user_by_name(f"user{n}").id: f"user{n}" for n in range(args.users)}  # type: ignore[union-attr]
    user_ids = list(names)

    def sample_phrase(user_id: int) -> str:
        items = store.history(user_id, HistoryQuery(limit=20))
        body = rng.choice(items).body.split()
        start = rng.randrange(len(body) - 1)
        return f'"{body[start]} {body[start + 1]}"'

    picks = [rng.choice(user_ids) for _ in range(args.queries)]
    kinds = [
        ("word, frequency rank 1,000", [(u, words_by_rank(words, 1_000, rng)) for u in picks]),
        ("word, frequency rank 100", [(u, words_by_rank(words, 100, rng)) for u in picks]),
        ("word, frequency rank 10", [(u, words_by_rank(words, 10, rng)) for u in picks]),
        ("phrase of two words from the user's mail", [(u, sample_phrase(u)) for u in picks]),
        (
            "word + from: + kind:",
            [(u, f"{words_by_rank(words, 100, rng)} kind:email from:user7") for u in picks],
        ),
    ]
    store.history(picks[0], HistoryQuery(query=parse_search("warm up"), limit=PAGE, username="x"))
    size_mb = path.stat().st_size / 1e6
    print(
        f"\nsearch, first page of {PAGE}, {args.messages:,} messages, {args.users:,} users, "
        f"{size_mb:,.0f} MB on disk, {args.queries} queries each"
    )
    print("(wall: elapsed time; cpu: the query thread's CPU time, steady on a busy machine)")
    print(
        f"{'QUERY':44} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'cpu p50':>8} {'cpu p95':>8}"
        f" {'hits/page':>10}"
    )
    for label, queries in kinds:
        label, timings, cpu, hits = time_queries(store, names, label, queries)
        timings.sort()
        cpu.sort()
        p95 = int(len(timings) * 0.95) - 1
        print(
            f"{label:44} {statistics.median(timings):8.1f} {timings[p95]:8.1f} "
            f"{timings[-1]:8.1f} {statistics.median(cpu):8.1f} {cpu[p95]:8.1f} {hits:10.1f}"
        )
    store.close()
    return 0


def words_by_rank(words: list[str], rank: int, rng: random.Random) -> str:
    """A word near this rank of the Zipf vocabulary (rank 1 is the most frequent)."""
    return words[rng.randrange(max(0, rank - rank // 10 - 1), rank + rank // 10)]


if __name__ == "__main__":
    sys.exit(main())
