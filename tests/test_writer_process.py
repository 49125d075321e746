"""Group commits in a child process (`send_writer = "process"`, the default on SQLite).

- the child's outcomes are exactly those of `MailStore.store_sends` in this process, for every
  kind of outcome (stored, duplicate, in-batch retry, unknown recipient, blocked, prank opt-out,
  quota, announcement);
- a child that dies between batches is replaced; one that dies during a batch fails that batch
  with StoreUnavailable, and its retry is stored exactly once;
- a broker in process mode serves sends end to end and leaves no child behind when it stops.

The kill -9 chaos test (tests/test_durability.py) runs brokers in this mode too.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
import trio
from conftest import make_config, running_broker

from bench.process import WRITER_COMMAND, child_pids, proc_stat
from broker.store import MailStore, SendIntent, StoreUnavailable, WriterProcess, migrate

USERS = ("alice", "bob", "carol", "dave", "erin")


def fresh_store(path: Path) -> MailStore:
    store = MailStore.open(f"sqlite:///{path}")
    migrate.upgrade(store.engines.write)
    ids = {name: store.create_user(name, "hash").id for name in USERS}
    store.add_block(ids["carol"], ids["dave"])  # carol blocks dave
    store.set_prank_opt_out(ids["erin"], True)
    return store


def intent(
    sender: str,
    kind: str,
    to: tuple[str, ...],
    cid: str | None,
    body: str = "hi",
    in_reply_to: int | None = None,
):
    return SendIntent(
        sender_id=USERS.index(sender) + 1,
        sender=sender,
        kind=kind,
        recipients=to,
        subject="s" if kind in ("email", "announcement") else None,
        body=body,
        client_msg_id=cid,
        in_reply_to=in_reply_to,
    )


BATCHES = [
    [
        intent("alice", "text", ("bob",), "a1"),
        intent("alice", "email", ("bob", "carol"), "a2"),
        intent("alice", "text", ("bob",), "a1"),  # an in-batch retry
        intent("bob", "text", ("nobody",), "b1"),  # unknown recipient
        intent("dave", "text", ("carol",), "d1"),  # blocked: stored, delivered to no one
        intent("bob", "rickroll", ("erin",), "b2"),  # opted out
        intent("carol", "announcement", (), None),
    ],
    [
        intent("alice", "text", ("bob",), "a1"),  # a retry in a later batch
        intent("bob", "text", ("alice",), None),
        intent("erin", "text", ("alice",), "e1", body="x" * 1000),
        intent("carol", "text", ("alice",), "c1"),  # alice's mailbox is now full (quota 3)
    ],
    [
        intent("bob", "text", ("carol",), "b3", in_reply_to=2),  # a reply (message 7)
        intent("erin", "text", ("carol",), "e2", in_reply_to=2),  # erin never saw message 2
    ],
    [intent("carol", "text", ("dave",), "c2", in_reply_to=7)],  # a reply to the reply
]


def comparable(outcomes):
    """Outcomes without the commit time, which differs between two stores by nature."""
    return [
        (
            o.message_id,
            o.duplicate,
            o.error_code,
            o.error_message,
            [(d.user_id, d.username, d.entry.__class__, _entry(d.entry)) for d in o.deliveries],
        )
        for o in outcomes
    ]


def _entry(entry):
    fields = {name: getattr(entry, name) for name in entry._fields}
    assert fields.pop("sent_at").tzinfo is not None
    return fields


def test_the_child_gives_the_outcomes_store_sends_gives(tmp_path: Path) -> None:
    here = fresh_store(tmp_path / "here.db")
    there = fresh_store(tmp_path / "there.db")
    writer = WriterProcess(f"sqlite:///{tmp_path / 'there.db'}")
    try:
        for batch in BATCHES:
            expected = here.store_sends(batch, 3)
            got = writer.store_sends(batch, 3)
            assert comparable(got) == comparable(expected)
            sent_at = {d.entry.sent_at for o in got for d in o.deliveries}
            assert len(sent_at) == 1  # one commit, one timestamp
        kinds = {o.error_code for batch in BATCHES for o in here.store_sends(batch, 3)}
        assert {"unknown_recipient", "prank_refused", "quota_exceeded", "not_found"} <= kinds
    finally:
        writer.close()
        here.close()
    dump = (  # all but created_at
        "SELECT id, kind, sender_id, recipients, subject, body, client_msg_id, in_reply_to,"
        " thread_id FROM messages ORDER BY id"
    )
    with (
        closing(sqlite3.connect(tmp_path / "here.db")) as a,
        closing(sqlite3.connect(tmp_path / "there.db")) as b,
    ):
        rows_here = list(a.execute(dump))
        rows_there = list(b.execute(dump))
    assert len(rows_there) == 8
    assert rows_there[6][-2:] == (2, 2) and rows_there[7][-2:] == (7, 2)  # the thread of 2
    assert rows_there == rows_here[: len(rows_there)]
    there.close()


def test_the_send_writer_setting_picks_a_committer_and_both_commit_alike(tmp_path: Path) -> None:
    from broker.core.commits import choose_committer

    results = {}
    for send_writer in ("thread", "process"):
        store = fresh_store(tmp_path / f"{send_writer}.db")
        committer = choose_committer(store, make_config(tmp_path, send_writer=send_writer))
        assert isinstance(committer, WriterProcess) == (send_writer == "process")
        try:
            committer.start()
            results[send_writer] = [
                comparable(committer.outcomes(batch, committer.commit(batch, 3)))
                for batch in BATCHES
            ]
        finally:
            committer.close()
            store.close()
    assert results["thread"] == results["process"]
    with pytest.raises(ValueError, match="send_writer"):
        choose_committer(store, make_config(tmp_path, send_writer="fork"))


def test_a_dead_child_is_replaced_and_a_batch_it_took_down_is_stored_once(
    tmp_path: Path,
) -> None:
    store = fresh_store(tmp_path / "m.db")
    writer = WriterProcess(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        writer.start()
        first = writer.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)  # dies between batches: the next batch goes to a new one
        wait_until_dead(first)
        (stored,) = writer.store_sends([intent("alice", "text", ("bob",), "k1")], 100)
        assert stored.error_code is None and stored.message_id is not None
        assert writer.pid != first and writer.started == 2

        # Dies while it holds a batch: that batch fails (the senders are told nothing), and a
        # retry with the same ids is stored exactly once, whether or not the batch committed.
        os.kill(writer.pid, signal.SIGSTOP)  # type: ignore[arg-type]
        killer = _kill_soon(writer.pid)  # type: ignore[arg-type]
        with pytest.raises(StoreUnavailable):
            writer.store_sends([intent("alice", "text", ("bob",), "k2")], 100)
        killer.join()
        (retried,) = writer.store_sends([intent("alice", "text", ("bob",), "k2")], 100)
        assert retried.error_code is None
        assert writer.started == 3
    finally:
        writer.close()
        store.close()
    with closing(sqlite3.connect(tmp_path / "m.db")) as db:
        assert db.execute(
            "SELECT client_msg_id, count(*) FROM messages GROUP BY client_msg_id ORDER BY 1"
        ).fetchall() == [("k1", 1), ("k2", 1)]


def wait_until_dead(pid: int) -> None:
    """Until the kernel has ended the process (a zombie: dead, its sockets closed). The leader
    turns zombie before its other threads (the WAL checkpointer's) have exited, and the sockets
    close with the last of them: wait for the leader to be alone too."""
    for _ in range(1000):
        if proc_stat(pid)[0] == "Z" and os.listdir(f"/proc/{pid}/task") == [str(pid)]:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} still alive after SIGKILL")


def _kill_soon(pid: int):  # type: ignore[no-untyped-def]
    import threading

    def kill() -> None:
        time.sleep(0.5)  # the batch is on the pipe by then
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


def writer_children() -> set[int]:
    """This process's writer children (found in /proc, as an admin's `ps` would)."""
    return set(child_pids(os.getpid(), WRITER_COMMAND))


async def test_a_broker_commits_through_its_child_and_stops_it(tmp_path: Path) -> None:
    before = writer_children()
    config = make_config(tmp_path, send_writer="process")
    async with running_broker(config) as broker:
        children = writer_children() - before
        assert len(children) == 1
        with trio.fail_after(20):
            async with broker.user("alice") as alice, broker.user("bob") as bob:
                acks = [await alice.send_text("bob", f"#{n}") for n in range(5)]
                got = [await bob.next_mail() for _ in range(5)]
        assert [g["message_id"] for g in got] == [a["message_id"] for a in acks]
        assert [g["body"] for g in got] == [f"#{n}" for n in range(5)]
    assert not writer_children() & children  # stopped and reaped, not left running


def test_an_unknown_send_writer_is_refused(tmp_path: Path) -> None:
    from broker.core import Broker

    store = fresh_store(tmp_path / "m.db")
    try:
        with pytest.raises(ValueError, match="send_writer"):
            Broker(store, make_config(tmp_path, send_writer="fork"))
    finally:
        store.close()


def test_a_child_that_cannot_start_is_an_error_at_once(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    writer = WriterProcess(f"sqlite:///{tmp_path / 'file' / 'm.db'}")
    with pytest.raises(StoreUnavailable, match="could not start"):
        writer.start()
    assert writer.pid is None  # nothing left running
