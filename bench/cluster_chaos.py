"""kill -9 chaos through HAProxy: the clients of bench/chaos.py (senders resending whatever was
not acknowledged with the same client_msg_id, receivers checking their mailboxes) connect only
to HAProxy, while random nodes are SIGKILLed and restarted and the nodes' database connections
are cut (pg_terminate_backend); then the PostgreSQL schema is checked message by message.

Used by tests/test_haproxy_cluster.py (a short run) and scripts/cluster_chaos.py (a long one).
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from dataclasses import dataclass

import trio
from sqlalchemy import Connection, Engine, create_engine, text

from .chaos import ChaosRun, Outgoing, Verdict, expected_recipients
from .deployment import Cluster, terminate_backends


@dataclass
class Target:
    """What ChaosRun's clients connect to: HAProxy's address (no process of its own to kill)."""

    address: str
    pid: int | None = None


class ClusterChaosRun(ChaosRun):
    def __init__(
        self,
        cluster: Cluster,
        admin_url: str,
        schema: str,
        *,
        kills: int,
        blips: int,
        seed: int,
        **kw: object,
    ) -> None:
        super().__init__(Target(cluster.address), kills=kills, seed=seed, **kw)  # type: ignore[arg-type]
        self.cluster = cluster
        self.admin_url = admin_url
        self.schema = schema
        self.blips = blips
        self.blips_done = 0
        self.backends_cut = 0
        self.engine: Engine = create_engine(cluster.db_url)

    async def _killer(self) -> None:
        """Kills (a random node, restarted after a moment) and blips, in a random order."""
        events = ["kill"] * self.kills + ["blip"] * self.blips
        self.rng.shuffle(events)
        for number, event in enumerate(events, 1):
            await trio.sleep(self.rng.uniform(0.3, 1.5))
            if event == "kill":
                node = self.rng.choice(self.cluster.nodes)
                await trio.to_thread.run_sync(node.kill)
                self.report.kills += 1
                await trio.sleep(self.rng.uniform(0.0, 1.0))  # HAProxy marks it down meanwhile
                await trio.to_thread.run_sync(node.start)
            else:
                cut = await trio.to_thread.run_sync(terminate_backends, self.admin_url, self.schema)
                self.backends_cut += cut
                self.blips_done += 1
            if self.progress:
                print(
                    f"cluster chaos: {event} {number}/{len(events)}; {self.report.summary()}",
                    file=sys.stderr,
                    flush=True,
                )
        await trio.sleep(0.5)
        self.stop_sending.set()

    async def wait_delivered(self) -> None:
        """Wait until every receiver has handed out as many entries as its mailbox holds."""
        while True:
            counts = await trio.to_thread.run_sync(self._mailbox_counts)
            if all(
                (self.received[u][-1][0] if self.received[u] else 0) >= counts.get(u, 0)
                for u in self.users
            ):
                return
            await trio.sleep(0.1)

    def _mailbox_counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT u.username, count(m.id) FROM users u "
                    "LEFT JOIN mailbox m ON m.user_id = u.id GROUP BY u.id"
                )
            )
            return {name: int(count) for name, count in rows}

    def verify(self) -> Verdict:
        with self.engine.connect() as conn:
            return verify_schema(conn, self.acked, self.sent, self.users)

    def delivery_problems(self) -> list[str]:
        """Each receiver got its mailbox exactly, in seq order, each message once."""
        problems = list(self.report.out_of_order)
        with self.engine.connect() as conn:
            for user in self.users:
                stored = [
                    (int(seq), int(message_id))
                    for seq, message_id in conn.execute(
                        text(
                            "SELECT m.seq, m.message_id FROM mailbox m JOIN users u "
                            "ON u.id = m.user_id WHERE u.username = :user ORDER BY m.seq"
                        ),
                        {"user": user},
                    )
                ]
                if stored != self.received[user]:
                    problems.append(f"{user}: received differs from the mailbox")
        if self.report.redelivered_to_app:
            problems.append(f"{self.report.redelivered_to_app} redeliveries reached the app")
        return problems

    def close(self) -> None:
        self.engine.dispose()


def verify_schema(
    conn: Connection,
    acked: dict[tuple[str, str], int],
    sent: dict[tuple[str, str], Outgoing],
    users: list[str],
) -> Verdict:
    """bench.chaos.verify_database for PostgreSQL: every ack stored once, in each recipient's
    mailbox once, seqs 1..N with users.last_seq = N, nothing no client sent."""
    verdict = Verdict(acked=len(acked), integrity="ok")  # PostgreSQL checks its own pages
    names = {i: n for i, n in conn.execute(text("SELECT id, username FROM users"))}
    stored: dict[tuple[str, str], list[int]] = defaultdict(list)
    for message_id, sender_id, cmid in conn.execute(
        text("SELECT id, sender_id, client_msg_id FROM messages")
    ):
        stored[(names[sender_id], cmid)].append(message_id)
    entries: dict[int, Counter[str]] = defaultdict(Counter)
    seqs: dict[str, list[int]] = defaultdict(list)
    for user_id, seq, message_id in conn.execute(
        text("SELECT user_id, seq, message_id FROM mailbox")
    ):
        entries[message_id][names[user_id]] += 1
        seqs[names[user_id]].append(seq)
        verdict.mailbox_rows += 1
    last_seq = {n: s for n, s in conn.execute(text("SELECT username, last_seq FROM users"))}
    for key, message_id in acked.items():
        rows = stored.get(key, [])
        if not rows:
            verdict.lost += 1
            continue
        if len(rows) > 1:
            verdict.duplicated += 1
        if message_id not in rows:
            verdict.wrong_id += 1
        if entries.get(rows[0], Counter()) != expected_recipients(sent[key], users):
            verdict.wrong_recipients += 1
    verdict.phantom = sum(1 for key in stored if key not in sent)
    for user in users:
        got = sorted(seqs.get(user, []))
        if got != list(range(1, len(got) + 1)):
            verdict.seq_problems.append(f"{user}: seqs are not 1..{len(got)}")
        if last_seq.get(user, 0) != len(got):
            verdict.seq_problems.append(f"{user}: last_seq {last_seq.get(user)} != {len(got)}")
    return verdict
