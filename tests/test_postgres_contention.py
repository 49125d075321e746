"""Several nodes writing one PostgreSQL database at once: their group commits never deadlock
or fail each other, nodes starting together migrate once, and there is one first admin.

Each race is reproduced deterministically: the test holds a lock of its own that makes the
nodes' transactions wait at the point where they used to collide, checks (in pg_stat_activity)
that they are waiting, then lets them go.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest
import trio
from sqlalchemy import Connection, Engine, create_engine, text

from broker.store import MailStore, SendIntent, SendOutcome, migrate
from tests.conftest import make_config, running_broker

PG_URL = os.environ.get("MAILNET_TEST_PG_URL")
pytestmark = pytest.mark.skipif(
    not PG_URL, reason="MAILNET_TEST_PG_URL is not set (a PostgreSQL URL; .ci/run sets it)"
)

T = TypeVar("T")
WAIT = 20.0  # seconds any step may take before the test fails


class Schema:
    """A fresh schema, and URLs whose connections use it under a name of this test's own."""

    def __init__(self) -> None:
        assert PG_URL is not None
        self.name = "mailnet_race_" + uuid.uuid4().hex[:8]
        self.app = self.name  # the application_name of the nodes' connections
        self.admin = create_engine(PG_URL)

    def url(self, app: str | None = None) -> str:
        assert PG_URL is not None
        separator = "&" if "?" in PG_URL else "?"
        return (
            f"{PG_URL}{separator}options=-csearch_path%3D{self.name}"
            f"&application_name={app or self.app}"
        )

    def waiting_on_locks(self) -> int:
        with self.admin.connect() as conn:
            return conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = :app AND wait_event_type = 'Lock'"
                ),
                {"app": self.app},
            ).scalar_one()

    def wait_until_waiting(self, count: int) -> None:
        deadline = time.monotonic() + WAIT
        while self.waiting_on_locks() < count:
            assert time.monotonic() < deadline, f"{count} transactions never waited on a lock"
            time.sleep(0.02)


@pytest.fixture
def schema() -> Iterator[Schema]:
    made = Schema()
    with made.admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {made.name}"))
    try:
        yield made
    finally:
        with made.admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {made.name} CASCADE"))
        made.admin.dispose()


@pytest.fixture
def nodes(schema: Schema) -> Iterator[list[MailStore]]:
    """Two stores on the migrated schema: the database side of two broker nodes."""
    stores = [MailStore.open(schema.url()) for _ in range(2)]
    migrate.upgrade(stores[0].engines.write)
    try:
        yield stores
    finally:
        for store in stores:
            store.close()


def deadlocks(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        ).scalar_one()


def text_to(
    sender: tuple[int, str], recipient: str, body: str, key: str | None = None
) -> SendIntent:
    return SendIntent(sender[0], sender[1], "text", (recipient,), None, body, key)


def hold(conn: Connection, sql: str) -> None:
    conn.execute(text(sql))


def started(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> Future[T]:
    return pool.submit(fn, *args)


def test_batches_of_two_nodes_to_the_same_users_never_deadlock(
    schema: Schema, nodes: list[MailStore]
) -> None:
    a, b = nodes
    sender = a.create_user("sender", "x")
    u1 = a.create_user("u1", "x")
    a.create_user("u2", "x")
    me = (sender.id, sender.username)
    # Batch A allocates u1's seqs before u2's, batch B u2's before u1's (their counts differ).
    batch_a = [text_to(me, "u1", "a1"), text_to(me, "u2", "a2"), text_to(me, "u2", "a3")]
    batch_b = [text_to(me, "u2", "b1"), text_to(me, "u1", "b2"), text_to(me, "u1", "b3")]
    before = deadlocks(schema.admin)
    blocker = create_engine(schema.url(app=schema.name + "_blocker"))
    try:
        with blocker.begin() as conn, ThreadPoolExecutor(2) as pool:
            hold(conn, f"SELECT id FROM users WHERE id = {u1.id} FOR NO KEY UPDATE")
            done_a = started(pool, a.store_sends, batch_a, 1000)
            schema.wait_until_waiting(1)  # A waits for u1
            done_b = started(pool, b.store_sends, batch_b, 1000)
            schema.wait_until_waiting(2)  # B waits too (for u1, or for u2 after taking it)
            conn.commit()  # lets them go
            outcomes = done_a.result(WAIT) + done_b.result(WAIT)
    finally:
        blocker.dispose()
    assert [o.error_code for o in outcomes] == [None] * 6
    assert deadlocks(schema.admin) == before
    assert sorted(e.body for e in b.entries_after(u1.id, 0, 10)) == ["a1", "b2", "b3"]
    assert [e.seq for e in b.entries_after(u1.id, 0, 10)] == [1, 2, 3]


def test_a_retry_through_another_node_at_once_is_a_duplicate_of_the_first(
    schema: Schema, nodes: list[MailStore]
) -> None:
    a, b = nodes
    alice = a.create_user("alice", "x")
    carol = a.create_user("carol", "x")
    a.create_user("dave", "x")
    me = (alice.id, alice.username)
    first = [text_to(me, "carol", "hello", key="retry-1")]
    # The same send through node B, in a batch with an unrelated send to dave.
    retry = [text_to(me, "dave", "unrelated"), text_to(me, "carol", "hello", key="retry-1")]
    blocker = create_engine(schema.url(app=schema.name + "_blocker"))
    try:
        with blocker.begin() as conn, ThreadPoolExecutor(2) as pool:
            hold(conn, f"SELECT id FROM users WHERE id = {carol.id} FOR NO KEY UPDATE")
            done_a = started(pool, a.store_sends, first, 1000)
            schema.wait_until_waiting(1)
            done_b = started(pool, b.store_sends, retry, 1000)
            schema.wait_until_waiting(2)
            conn.commit()
            [stored] = done_a.result(WAIT)
            unrelated, again = done_b.result(WAIT)
    finally:
        blocker.dispose()
    assert stored.error_code is None and not stored.duplicate
    assert again == SendOutcome(message_id=stored.message_id, duplicate=True)
    assert unrelated.error_code is None and unrelated.message_id is not None
    assert [e.body for e in a.entries_after(carol.id, 0, 10)] == ["hello"]


def test_two_first_users_on_two_nodes_make_one_admin(
    schema: Schema, nodes: list[MailStore]
) -> None:
    a, b = nodes
    blocker = create_engine(schema.url(app=schema.name + "_blocker"))
    try:
        with blocker.begin() as conn, ThreadPoolExecutor(2) as pool:
            # Both nodes may look for existing users; neither can insert until this commits.
            hold(conn, "LOCK TABLE users IN SHARE MODE")
            made_a = started(pool, a.create_user, "first-a", "x")
            made_b = started(pool, b.create_user, "first-b", "x")
            schema.wait_until_waiting(2)
            conn.commit()
            roles = sorted([made_a.result(WAIT).role, made_b.result(WAIT).role])
    finally:
        blocker.dispose()
    assert roles == ["admin", "user"]


def test_nodes_starting_together_on_an_empty_database_migrate_once(schema: Schema) -> None:
    # Separate processes, as nodes are (alembic's context is global to a process).
    command = [sys.executable, "-m", "cli", "db", "upgrade", "--db", schema.url()]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    starting = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0].decode() for p in starting]
    assert [p.returncode for p in starting] == [0] * 4, outputs
    store = MailStore.open(schema.url())
    try:
        head = migrate.head_revision(store.engines.write)
        assert migrate.current_revision(store.engines.write) == head
    finally:
        store.close()


async def test_two_nodes_under_load_lose_nothing_and_never_deadlock(
    schema: Schema, tmp_path: Path
) -> None:
    """Senders on two nodes mail the same three users in varying orders, each send also retried
    through the other node: every send is stored once, every mailbox's seqs are 1..N."""
    senders, tasks, sends_each = 4, 3, 15
    recipients = ["r1", "r2", "r3"]
    before = deadlocks(schema.admin)
    answers: list[tuple[str, dict[str, object]]] = []
    with trio.fail_after(120):
        node_a = make_config(tmp_path / "a", db=schema.url(), send_rate=1e6, send_burst=10**6)
        node_b = make_config(tmp_path / "b", db=schema.url(), send_rate=1e6, send_burst=10**6)
        async with running_broker(node_a) as a, running_broker(node_b) as b:
            for name in recipients:
                async with a.user(name):
                    pass

            async def send_through_both(name: str, first, second, task: int) -> None:  # type: ignore[no-untyped-def]
                for n in range(sends_each):
                    key = f"{name}-{task}-{n}"
                    shift = (task + n) % 3
                    to = recipients[shift:] + recipients[:shift]
                    async with trio.open_nursery() as both:
                        for client in (first, second):
                            both.start_soon(partial(answer, client, to, key))

            async def answer(client, to: list[str], key: str) -> None:  # type: ignore[no-untyped-def]
                answers.append((key, await client.send_email(to, key, "x", client_msg_id=key)))

            async with trio.open_nursery() as load:
                for s in range(senders):
                    name = f"s{s}"
                    first, second = (a, b) if s % 2 else (b, a)
                    async with first.user(name):
                        pass
                    c1 = await load.start(hold_user, first, name)
                    c2 = await load.start(hold_user, second, name)
                    for task in range(tasks):
                        load.start_soon(send_through_both, name, c1, c2, task)
                await wait_for(lambda: len(answers) == 2 * senders * tasks * sends_each)
                load.cancel_scope.cancel()
    by_key: dict[str, set[object]] = {}
    for key, result in answers:
        by_key.setdefault(key, set()).add(result["message_id"])
    assert all(len(ids) == 1 for ids in by_key.values())  # each retry got the first id
    assert sorted(bool(r["duplicate"]) for _, r in answers).count(True) == len(by_key)
    store = MailStore.open(schema.url())
    try:
        for name in recipients:
            user = store.user_by_name(name)
            assert user is not None
            seqs = [e.seq for e in store.entries_after(user.id, 0, 10_000)]
            assert seqs == list(range(1, len(by_key) + 1))
    finally:
        store.close()
    assert deadlocks(schema.admin) == before


async def hold_user(broker, name: str, task_status) -> None:  # type: ignore[no-untyped-def]
    """A client logged in as `name` for as long as the caller's nursery runs."""
    async with broker.client() as client:
        await client.login(name, "password1")
        task_status.started(client)
        await trio.sleep_forever()


async def wait_for(condition: Callable[[], bool]) -> None:
    while not condition():
        await trio.sleep(0.05)
