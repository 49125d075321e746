"""Several broker nodes sharing one PostgreSQL database: mail sent through one node reaches
users connected to another, live and offline, exactly once."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from sqlalchemy import create_engine, text

from tests.conftest import make_config, running_broker

PG_URL = os.environ.get("MAILNET_TEST_PG_URL")
pytestmark = pytest.mark.skipif(
    not PG_URL, reason="MAILNET_TEST_PG_URL is not set (a PostgreSQL URL; .ci/run sets it)"
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose connections use a fresh schema of their own, dropped afterwards."""
    assert PG_URL is not None
    schema = "mailnet_nodes_" + uuid.uuid4().hex[:8]
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


async def test_text_sent_on_one_node_is_pushed_live_on_another(pg_url: str, tmp_path: Path):
    with trio.fail_after(30):
        node_a = make_config(tmp_path / "a", db=pg_url)
        node_b = make_config(tmp_path / "b", db=pg_url)
        async with running_broker(node_a) as a, running_broker(node_b) as b:
            async with a.user("alice") as alice, b.user("bob") as bob:
                sent = await alice.send_text("bob", "across nodes")
                entry = await bob.next_mail()
                assert entry["message_id"] == sent["message_id"]
                assert (entry["sender"], entry["body"], entry["seq"]) == ("alice", "across nodes", 1)
                await alice.send_email(["bob"], "second", "still live")
                entry = await bob.next_mail()
                assert (entry["subject"], entry["seq"]) == ("second", 2)
                assert bob.duplicates_dropped == 0


async def test_offline_mail_and_retries_are_shared_by_all_nodes(pg_url: str, tmp_path: Path):
    with trio.fail_after(30):
        node_a = make_config(tmp_path / "a", db=pg_url)
        node_b = make_config(tmp_path / "b", db=pg_url)
        async with running_broker(node_a) as a, running_broker(node_b) as b:
            async with b.user("carol"):
                pass  # carol exists, and is offline from now on
            async with a.user("alice") as alice_a, b.user("alice") as alice_b:
                first = await alice_a.send_text("carol", "one", client_msg_id="retry-1")
                again = await alice_b.send_text("carol", "one", client_msg_id="retry-1")
                assert again["message_id"] == first["message_id"]
                assert again["duplicate"] is True
                await alice_b.send_text("carol", "two")
            async with b.client() as carol:
                await carol.login("carol", "password1")
                got = [await carol.next_mail(), await carol.next_mail()]
                assert [e["body"] for e in got] == ["one", "two"]
                assert [e["seq"] for e in got] == [1, 2]
                inbox = await carol.inbox()
                assert len(inbox["entries"]) == 2
