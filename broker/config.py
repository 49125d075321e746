"""The broker's settings: one typed Config with documented defaults, overridable from MAILNET_*."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import platformdirs

ENV_PREFIX = "MAILNET_"
# The values the two choice settings take (the core checks them; the CLI offers them).
REGISTRATION_POLICIES = ("open", "closed", "invite")
SEND_WRITERS = ("process", "thread")


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("mailnet", appauthor=False))


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 7878
    web_port: int = 8080  # -1 turns the web UI off
    db: str = ""  # a SQLAlchemy URL; empty means data_dir/mailnet.db
    data_dir: Path = field(default_factory=default_data_dir)
    heartbeat_timeout: float = 30.0
    # TLS: on by default with a self-signed certificate kept in data_dir/tls.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure_plaintext: bool = False
    allow_plaintext_on_network: bool = False
    # Limits (docs/security.md explains each one).
    max_frame_bytes: int = 1024 * 1024
    # Before login: the largest frame (a login is a few hundred bytes; also the largest web
    # login body and WebSocket message), and the bytes all such connections may hold together.
    max_pre_login_frame_bytes: int = 16 * 1024
    pre_login_buffer_bytes: int = 8 * 1024 * 1024
    login_timeout: float = 10.0
    max_connections: int = 1000
    max_connections_per_ip: int = 50
    send_rate: float = 50.0  # sends per second per user, sustained
    send_burst: int = 200
    mailbox_quota: int = 100_000  # entries per mailbox
    min_free_disk_bytes: int = 50 * 1024 * 1024
    login_failures_per_hour: int = 100  # per account; never more, whoever asks
    login_slow_after: int = 5  # recent failures before attempts are spaced out
    login_max_delay: float = 30.0  # the longest spacing between attempts on one account/IP
    registration: str = "open"  # open | closed | invite
    invite_ttl: float = 7 * 24 * 3600.0  # seconds an invite code stays valid
    # With several nodes on one database: how often each node closes live sessions whose login
    # another node revoked (kick, disable, password change).
    revoked_session_check: float = 5.0
    # ... and how often each node rewrites its rows of who is online there (`who` and presence
    # span all nodes); the rows expire after three of these, so a node that dies without
    # cleaning up has its users go offline that much later.
    presence_refresh: float = 5.0
    # How often the broker removes mailbox entries past the retention an admin set for their
    # kind (`mailnet admin retention`); only entries already acknowledged by their owner.
    retention_sweep: float = 3600.0
    bcrypt_rounds: int = 12
    max_in_flight_per_connection: int = 256
    # Where SQLite group commits run: "process" (a child process beside the broker, so
    # commits do not compete with the event loop for one interpreter lock) or "thread".
    # PostgreSQL always commits from a thread.
    send_writer: str = "process"
    # `mailnet serve --lan`: listen on every interface and advertise the broker by mDNS
    # (broker/discovery.py) under lan_name (empty: this computer's name).
    lan: bool = False
    lan_name: str = ""
    # Balancers whose PROXY protocol headers (TCP port) and X-Forwarded-For headers (web port)
    # are believed: addresses or CIDR networks, comma-separated (--trusted-proxy, repeatable).
    trusted_proxy: str = ""
    # This node's name in every log line, in `admin sessions`/`users`, /metrics and the
    # database's pg_stat_activity (application_name); empty means the host name.
    node_name: str = ""

    @property
    def db_url(self) -> str:
        if self.db:
            return self.db
        return f"sqlite:///{self.data_dir / 'mailnet.db'}"

    @property
    def node(self) -> str:
        return self.node_name or socket.gethostname()

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_timeout / 3

    def with_env(self, environ: dict[str, str] | None = None) -> Config:
        """A copy with every field named MAILNET_<FIELD> in the environment applied."""
        environ = dict(os.environ if environ is None else environ)
        changes: dict[str, Any] = {}
        for f in fields(self):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            current = getattr(self, f.name)
            try:
                if f.name in ("tls_cert", "tls_key"):
                    changes[f.name] = Path(raw)
                elif isinstance(current, bool):
                    changes[f.name] = raw.lower() in ("1", "true", "yes", "on")
                elif isinstance(current, int):
                    changes[f.name] = int(raw)
                elif isinstance(current, float):
                    changes[f.name] = float(raw)
                elif isinstance(current, Path):
                    changes[f.name] = Path(raw)
                else:
                    changes[f.name] = raw
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not valid") from None
        return replace(self, **changes)


class ConfigError(Exception):
    """The broker cannot start with this configuration; the message says why."""
