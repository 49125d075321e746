"""A broker node on PostgreSQL through database trouble: a re-established LISTEN catches its
live sessions up, and a blip (pg_terminate_backend of the node's connections) ends no live
session; its mail follows once the database answers again."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from sqlalchemy import Engine, create_engine, text

from broker.store import MailStore, SendIntent, SendOutcome
from tests.conftest import make_config, running_broker

PG_URL = os.environ.get("MAILNET_TEST_PG_URL")
pytestmark = pytest.mark.skipif(
    not PG_URL, reason="MAILNET_TEST_PG_URL is not set (a PostgreSQL URL; .ci/run sets it)"
)


class Database:
    """A fresh schema; the node's connections go by an application_name of their own."""

    def __init__(self) -> None:
        assert PG_URL is not None
        self.schema = "mailnet_outage_" + uuid.uuid4().hex[:8]
        self.node_app = self.schema + "_node"
        self.admin: Engine = create_engine(PG_URL)

    def url(self, app: str) -> str:
        assert PG_URL is not None
        separator = "&" if "?" in PG_URL else "?"
        return f"{PG_URL}{separator}options=-csearch_path%3D{self.schema}&application_name={app}"

    def scalar(self, sql: str, **params: object) -> object:
        with self.admin.connect() as conn:
            return conn.execute(text(sql), params).scalar_one()

    def node_backends(self, where: str = "true") -> int:
        return int(  # type: ignore[call-overload]
            self.scalar(
                f"SELECT count(*) FROM pg_stat_activity WHERE application_name = :app AND {where}",
                app=self.node_app,
            )
        )

    def terminate_node_backends(self, where: str = "true") -> int:
        return int(  # type: ignore[call-overload]
            self.scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                f" WHERE application_name = :app AND {where}",
                app=self.node_app,
            )
        )

    async def wait_for_backends(self, where: str) -> None:
        while await trio.to_thread.run_sync(self.node_backends, where) == 0:
            await trio.sleep(0.02)


@pytest.fixture
def database() -> Iterator[Database]:
    made = Database()
    with made.admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {made.schema}"))
    try:
        yield made
    finally:
        with made.admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {made.schema} CASCADE"))
        made.admin.dispose()


LISTENING = "query = 'LISTEN mailnet_mail' AND state = 'idle'"


async def store_text(store: MailStore, sender: str, to: str, body: str) -> SendOutcome:
    """A text committed by another node (it announces the commit, as every node does)."""
    user = store.user_by_name(sender)
    assert user is not None
    intent = SendIntent(user.id, sender, "text", (to,), None, body, None)
    [outcome] = await trio.to_thread.run_sync(store.store_sends, [intent], 1000)
    assert outcome.error_code is None
    return outcome


async def test_a_reestablished_listen_catches_live_sessions_up(
    database: Database, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        node = make_config(tmp_path, db=database.url(database.node_app))
        other_node = MailStore.open(database.url(database.schema + "_other"))
        async with running_broker(node) as a, a.user("alice"), a.user("bob") as bob:
            await database.wait_for_backends(LISTENING)
            try:
                await store_text(other_node, "alice", "bob", "first")
            finally:
                other_node.close()
            assert (await bob.next_mail())["body"] == "first"  # bob's feed is idle now
            # Mail committed with no notice at all, as if its NOTIFY came while LISTEN was down.
            with database.admin.begin() as conn:
                conn.execute(text(f"SET LOCAL search_path TO {database.schema}"))
                conn.execute(
                    text(
                        "INSERT INTO messages (kind, sender_id, recipients, body, created_at)"
                        " SELECT 'text', id, 'bob', 'while deaf', now() FROM users"
                        " WHERE username = 'alice'"
                    )
                )
                conn.execute(
                    text(
                        "INSERT INTO mailbox (user_id, seq, message_id)"
                        " SELECT u.id, 2, max(m.id) FROM users u, messages m"
                        " WHERE u.username = 'bob' GROUP BY u.id"
                    )
                )
                conn.execute(text("UPDATE users SET last_seq = 2 WHERE username = 'bob'"))
            assert database.terminate_node_backends(LISTENING) == 1
            entry = await bob.next_mail()  # once LISTEN is back, without another message
            assert (entry["seq"], entry["body"]) == (2, "while deaf")


async def test_a_database_blip_ends_no_live_session(database: Database, tmp_path: Path) -> None:
    with trio.fail_after(40):
        node = make_config(tmp_path, db=database.url(database.node_app))
        other_node = MailStore.open(database.url(database.schema + "_other"))
        try:
            async with running_broker(node) as a, a.user("alice"), a.user("bob") as bob:
                await store_text(other_node, "alice", "bob", "before")
                assert (await bob.next_mail())["body"] == "before"
                # The next read of bob's feed will hang on a lock this test holds ...
                with database.admin.connect() as holder:
                    holder.execute(text(f"SET search_path TO {database.schema}"))
                    holder.execute(text("LOCK TABLE mailbox IN ACCESS EXCLUSIVE MODE"))
                    bob_id = holder.execute(
                        text("SELECT id FROM users WHERE username = 'bob'")
                    ).scalar_one()
                    with database.admin.begin() as notifier:  # commits: the notice goes out
                        notifier.execute(
                            text("SELECT pg_notify('mailnet_mail', :p)"), {"p": f"{bob_id}:2"}
                        )
                    await database.wait_for_backends("wait_event_type = 'Lock'")
                    # ... when the database drops every connection of the node.
                    assert database.terminate_node_backends() >= 2
                    holder.rollback()
                await store_text(other_node, "alice", "bob", "after")
                entry = await bob.next_mail()  # on the same connection
                assert (entry["seq"], entry["body"]) == (2, "after")
        finally:
            other_node.close()
