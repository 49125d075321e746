"""Delivery guarantees on real processes: kill -9 chaos, retry storms, restarts, quotas.

The broker runs as a child process (bench.runbroker) on a real SQLite file, so it can be
SIGKILLed mid-commit and restarted on the same port. Correctness only: no timing asserts.
Set MAILNET_CHAOS_KILLS to lengthen the chaos run (scripts/chaos.py runs 50 kills).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from bench.chaos import CHAOS_SETTINGS, ChaosRun
from bench.process import BrokerProcess
from broker.client import Client, RequestFailed, Trust, connect
from broker.store import MailStore
from tests.conftest import make_config, running_broker

PASSWORD = "password1"


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path / "data", settings=CHAOS_SETTINGS) as process:
        yield process


async def kill9_and_restart(process: BrokerProcess) -> None:
    await trio.to_thread.run_sync(process.kill)
    await trio.to_thread.run_sync(process.start)


async def terminate_and_restart(process: BrokerProcess) -> None:
    code = await trio.to_thread.run_sync(process.terminate)
    assert code == 0, f"graceful stop exited {code}:\n{process.log_tail()}"
    await trio.to_thread.run_sync(process.start)


def query(db_path: Path, sql: str, *params: object) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()


async def log_in(address: str, name: str, client: Client, **kw: object) -> None:
    await client.login(name, PASSWORD, create=True, **kw)  # type: ignore[arg-type]


# -- kill -9 chaos ----------------------------------------------------------------------------


async def test_acknowledged_messages_survive_kill9_exactly_once(
    broker_process: BrokerProcess,
) -> None:
    kills = int(os.environ.get("MAILNET_CHAOS_KILLS", "10"))
    run = ChaosRun(broker_process, kills=kills, seed=20261130, max_per_sender=2000)
    with trio.fail_after(60 + 10 * kills):
        report = await run.run()
    verdict = run.verify()
    print(f"\nchaos: {report.summary()}\ndatabase: {verdict.summary()}")
    assert report.kills == kills
    assert report.writer_kills >= 1  # the writer process was killed alone too
    assert report.failures == []
    assert report.id_mismatches == []
    assert report.acked == report.sent  # every message was eventually acknowledged
    assert verdict.integrity == "ok"
    assert verdict.lost == 0
    assert verdict.duplicated == 0
    assert verdict.wrong_id == 0
    assert verdict.wrong_recipients == 0
    assert verdict.phantom == 0
    assert verdict.seq_problems == []
    assert run.delivery_problems() == []


# -- retry storm ------------------------------------------------------------------------------


async def test_retry_storm_stores_one_message_with_one_id(broker_process: BrokerProcess) -> None:
    address = broker_process.address
    replies: list[dict] = []

    async def storm(connections: int, per_connection: int) -> None:
        async def one_connection() -> None:
            async with connect(address, trust=Trust.plaintext()) as client:
                await client.login("stormer", PASSWORD)
                async with trio.open_nursery() as nursery:
                    for _ in range(per_connection):
                        nursery.start_soon(send_once, client)

        async def send_once(client: Client) -> None:
            replies.append(await client.send_text("calm", "once only", client_msg_id="storm-1"))

        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(one_connection)

    with trio.fail_after(60):
        for name in ("stormer", "calm"):
            async with connect(address, trust=Trust.plaintext()) as client:
                await client.login(name, PASSWORD, create=True)
        await storm(connections=5, per_connection=20)  # all at once
        await storm(connections=5, per_connection=20)  # again, on new connections
        await kill9_and_restart(broker_process)
        await storm(connections=3, per_connection=10)  # and after a crash

    assert len(replies) == 230
    assert {r["message_id"] for r in replies} == {replies[0]["message_id"]}
    assert sum(1 for r in replies if not r["duplicate"]) == 1
    db = broker_process.db_path
    assert query(db, "SELECT count(*) FROM messages WHERE client_msg_id = 'storm-1'") == [(1,)]
    assert query(db, "SELECT count(*) FROM mailbox") == [(1,)]


# -- offline queue across restarts ------------------------------------------------------------


async def test_offline_queue_survives_restarts_and_is_delivered_once_in_order(
    broker_process: BrokerProcess,
) -> None:
    address = broker_process.address
    with trio.fail_after(60):
        async with connect(address, trust=Trust.plaintext()) as bob:
            await bob.login("bob", PASSWORD, create=True)
            await bob.logout()
        async with connect(address, trust=Trust.plaintext()) as alice:
            await alice.login("alice", PASSWORD, create=True)
            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(alice.send_text, "bob", f"queued {i:03}")
        await terminate_and_restart(broker_process)
        await kill9_and_restart(broker_process)

        async with connect(address, trust=Trust.plaintext()) as bob:
            login = await bob.login("bob", PASSWORD)
            assert login["resume_after"] == 0
            received = [await bob.next_mail() for _ in range(100)]
            await bob.logout()  # flushes the ack, and the broker commits it before answering
        await kill9_and_restart(broker_process)

        async with connect(address, trust=Trust.plaintext()) as bob:
            login = await bob.login("bob", PASSWORD)
            assert login["resume_after"] == 100
            async with connect(address, trust=Trust.plaintext()) as alice:
                await alice.login("alice", PASSWORD)
                await alice.send_text("bob", "after the backlog")
            # Anything redelivered would arrive before this, in seq order.
            after = await bob.next_mail()

    assert [e["seq"] for e in received] == list(range(1, 101))
    assert sorted(e["body"] for e in received) == [f"queued {i:03}" for i in range(100)]
    assert [e["message_id"] for e in received] == sorted(e["message_id"] for e in received)
    assert (after["seq"], after["body"]) == (101, "after the backlog")
    assert bob.duplicates_dropped == 0


async def test_redelivery_after_a_crash_is_dropped_by_the_client_library(
    broker_process: BrokerProcess,
) -> None:
    """An ack still in the broker's memory dies with it; the client recognises the resend."""
    address = broker_process.address
    with trio.fail_after(60):
        async with connect(address, trust=Trust.plaintext()) as carol:
            await carol.login("carol", PASSWORD, create=True)
            async with connect(address, trust=Trust.plaintext()) as dave:
                await dave.login("dave", PASSWORD, create=True)
                for i in range(5):
                    await dave.send_text("carol", f"m{i}")
            seen = [await carol.next_mail() for _ in range(5)]
            last_seq = carol.last_seq
        await kill9_and_restart(broker_process)  # before the periodic ack flush, probably

        async with connect(address, trust=Trust.plaintext()) as carol:
            carol.last_seq = last_seq  # what the application remembered
            await carol.login("carol", PASSWORD)
            async with connect(address, trust=Trust.plaintext()) as dave:
                await dave.login("dave", PASSWORD)
                await dave.send_text("carol", "new")
            fresh = await carol.next_mail()

    assert [e["seq"] for e in seen] == [1, 2, 3, 4, 5]
    assert (fresh["seq"], fresh["body"]) == (6, "new")


# -- a retry much later is still recognised -------------------------------------------------


async def test_retry_after_other_traffic_and_a_restart_gets_the_same_id(
    broker_process: BrokerProcess,
) -> None:
    address = broker_process.address
    with trio.fail_after(60):
        async with connect(address, trust=Trust.plaintext()) as erin:
            await erin.login("erin", PASSWORD, create=True)
            async with connect(address, trust=Trust.plaintext()) as fay:
                await fay.login("fay", PASSWORD, create=True)
            first = await erin.send_email(["fay"], "hi", "body", client_msg_id="late-retry")
            for i in range(100):  # traffic in between: many group commits
                await erin.send_text("fay", f"filler {i}", client_msg_id=f"filler-{i}")
            again = await erin.send_email(["fay"], "hi", "body", client_msg_id="late-retry")
        await terminate_and_restart(broker_process)
        await kill9_and_restart(broker_process)
        async with connect(address, trust=Trust.plaintext()) as erin:
            await erin.login("erin", PASSWORD)
            later = await erin.send_email(["fay"], "hi", "body", client_msg_id="late-retry")

    assert first["duplicate"] is False
    assert (again["message_id"], again["duplicate"]) == (first["message_id"], True)
    assert (later["message_id"], later["duplicate"]) == (first["message_id"], True)
    db = broker_process.db_path
    assert query(db, "SELECT count(*) FROM messages WHERE client_msg_id='late-retry'") == [(1,)]
    assert query(db, "SELECT count(*) FROM mailbox") == [(101,)]


# -- no silent drops: quota and disk --------------------------------------------------------


async def test_send_to_a_full_mailbox_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    config = make_config(tmp_path, mailbox_quota=5, send_rate=1000.0)
    async with running_broker(config) as broker:
        with trio.fail_after(30):
            async with broker.user("gus") as gus:
                await gus.logout()
            async with broker.user("hal") as hal:
                for i in range(5):
                    await hal.send_text("gus", f"fits {i}")
                with pytest.raises(RequestFailed) as refused:
                    await hal.send_text("gus", "one too many")
                with pytest.raises(RequestFailed) as refused_email:
                    await hal.send_email(["gus"], "s", "b")
                await hal.ping()  # the broker is still up
                await hal.send_text("hal", "a mailbox with room still works")
    assert refused.value.code == "quota_exceeded"
    assert refused_email.value.code == "quota_exceeded"
    db = tmp_path / "mailnet.db"
    assert query(db, "SELECT count(*) FROM messages") == [(6,)]
    assert query(
        db,
        "SELECT count(*) FROM mailbox m JOIN users u ON u.id = m.user_id WHERE u.username = 'gus'",
    ) == [(5,)]


async def test_send_when_the_disk_is_nearly_full_is_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path, min_free_disk_bytes=1 << 62)
    async with running_broker(config) as broker:
        with trio.fail_after(30):
            async with broker.user("ivy") as ivy, broker.user("jon"):
                with pytest.raises(RequestFailed) as refused:
                    await ivy.send_text("jon", "no room", client_msg_id="disk-1")
                await ivy.ping()
    assert refused.value.code == "storage_full"
    assert query(tmp_path / "mailnet.db", "SELECT count(*) FROM messages") == [(0,)]


async def test_quota_refusal_is_not_remembered_as_a_send(tmp_path: Path) -> None:
    """A refused send keeps no idempotency key: the same id succeeds once there is room."""
    config = make_config(tmp_path, mailbox_quota=1, send_rate=1000.0)
    async with running_broker(config) as broker:
        with trio.fail_after(30):
            async with broker.user("kim") as kim:
                await kim.logout()
            async with broker.user("lee") as lee:
                await lee.send_text("kim", "first")
                with pytest.raises(RequestFailed):
                    await lee.send_text("kim", "second", client_msg_id="second")
            async with broker.user("kim") as kim:
                await kim.next_mail()
                await kim.logout()  # acknowledges: room again
            async with broker.user("lee") as lee:
                reply = await lee.send_text("kim", "second", client_msg_id="second")
    assert reply["duplicate"] is False


async def test_quota_holds_when_many_sends_share_one_group_commit(tmp_path: Path) -> None:
    config = make_config(tmp_path, mailbox_quota=5, send_rate=1000.0)
    outcomes: list[str] = []

    async def send(client: Client, i: int) -> None:
        try:
            await client.send_text("mo", f"burst {i}")
            outcomes.append("ok")
        except RequestFailed as exc:
            outcomes.append(exc.code)

    async with running_broker(config) as broker:
        with trio.fail_after(30):
            async with broker.user("mo") as mo:
                await mo.logout()
            async with broker.user("ned") as ned, trio.open_nursery() as nursery:
                for i in range(12):  # all in flight together: one or two batches
                    nursery.start_soon(send, ned, i)
    assert sorted(outcomes) == ["ok"] * 5 + ["quota_exceeded"] * 7
    assert query(tmp_path / "mailnet.db", "SELECT count(*) FROM mailbox") == [(5,)]


def test_the_writer_connection_is_wal_with_full_fsync(tmp_path: Path) -> None:
    """kill -9 cannot lose what the OS already has; power loss can. synchronous=FULL covers it."""
    store = MailStore.open(f"sqlite:///{tmp_path / 'mailnet.db'}")
    try:
        with store.engines.write.connect() as conn:
            journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            synchronous = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    finally:
        store.close()
    assert (journal, synchronous) == ("wal", 2)  # 2 = FULL: fsync at every commit
