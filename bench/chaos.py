"""kill -9 chaos: clients keep sending (resending whatever was not acknowledged) while the broker
is SIGKILLed at random moments and restarted (and, before every third kill, its group-commit
writer process alone); then the SQLite file is checked message by message.

Used by tests/test_durability.py (a short run) and scripts/chaos.py (the long one). The verdict
counts what the guarantees forbid: an acknowledged message missing (lost) or stored twice
(duplicated), a mailbox entry for the wrong user, a gap in a mailbox's sequence numbers, a
redelivery handed to the application, and a database that fails `PRAGMA integrity_check`.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from broker.client import BrokerUnreachable, Client, ClientError, RequestFailed, Trust, connect

from .process import WRITER_COMMAND, BrokerProcess, child_pids, known_settings

PASSWORD = "chaos-password"
RETRYABLE = {"unavailable", "internal", "rate_limited"}
CHAOS_SETTINGS = known_settings(
    {
        "send_rate": 1_000_000.0,
        "send_burst": 1_000_000,
        "heartbeat_timeout": 30.0,
        # Every client reconnects from 127.0.0.1 after each kill: not a password attack.
        "login_slow_after": 1_000_000,
        "login_max_delay": 0.0,
    }
)


@dataclass(frozen=True)
class Outgoing:
    sender: str
    client_msg_id: str
    kind: str
    to: tuple[str, ...]
    subject: str | None
    body: str


@dataclass
class ChaosReport:
    kills: int = 0
    writer_kills: int = 0  # the broker's writer process killed alone (the broker lives on)
    sent: int = 0  # distinct messages offered (each with its own client_msg_id)
    attempts: int = 0  # send requests written, retries included
    acked: int = 0
    retried_acks: int = 0  # acks answering a retry (duplicate=true)
    id_mismatches: list[str] = field(default_factory=list)  # a retry answered with another id
    reconnects: int = 0
    delivered: int = 0  # entries handed to receiving applications
    redelivered_to_app: int = 0
    out_of_order: list[str] = field(default_factory=list)
    duplicates_dropped: int = 0  # redeliveries the client library recognised and dropped
    failures: list[str] = field(default_factory=list)
    # Error codes answered to any request (sends and logins), retried or not: `internal` is
    # never acceptable, `unavailable` is what a client may see while a node or database is down.
    error_codes: Counter[str] = field(default_factory=Counter)

    def count_errors(self, group: BaseExceptionGroup[ClientError]) -> None:
        for exc in group.exceptions:
            if isinstance(exc, RequestFailed):
                self.error_codes[exc.code] += 1

    def summary(self) -> str:
        return (
            f"kills={self.kills} writer_kills={self.writer_kills} sent={self.sent} "
            f"attempts={self.attempts} acked={self.acked} "
            f"retried_acks={self.retried_acks} reconnects={self.reconnects} "
            f"delivered={self.delivered} client_dropped_redeliveries={self.duplicates_dropped}"
        )


@dataclass
class Verdict:
    acked: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong_id: int = 0
    wrong_recipients: int = 0
    phantom: int = 0  # stored messages no client ever sent
    seq_problems: list[str] = field(default_factory=list)
    integrity: str = ""
    mailbox_rows: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.wrong_id == 0
            and self.wrong_recipients == 0
            and self.phantom == 0
            and not self.seq_problems
            and self.integrity == "ok"
        )

    def summary(self) -> str:
        return (
            f"acked={self.acked} lost={self.lost} duplicated={self.duplicated} "
            f"wrong_id={self.wrong_id} wrong_recipients={self.wrong_recipients} "
            f"phantom={self.phantom} seq_problems={len(self.seq_problems)} "
            f"mailbox_rows={self.mailbox_rows} integrity={self.integrity}"
        )


def writer_process_of(broker_pid: int | None) -> int | None:
    """The broker's group-commit writer process, if it has one now."""
    writers = [] if broker_pid is None else child_pids(broker_pid, WRITER_COMMAND)
    return writers[0] if writers else None


def expected_recipients(message: Outgoing, users: list[str]) -> Counter[str]:
    if message.kind == "announcement":
        return Counter(u for u in users if u != message.sender)
    return Counter(message.to)


def verify_database(
    db_path: Path,
    acked: dict[tuple[str, str], int],
    sent: dict[tuple[str, str], Outgoing],
    users: list[str],
) -> Verdict:
    """Check the SQLite file against what clients were told: every ack once, nothing else."""
    verdict = Verdict(acked=len(acked))
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        verdict.integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        names = dict(conn.execute("SELECT id, username FROM users"))
        stored: dict[tuple[str, str], list[int]] = defaultdict(list)
        for message_id, sender_id, cmid in conn.execute(
            "SELECT id, sender_id, client_msg_id FROM messages"
        ):
            stored[(names[sender_id], cmid)].append(message_id)
        entries: dict[int, Counter[str]] = defaultdict(Counter)
        seqs: dict[str, list[int]] = defaultdict(list)
        for user_id, seq, message_id in conn.execute(
            "SELECT user_id, seq, message_id FROM mailbox"
        ):
            entries[message_id][names[user_id]] += 1
            seqs[names[user_id]].append(seq)
            verdict.mailbox_rows += 1
        last_seq = dict(conn.execute("SELECT username, last_seq FROM users"))
    finally:
        conn.close()
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


class ChaosRun:
    def __init__(
        self,
        broker: BrokerProcess,
        *,
        kills: int,
        seed: int,
        senders: int = 4,
        users: int = 6,
        window: int = 8,
        max_per_sender: int = 3000,
        progress: bool = False,
    ) -> None:
        self.broker = broker
        self.kills = kills
        self.rng = random.Random(seed)
        self.users = [f"user{i}" for i in range(users)]
        self.senders = self.users[:senders]
        self.window = window
        self.max_per_sender = max_per_sender
        self.progress = progress
        self.report = ChaosReport()
        self.sent: dict[tuple[str, str], Outgoing] = {}
        self.acked: dict[tuple[str, str], int] = {}
        self.received: dict[str, list[tuple[int, int]]] = defaultdict(list)  # (seq, message_id)
        self.stop_sending = trio.Event()
        self.stop_receiving = trio.Event()
        self._rngs = {u: random.Random(self.rng.random()) for u in self.users}

    # -- the clients --------------------------------------------------------------------------

    def _next_message(self, sender: str, index: int) -> Outgoing:
        rng = self._rngs[sender]
        others = [u for u in self.users if u != sender]
        roll = rng.random()
        cmid = f"{sender}-{index}"
        if roll < 0.02:
            return Outgoing(sender, cmid, "announcement", (), f"notice {index}", f"a{index}")
        if roll < 0.3:
            to = tuple(rng.sample(others, rng.randint(2, 3)))
            return Outgoing(sender, cmid, "email", to, f"subject {index}", f"e{index}")
        return Outgoing(sender, cmid, "text", (rng.choice(others),), None, f"t{index}")

    async def _send_one(
        self,
        client: Client,
        message: Outgoing,
        pending: dict[str, Outgoing],
        window: trio.Semaphore,
        lost_connection: trio.CancelScope,
    ) -> None:
        try:
            self.report.attempts += 1
            reply = await client.send(
                message.kind,
                to=list(message.to) if message.kind != "announcement" else None,
                subject=message.subject,
                body=message.body,
                client_msg_id=message.client_msg_id,
            )
        except RequestFailed as exc:
            self.report.error_codes[exc.code] += 1
            if exc.code not in RETRYABLE:
                self.report.failures.append(f"{message.client_msg_id}: {exc}")
                pending.pop(message.client_msg_id, None)
            else:
                lost_connection.cancel()  # back off and resend
            return
        except BrokerUnreachable:
            lost_connection.cancel()
            return
        finally:
            window.release()
        key = (message.sender, message.client_msg_id)
        message_id = reply["message_id"]
        previous = self.acked.get(key)
        if previous is None:
            self.acked[key] = message_id
            self.report.acked += 1
        elif previous != message_id:
            self.report.id_mismatches.append(f"{key}: {previous} then {message_id}")
        if reply.get("duplicate"):
            self.report.retried_acks += 1
        pending.pop(message.client_msg_id, None)

    async def _sender(self, name: str) -> None:
        pending: dict[str, Outgoing] = {}
        made = 0
        backoff = 0.02
        while True:
            done_making = self.stop_sending.is_set() or made >= self.max_per_sender
            if done_making and not pending:
                return
            try:
                async with connect(self.broker.address, trust=Trust.plaintext()) as client:
                    await client.login(name, PASSWORD)
                    backoff = 0.02
                    with trio.CancelScope() as lost_connection:
                        async with trio.open_nursery() as nursery:
                            window = trio.Semaphore(self.window)
                            for message in list(pending.values()):  # resend every unacked one
                                await window.acquire()
                                nursery.start_soon(
                                    self._send_one,
                                    client,
                                    message,
                                    pending,
                                    window,
                                    lost_connection,
                                )
                            while not self.stop_sending.is_set() and made < self.max_per_sender:
                                await window.acquire()
                                message = self._next_message(name, made)
                                made += 1
                                self.sent[(name, message.client_msg_id)] = message
                                self.report.sent += 1
                                pending[message.client_msg_id] = message
                                nursery.start_soon(
                                    self._send_one,
                                    client,
                                    message,
                                    pending,
                                    window,
                                    lost_connection,
                                )
                    if lost_connection.cancelled_caught:
                        raise BrokerUnreachable("lost the connection mid-send")
            except* ClientError as group:  # connect() wraps what its body raises in a group
                self.report.count_errors(group)
                self.report.reconnects += 1
                await trio.sleep(backoff)
                backoff = min(0.5, backoff * 2)

    async def _receiver(self, name: str) -> None:
        """Stays logged in, resuming after the last seq it handed out, and checks the order."""
        last_seq = 0
        # Half the receivers tell the broker where to resume; the other half resume from the
        # broker's stored ack (which a SIGKILL may have set back) and rely on the client library
        # to drop the redeliveries it recognises by seq.
        resume_from_broker = self.users.index(name) % 2 == 1
        while not self.stop_receiving.is_set():
            try:
                async with (
                    connect(self.broker.address, trust=Trust.plaintext()) as client,
                    self._count_dropped(client),
                ):
                    if resume_from_broker:
                        client.last_seq = last_seq
                        await client.login(name, PASSWORD)
                    else:
                        await client.login(name, PASSWORD, resume_after=last_seq)
                    while True:
                        with trio.move_on_after(0.2):
                            entry = await client.next_mail()
                            seq = entry["seq"]
                            if seq <= last_seq:
                                self.report.redelivered_to_app += 1
                            elif seq != last_seq + 1:
                                self.report.out_of_order.append(f"{name}: {last_seq} -> {seq}")
                            last_seq = max(last_seq, seq)
                            self.received[name].append((seq, entry["message_id"]))
                            self.report.delivered += 1
                            if seq % 20 == 0:
                                await client.flush_ack()
                            continue
                        if self.stop_receiving.is_set():
                            await client.flush_ack()
                            return
                        await client.flush_ack()
            except* ClientError as group:
                self.report.count_errors(group)
                await trio.sleep(0.05)

    @asynccontextmanager
    async def _count_dropped(self, client: Client) -> AsyncIterator[None]:
        try:
            yield
        finally:
            self.report.duplicates_dropped += client.duplicates_dropped

    # -- the killer ---------------------------------------------------------------------------

    async def _killer(self) -> None:
        for number in range(1, self.kills + 1):
            await trio.sleep(self.rng.uniform(0.05, 0.6))
            if number % 3 == 2:  # before every third kill, SIGKILL the writer process alone
                writer = writer_process_of(self.broker.pid)
                if writer is not None:
                    os.kill(writer, signal.SIGKILL)
                    self.report.writer_kills += 1
                    await trio.sleep(self.rng.uniform(0.05, 0.3))  # batches fail, retries go
            await trio.to_thread.run_sync(self.broker.kill)
            self.report.kills += 1
            await trio.sleep(self.rng.uniform(0.0, 0.2))  # clients find it down meanwhile
            await trio.to_thread.run_sync(self.broker.start)
            if self.progress:
                print(
                    f"chaos: kill {number}/{self.kills}; {self.report.summary()}",
                    file=sys.stderr,
                    flush=True,
                )
        await trio.sleep(0.3)
        self.stop_sending.set()

    async def run(self) -> ChaosReport:
        for name in self.users:  # the accounts, before any chaos
            async with connect(self.broker.address, trust=Trust.plaintext()) as client:
                await client.login(name, PASSWORD, create=True)
        async with trio.open_nursery() as outer:
            for name in self.users:
                outer.start_soon(self._receiver, name)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._killer)
                for name in self.senders:
                    nursery.start_soon(self._sender, name)
            await self.wait_delivered()
            self.stop_receiving.set()
        return self.report

    async def wait_delivered(self) -> None:
        """Wait until every receiver has handed out as many entries as its mailbox holds."""
        conn = sqlite3.connect(f"file:{self.broker.db_path}?mode=ro", uri=True)
        try:
            while True:
                counts = dict(
                    conn.execute(
                        "SELECT u.username, count(m.id) FROM users u "
                        "LEFT JOIN mailbox m ON m.user_id = u.id GROUP BY u.id"
                    )
                )
                if all(
                    (self.received[u][-1][0] if self.received[u] else 0) >= counts.get(u, 0)
                    for u in self.users
                ):
                    return
                await trio.sleep(0.05)
        finally:
            conn.close()

    def verify(self) -> Verdict:
        return verify_database(self.broker.db_path, self.acked, self.sent, self.users)

    def delivery_problems(self) -> list[str]:
        """Each receiver got its mailbox exactly, in seq order, each message once."""
        problems = list(self.report.out_of_order)
        conn = sqlite3.connect(f"file:{self.broker.db_path}?mode=ro", uri=True)
        try:
            for user in self.users:
                stored = list(
                    conn.execute(
                        "SELECT m.seq, m.message_id FROM mailbox m JOIN users u "
                        "ON u.id = m.user_id WHERE u.username = ? ORDER BY m.seq",
                        (user,),
                    )
                )
                if [tuple(r) for r in stored] != self.received[user]:
                    problems.append(f"{user}: received differs from the mailbox")
        finally:
            conn.close()
        if self.report.redelivered_to_app:
            problems.append(f"{self.report.redelivered_to_app} redeliveries reached the app")
        return problems
