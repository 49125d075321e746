"""The broker's Prometheus metrics: one registry per broker (several may run in one process),
rendered by the web port's /metrics. Gauges are read from the broker's state when scraped."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from broker.protocol import RequestRefused
from broker.store import SendOutcome

__all__ = ["CONTENT_TYPE", "BrokerMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BrokerMetrics:
    def __init__(self, node_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.info = Gauge("mailnet_node_info", "This node (value 1)", ["node"], registry=r)
        self.info.labels(node=node_name).set(1)
        self.connections = Gauge(
            "mailnet_connections",
            "Open client connections, by transport (tcp, websocket)",
            ["transport"],
            registry=r,
        )
        self.live_sessions = Gauge(
            "mailnet_live_sessions", "Live sessions on this node (pushed mail)", registry=r
        )
        self.sends = Counter(
            "mailnet_sends", "Sends answered, by kind and result", ["kind", "result"], registry=r
        )
        self.errors = Counter(
            "mailnet_errors", "Error answers to clients, by error code", ["code"], registry=r
        )
        self.commit_seconds = Histogram(
            "mailnet_commit_seconds",
            "Time from handing a group commit to the store to its outcome",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_queue = Gauge(
            "mailnet_commit_queue_sends", "Sends waiting for the next group commit", registry=r
        )
        self.pending_acks = Gauge(
            "mailnet_pending_acks", "Users whose acknowledgements are not yet written", registry=r
        )
        self.notify_lag = Histogram(
            "mailnet_notify_lag_seconds",
            "From another node's commit to its notice here (clocks of both hosts)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.listening = Gauge(
            "mailnet_listening", "1 when this node hears other nodes' commits", registry=r
        )

    def watch(
        self,
        *,
        live_sessions: Callable[[], float],
        commit_queue: Callable[[], float],
        pending_acks: Callable[[], float],
        listening: Callable[[], float],
    ) -> None:
        """Read these from the broker each time the metrics are scraped."""
        self.live_sessions.set_function(live_sessions)
        self.commit_queue.set_function(commit_queue)
        self.pending_acks.set_function(pending_acks)
        self.listening.set_function(listening)

    def watch_connections(self, transport: str, connections: Callable[[], float]) -> None:
        self.connections.labels(transport=transport).set_function(connections)

    def count_sends(
        self, kinds: Sequence[str], results: Sequence[SendOutcome | RequestRefused]
    ) -> None:
        """Count a group's sends: one increment per label set, not one labels() lookup (a
        dict of its arguments, a lock) per send."""
        counts: dict[tuple[str, str], int] = {}
        for kind, result in zip(kinds, results, strict=True):
            if isinstance(result, RequestRefused):
                key = (kind, "refused")
                self.errors.labels(code=str(result.code)).inc()
            else:
                key = (kind, "duplicate" if result.duplicate else "stored")
            counts[key] = counts.get(key, 0) + 1
        for (kind, result_label), n in counts.items():
            self.sends.labels(kind=kind, result=result_label).inc(n)

    def count_error(self, code: str) -> None:
        self.errors.labels(code=code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
