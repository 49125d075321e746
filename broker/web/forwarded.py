"""The web client's real address behind a balancer: X-Forwarded-For from trusted proxies only.

A request whose TCP peer is in `--trusted-proxy` is attributed to the address its
X-Forwarded-For header names (the right-most entry not itself a trusted proxy); from any other
peer the header is ignored, since anyone can write one. The address found counts for the
connection limits, the login throttle and the logs, as the TCP listener's PROXY header does.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from broker.protocol.proxy import TrustedProxies


def forwarded_client(connection: HTTPConnection, peer: str) -> str:
    app = connection.scope.get("app")
    trusted = getattr(getattr(app, "state", None), "trusted_proxies", None)
    if not isinstance(trusted, TrustedProxies) or not trusted:
        return peer
    # Several X-Forwarded-For headers read as one list, in the order they came.
    header = ",".join(connection.headers.getlist("x-forwarded-for"))
    return trusted.forwarded_for(peer, header)
