"""A real deployment on one machine: broker nodes (`mailnet serve` subprocesses) on one
PostgreSQL database behind HAProxy in TCP mode with the PROXY protocol and health checks.

Used by tests/test_haproxy_cluster.py and scripts/cluster_chaos.py. The HAProxy configuration
is rendered by `haproxy_config`, the same text docs/deploy.md shows (a test compares them).
"""

from __future__ import annotations

import json
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from .process import child_env, free_port

# What every broker node of the chaos run is started with, beyond its addresses: limits that
# a few clients reconnecting after each kill must not trip (they are not an attack).
CHAOS_FLAGS = [
    "--send-rate=1000000",
    "--send-burst=1000000",
    "--heartbeat-timeout=30",
    "--login-slow-after=1000000",
    "--login-max-delay=0",
    "--bcrypt-rounds=4",
]


@dataclass(frozen=True)
class Backend:
    """One node as HAProxy sees it: the TCP port it relays to and the web port it checks."""

    name: str
    host: str
    port: int
    web_port: int


def haproxy_config(
    *, bind: str, backends: list[Backend], health_check: str = "readyz", maxconn: int = 4096
) -> str:
    """HAProxy's configuration for mailnet nodes: TCP mode (TLS passes through to the nodes),
    PROXY protocol v2 to each node, `GET /readyz` on each node's web port as the health check
    (health_check="tcp": a plain connect to the node's TCP port, for nodes without /readyz)."""
    if health_check not in ("readyz", "tcp"):
        raise ValueError(f"unknown health check {health_check!r}")
    lines = [
        "global",
        f"    maxconn {maxconn}",
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 2s",
        "    # Sessions are long-lived; heartbeats keep them well inside these timeouts.",
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout check 2s",
        "    retries 2",
        "    option redispatch",
        "",
        "frontend mailnet",
        f"    bind {bind}",
        "    default_backend mailnet_nodes",
        "",
        "backend mailnet_nodes",
        "    balance leastconn",
    ]
    if health_check == "readyz":
        lines += ["    option httpchk GET /readyz", "    http-check expect status 200"]
    lines.append("    default-server inter 1s fall 2 rise 2 send-proxy-v2")
    for b in backends:
        check = f"check port {b.web_port}" if health_check == "readyz" else "check"
        lines.append(f"    server {b.name} {b.host}:{b.port} {check}")
    return "\n".join(lines) + "\n"


def readyz_status(web_port: int, host: str = "127.0.0.1") -> int | None:
    """The HTTP status of a node's `GET /readyz`; None if its web port does not answer."""
    try:
        with urllib.request.urlopen(f"http://{host}:{web_port}/readyz", timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def health_check_for(web_ports: list[int], timeout: float = 30.0) -> str:
    """ "readyz" if the nodes have the endpoint (waiting until each answers 200), "tcp" if they
    answer 404 (brokers built before /readyz: HAProxy then checks their TCP port)."""
    deadline = time.monotonic() + timeout
    for port in web_ports:
        while (status := readyz_status(port)) != 200:
            if status == 404:
                return "tcp"
            if time.monotonic() > deadline:
                raise RuntimeError(f"/readyz on web port {port} still answers {status}")
            time.sleep(0.1)
    return "readyz"


class NodeProcess:
    """`mailnet serve` on fixed ports in a subprocess, trusting HAProxy on 127.0.0.1; start,
    kill -9, restart. The methods block: call them through trio.to_thread.run_sync."""

    def __init__(
        self, name: str, data_dir: Path, db_url: str, *, extra_flags: list[str] | None = None
    ) -> None:
        self.name = name
        self.data_dir = data_dir
        self.db_url = db_url
        self.port = free_port()
        self.web_port = free_port()
        self.extra_flags = list(extra_flags or [])
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0
        self.kills = 0

    @property
    def backend(self) -> Backend:
        return Backend(self.name, "127.0.0.1", self.port, self.web_port)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "node.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            "from cli.main import main; main()",
            "serve",
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--web-port={self.web_port}",
            f"--db={self.db_url}",
            f"--data-dir={self.data_dir}",
            "--insecure-plaintext",
            "--trusted-proxy=127.0.0.1",
            "--log-level=warning",
            "--json",
            *self.extra_flags,
        ]

    def start(self, timeout: float = 60.0) -> None:
        assert self.proc is None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=child_env(PYTHONUNBUFFERED="1"),
            )
        assert self.proc.stdout is not None
        # The startup summary, once it listens (printed in one write, so select then read).
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            if not ready:
                self.proc.kill()
            code = self.proc.wait(timeout)
            self.proc = None
            raise RuntimeError(
                f"node {self.name} exited {code} before listening:\n{self.log_tail()}"
            )
        json.loads(line)
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: nothing flushed, no presence rows removed, its LISTEN connection cut."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None
        self.kills += 1

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None
    )


class HAProxyProcess:
    """`haproxy -db -f CFG` in the foreground as a child, listening on a 127.0.0.1 port."""

    def __init__(self, config_path: Path, config: str, port: int) -> None:
        self.config_path = config_path
        self.config = config
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.config_path.with_suffix(".log")

    def start(self, timeout: float = 20.0) -> None:
        binary = haproxy_binary()
        if binary is None:
            raise RuntimeError("haproxy is not installed (Debian: apt-get install haproxy)")
        self.config_path.write_text(self.config)
        checked = subprocess.run(
            [binary, "-c", "-f", str(self.config_path)], capture_output=True, text=True
        )
        if checked.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration:\n{checked.stderr}")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-db", "-f", str(self.config_path)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not listen:\n{self.log_path.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def cluster_url(base_url: str, schema: str) -> str:
    """The nodes' URL: a schema of their own, and an application_name naming their backends
    (so a database blip can cut exactly those)."""
    separator = "&" if "?" in base_url else "?"
    return (
        f"{base_url}{separator}options=-csearch_path%3D{schema}"
        f"&application_name={application_name(schema)}"
    )


def application_name(schema: str) -> str:
    return f"mailnet-{schema}"


def terminate_backends(admin_url: str, schema: str) -> int:
    """A database blip: pg_terminate_backend of every connection the nodes on `schema` hold
    (group commits, reads, LISTEN). Returns how many were cut."""
    engine = create_engine(admin_url)
    try:
        with engine.begin() as conn:
            return len(
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": application_name(schema)},
                ).all()
            )
    finally:
        engine.dispose()


def deadlocks(admin_url: str) -> int:
    """pg_stat_database.deadlocks of the database (all its users, not only the nodes)."""
    engine = create_engine(admin_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            ).scalar_one()
            return int(found)
    finally:
        engine.dispose()


class Cluster:
    """N nodes on one database and HAProxy in front of them; a context manager that stops
    everything it started."""

    def __init__(
        self, base: Path, db_url: str, *, nodes: int = 3, extra_flags: list[str] | None = None
    ) -> None:
        self.base = base
        self.db_url = db_url
        self.nodes = [
            NodeProcess(f"node{i + 1}", base / f"node{i + 1}", db_url, extra_flags=extra_flags)
            for i in range(nodes)
        ]
        self.health_check = "tcp"
        self.haproxy: HAProxyProcess | None = None

    @property
    def address(self) -> str:
        assert self.haproxy is not None
        return self.haproxy.address

    def start(self) -> None:
        # The first node alone migrates the empty database (before the `cluster` work, nodes
        # started together could race on alembic_version); the others then start at once.
        self.nodes[0].start()
        for node in self.nodes[1:]:
            node.start()
        self.health_check = health_check_for([n.web_port for n in self.nodes])
        port = free_port()
        config = haproxy_config(
            bind=f"127.0.0.1:{port}",
            backends=[n.backend for n in self.nodes],
            health_check=self.health_check,
        )
        self.haproxy = HAProxyProcess(self.base / "haproxy.cfg", config, port)
        self.haproxy.start()

    def stop(self) -> None:
        if self.haproxy is not None:
            self.haproxy.stop()
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Cluster:
        self.base.mkdir(parents=True, exist_ok=True)
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tails(self) -> str:
        return "\n".join(f"--- {n.name}:\n{n.log_tail()}" for n in self.nodes)
