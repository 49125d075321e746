"""What operators and load balancers see: /healthz, /readyz and /metrics on the web port, the
node's name, and (with several nodes on PostgreSQL) admin listings that span every node."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import trio
from sqlalchemy import create_engine, text

from tests.conftest import make_config, running_broker

WAIT = 20
PG_URL = os.environ.get("MAILNET_TEST_PG_URL")
needs_pg = pytest.mark.skipif(
    not PG_URL, reason="MAILNET_TEST_PG_URL is not set (a PostgreSQL URL; .ci/run sets it)"
)


def sample(metrics: str, name: str) -> float:
    """The value of one sample line of the Prometheus text format (0 if absent)."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def test_healthz_readyz_and_metrics_on_the_web_port(tmp_path: Path) -> None:
    with trio.fail_after(WAIT):
        config = make_config(tmp_path, web_port=0, node_name="node-a")
        async with (
            running_broker(config) as broker,
            httpx.AsyncClient(base_url=broker.info.web[0], timeout=WAIT) as http,
            broker.user("alice") as alice,
            broker.user("bob") as bob,
        ):
            health = await http.get("/healthz")
            assert health.status_code == 200
            assert health.json() == {"status": "alive", "node": "node-a"}
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "ready",
                "node": "node-a",
                "database": True,
                "schema_at_head": True,
                "listening": True,
            }
            await alice.send_text("bob", "one", client_msg_id="k1")
            await alice.send_text("bob", "one", client_msg_id="k1")  # a retry
            await bob.next_mail()
            with pytest.raises(Exception, match="no such user"):
                await alice.send_text("nobody", "lost")
            response = await http.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            metrics = response.text
            sends = 'mailnet_sends_total{kind="text",result="%s"}'
            assert sample(metrics, sends % "stored") == 1
            assert sample(metrics, sends % "duplicate") == 1
            assert sample(metrics, sends % "refused") == 1
            assert sample(metrics, 'mailnet_errors_total{code="unknown_recipient"}') == 1
            assert sample(metrics, 'mailnet_connections{transport="tcp"}') == 2
            assert sample(metrics, 'mailnet_connections{transport="websocket"}') == 0
            assert 'mailnet_connections{transport="websocket"}' in metrics
            assert sample(metrics, "mailnet_live_sessions") == 2
            assert sample(metrics, "mailnet_commit_seconds_count") >= 2
            assert sample(metrics, 'mailnet_node_info{node="node-a"}') == 1
            assert "mailnet_notify_lag_seconds_bucket" in metrics
            assert "mailnet_commit_queue_sends" in metrics


@needs_pg
async def test_readyz_says_not_ready_when_the_schema_is_behind(pg_url: str, tmp_path: Path) -> None:
    with trio.fail_after(WAIT):
        config = make_config(tmp_path, db=pg_url, web_port=0, node_name="node-a")
        async with (
            running_broker(config) as broker,
            httpx.AsyncClient(base_url=broker.info.web[0], timeout=WAIT) as http,
        ):
            while (await http.get("/readyz")).status_code != 200:  # until LISTEN is up
                await trio.sleep(0.05)
            engine = create_engine(pg_url)
            try:
                with engine.begin() as conn:
                    conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
            finally:
                engine.dispose()
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["schema_at_head"] is False
            assert ready.json()["database"] is True


@needs_pg
async def test_admin_sessions_and_users_list_every_nodes_sessions(
    pg_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(WAIT):
        node_a = make_config(tmp_path / "a", db=pg_url, presence_refresh=0.5, node_name="node-a")
        node_b = make_config(tmp_path / "b", db=pg_url, presence_refresh=0.5, node_name="node-b")
        async with (
            running_broker(node_a) as a,
            running_broker(node_b) as b,
            a.user("root") as root,  # the first account: the admin
            b.user("bob"),
            b.user("bob"),
        ):
            while True:
                sessions = await root.admin_sessions()
                if any(s["username"] == "bob" and s["sessions"] == 2 for s in sessions):
                    break  # node B wrote its row for bob's two sessions
                await trio.sleep(0.05)
            by_user = {(s["username"], s["node"]): s for s in sessions}
            assert set(by_user) == {("root", "node-a"), ("bob", "node-b")}
            assert by_user["bob", "node-b"]["client"] == ""  # one line per user and node
            assert by_user["root", "node-a"]["sessions"] == 1
            users = {u["username"]: u["online"] for u in await root.admin_users()}
            assert users == {"root": True, "bob": True}


async def test_serve_names_its_node_in_the_banner_and_every_log_line(tmp_path: Path) -> None:
    from tests.cli_helpers import Expect, cli_env, read_to_end, start_cli, stop

    process = await start_cli(
        "serve",
        "--port",
        "0",
        "--web-port",
        "-1",
        "--insecure-plaintext",
        "--node-name",
        "node-x",
        "--data-dir",
        str(tmp_path / "data"),
        env=cli_env(None, None),
    )
    try:
        banner = await Expect(process.stdout).expect("Stop with Ctrl-C.", timeout=60)
        assert "Node name: node-x" in banner
    finally:
        assert await stop(process) == 0
    lines = (await read_to_end(process.stderr)).splitlines()
    assert any("mailnet listening on" in line for line in lines)
    assert lines and all(" [node-x] " in line for line in lines), lines
