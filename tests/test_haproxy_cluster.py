"""A real deployment: HAProxy (TCP mode, PROXY protocol v2, health checks) in front of three
`mailnet serve` nodes on one PostgreSQL schema, and a chaos run through it: random nodes
SIGKILLed and restarted, the nodes' database connections cut, while clients keep sending and
receiving through HAProxy only. Set MAILNET_CLUSTER_CHAOS_KILLS / _BLIPS to lengthen it
(scripts/cluster_chaos.py runs a long one). Then live sessions through HAProxy across database
blips: none dropped silently, each pushed the mail sent to it after the blip, on any node."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio
from sqlalchemy import create_engine, text

from bench.cluster_chaos import ClusterChaosRun
from bench.deployment import (
    CHAOS_FLAGS,
    Backend,
    Cluster,
    HAProxyProcess,
    cluster_url,
    deadlocks,
    haproxy_binary,
    haproxy_config,
    terminate_backends,
)
from bench.process import free_port
from broker.client import BrokerUnreachable, Client, RequestFailed, Trust, connect
from broker.protocol.proxy import NEED_MORE, ProxyHeader, read_proxy_header

PG_URL = os.environ.get("MAILNET_TEST_PG_URL")
DEPLOY_DOC = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
needs_pg = pytest.mark.skipif(
    not PG_URL, reason="MAILNET_TEST_PG_URL is not set (a PostgreSQL URL; .ci/run sets it)"
)
needs_haproxy = pytest.mark.skipif(
    haproxy_binary() is None, reason="haproxy is not installed (.ci/run installs it)"
)


def doc_block(language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DEPLOY_DOC.read_text(), re.S)
    assert len(blocks) == 1, f"docs/deploy.md should hold one ```{language} block"
    return str(blocks[0])


def test_deploy_doc_shows_the_haproxy_configuration_the_test_runs() -> None:
    # The doc's example: three nodes on 10.0.0.11-13, TCP port 7878, web port 8080.
    rendered = haproxy_config(
        bind="0.0.0.0:7878",
        backends=[Backend(f"node{i}", f"10.0.0.1{i}", 7878, 8080) for i in (1, 2, 3)],
    )
    assert doc_block("haproxy") == rendered


@pytest.fixture
def schema() -> Iterator[str]:
    """A fresh PostgreSQL schema for the cluster, dropped afterwards."""
    assert PG_URL is not None
    name = "mailnet_haproxy_" + uuid.uuid4().hex[:8]
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {name}"))
    try:
        yield name
    finally:
        with admin.begin() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :app AND pid <> pg_backend_pid()"
                ),
                {"app": f"mailnet-{name}"},
            )
            conn.execute(text(f"DROP SCHEMA {name} CASCADE"))
        admin.dispose()


async def sessions_seen_from(address: str, source: str, name: str) -> list[dict]:  # type: ignore[type-arg]
    """Log in as admin `name` through HAProxy from a socket bound to `source`, and return
    `admin sessions` as that node reports it (the node lists its own sessions)."""
    host, port = address.rsplit(":", 1)
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    async with trio.open_nursery() as nursery:
        client = Client(stream, nursery)
        nursery.start_soon(client._reader)
        try:
            await client.login(name, "chaos-password")
            return await client.admin_sessions()
        finally:
            await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()


@pytest.mark.slow
@needs_pg
@needs_haproxy
async def test_chaos_through_haproxy_loses_and_duplicates_nothing(
    schema: str, tmp_path: Path
) -> None:
    assert PG_URL is not None
    kills = int(os.environ.get("MAILNET_CLUSTER_CHAOS_KILLS", "6"))
    blips = int(os.environ.get("MAILNET_CLUSTER_CHAOS_BLIPS", "3"))
    deadlocks_before = deadlocks(PG_URL)
    with Cluster(tmp_path, cluster_url(PG_URL, schema), extra_flags=CHAOS_FLAGS) as cluster:
        run = ClusterChaosRun(
            cluster, PG_URL, schema, kills=kills, blips=blips, seed=10, max_per_sender=1500
        )
        try:
            with trio.fail_after(60 + 15 * (kills + blips)):
                report = await run.run()
                # PROXY protocol in use: a client on 127.0.0.2 is seen as 127.0.0.2 by the
                # node, though the node's TCP peer is HAProxy on 127.0.0.1.
                seen = await sessions_seen_from(cluster.address, "127.0.0.2", "user0")
            verdict = run.verify()
            problems = run.delivery_problems()
        finally:
            run.close()
        context = (
            f"health check {cluster.health_check}; {report.summary()}; blips={run.blips_done} "
            f"backends_cut={run.backends_cut}; errors={dict(report.error_codes)}; "
            f"PostgreSQL deadlocks meanwhile: {deadlocks(PG_URL) - deadlocks_before}\n"
            f"{verdict.summary()}\n{cluster.log_tails()}"
        )
        # Rows of other nodes carry no address (docs/protocol.md, admin_sessions).
        addresses = [s["address"] for s in seen if s["username"] == "user0" and s["address"]]
        assert addresses == ["127.0.0.2"], (
            seen,
            context,
        )
    print(context.split("\n--- ")[0])  # the figures, with -s
    assert report.kills == kills and run.blips_done == blips, context
    assert run.backends_cut > 0, context  # the blips did cut the nodes' connections
    assert report.error_codes["internal"] == 0, context
    assert report.acked == report.sent > 0, context
    assert not report.failures and not report.id_mismatches, context
    assert verdict.lost == 0 and verdict.duplicated == 0, context
    assert verdict.ok, (verdict.seq_problems, context)
    assert problems == [], (problems, context)
    assert sum(len(r) for r in run.received.values()) == verdict.mailbox_rows, context


class StandInNode:
    """What HAProxy sees of a node, without a database: a TCP port that reads the PROXY v2
    header and answers with the node's name and the client address it names, and a web port
    whose `GET /readyz` answers 200 or 503 as `ready` says."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ready = True
        self.port = 0
        self.web_port = 0

    async def start(self, nursery: trio.Nursery) -> None:
        tcp = await nursery.start(partial(trio.serve_tcp, self._relayed, 0, host="127.0.0.1"))
        web = await nursery.start(partial(trio.serve_tcp, self._web, 0, host="127.0.0.1"))
        self.port = tcp[0].socket.getsockname()[1]
        self.web_port = web[0].socket.getsockname()[1]

    async def _relayed(self, stream: trio.SocketStream) -> None:
        data = b""
        while (header := read_proxy_header(data)) is NEED_MORE:
            chunk = await stream.receive_some()
            if not chunk:
                return
            data += chunk
        assert isinstance(header, ProxyHeader)
        client = header.client[0] if header.client else "-"
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(f"{self.name} {header.version} {client}\n".encode())
        await stream.aclose()

    async def _web(self, stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = await stream.receive_some()
            if not chunk:
                return
            request += chunk
        ok = request.startswith(b"GET /readyz ") and self.ready
        status = b"200 OK" if ok else b"503 Service Unavailable"
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        await stream.aclose()


async def relayed_to(address: str, source: str) -> str:
    """Which stand-in node a new connection through HAProxy from `source` reaches, and what
    its PROXY header said: "NAME VERSION CLIENT"."""
    host, port = address.rsplit(":", 1)
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect((host, int(port)))
    async with trio.SocketStream(sock) as stream:
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = await stream.receive_some()
            if not chunk:
                return ""
            reply += chunk
        return reply.decode().strip()


async def wait_routed_only_to(address: str, name: str) -> None:
    """Until ten connections in a row reach `name` (HAProxy has taken the others out)."""
    in_a_row = 0
    while in_a_row < 10:
        reply = await relayed_to(address, "127.0.0.2")
        in_a_row = in_a_row + 1 if reply.startswith(name + " ") else 0
        await trio.sleep(0.05)


@needs_haproxy
async def test_haproxy_sends_proxy_v2_and_routes_by_readyz(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nodes = [StandInNode("node1"), StandInNode("node2")]
            for node in nodes:
                await node.start(nursery)
            nodes[0].ready = False
            port = free_port()
            config = haproxy_config(
                bind=f"127.0.0.1:{port}",
                backends=[Backend(n.name, "127.0.0.1", n.port, n.web_port) for n in nodes],
            )
            haproxy = HAProxyProcess(tmp_path / "haproxy.cfg", config, port)
            try:
                await trio.to_thread.run_sync(haproxy.start)
                # The client's own address (127.0.0.2) arrives in a v2 header, though the
                # node's TCP peer is HAProxy on 127.0.0.1.
                await wait_routed_only_to(haproxy.address, "node2")
                assert await relayed_to(haproxy.address, "127.0.0.2") == "node2 2 127.0.0.2"
                # node2 stops being ready and node1 becomes ready: the traffic follows /readyz.
                nodes[0].ready, nodes[1].ready = True, False
                await wait_routed_only_to(haproxy.address, "node1")
            finally:
                haproxy.stop()  # not in a thread: it must run when fail_after cancels
            nursery.cancel_scope.cancel()


async def send_until_stored(sender: Client, to: str, body: str, cmid: str) -> dict:  # type: ignore[type-arg]
    """Send, resending with the same client_msg_id while the store answers `unavailable` (the
    blip's aftermath); any other error fails the test."""
    while True:
        try:
            return await sender.send_text(to, body, client_msg_id=cmid)
        except RequestFailed as exc:
            assert exc.code == "unavailable", f"sending to {to} after a blip: {exc}"
            await trio.sleep(0.1)
        except BrokerUnreachable as exc:
            raise AssertionError(
                f"the sender's session was dropped ({exc}): {sender.errors}"
            ) from None


async def pushed_after_blip(client: Client, body: str) -> str | None:
    """What went wrong for a live receiver that should be pushed `body`, or None."""
    with trio.move_on_after(15):
        try:
            entry = await client.next_mail()
        except BrokerUnreachable as exc:
            told = [f["error"]["code"] for f in client.errors if "error" in f]
            return None if told else f"dropped silently: {exc}"
        return None if entry["body"] == body else f"got {entry['body']!r}"
    return "not pushed its mail in 15 s"


@pytest.mark.slow
@needs_pg
@needs_haproxy
async def test_database_blips_drop_no_live_session_silently_behind_haproxy(
    schema: str, tmp_path: Path
) -> None:
    """Live sessions spread over three nodes by HAProxy outlive pg_terminate_backend of all the
    nodes' connections: each keeps its connection and is pushed the mail sent to it afterwards
    (through whichever node the sender is on), or is told why it was closed."""
    assert PG_URL is not None
    receivers = [f"r{i}" for i in range(6)]
    with Cluster(tmp_path, cluster_url(PG_URL, schema), extra_flags=CHAOS_FLAGS) as cluster:
        with trio.fail_after(120):
            for name in ["sender", *receivers]:
                async with connect(cluster.address, trust=Trust.plaintext()) as client:
                    await client.login(name, "chaos-password", create=True)
            async with contextlib.AsyncExitStack() as stack:
                live: dict[str, Client] = {}
                for name in ["sender", *receivers]:
                    client = await stack.enter_async_context(
                        connect(cluster.address, trust=Trust.plaintext())
                    )
                    await client.login(name, "chaos-password")
                    live[name] = client
                # Which receivers share the sender's node (the admin sees its node's sessions):
                # mail to them is pushed in-process, to the others through LISTEN/NOTIFY.
                local = {s["username"] for s in await live["sender"].admin_sessions()}
                where = {n: "sender's node" if n in local else "another node" for n in receivers}
                problems: list[str] = []
                for blip in range(3):
                    assert terminate_backends(PG_URL, schema) > 0
                    for name in receivers:
                        await send_until_stored(
                            live["sender"], name, f"after blip {blip}", f"{name}-{blip}"
                        )
                    for name in receivers:
                        problem = await pushed_after_blip(live[name], f"after blip {blip}")
                        if problem:
                            problems.append(f"blip {blip}: {name} ({where[name]}) {problem}")
                    if problems:
                        break
        assert problems == [], "\n".join([*problems, cluster.log_tails()])
