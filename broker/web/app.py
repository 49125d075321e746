"""The web front of the broker: Starlette app (JSON API, WebSocket, static UI) on hypercorn's
trio worker, in the broker's own nursery, calling the same core as the TCP transport.
"""

from __future__ import annotations

import logging
import ssl
from functools import partial
from pathlib import Path
from typing import Any, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from broker import tls
from broker.config import Config
from broker.core import Broker
from broker.protocol.proxy import trusted_proxies

from .api import HttpApi
from .budget import pre_login_cap
from .errors import NO_STORE, error_response, internal_error_response
from .invite import invite_routes
from .live import LiveSockets, serve_live_socket
from .openapi import openapi_schema
from .ops import ops_routes

log = logging.getLogger("mailnet.web")

STATIC_DIR = Path(__file__).parent / "static"

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds the security headers to every HTTP response, and answers any exception that
    escaped the app with the JSON `internal` error instead of a traceback or a bare 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {name.lower() for name, _ in message.get("headers", [])}
                headers = list(message.get("headers", []))
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("internal error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await internal_error_response()(scope, receive, send_with_headers)


def create_app(broker: Broker, config: Config) -> ASGIApp:
    sockets = LiveSockets(config)
    broker.metrics.watch_connections("websocket", lambda: sockets.limits.open)
    api = HttpApi(broker, config, sockets)
    schema = openapi_schema()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def openapi(request: Request) -> Response:
        return JSONResponse(schema)

    async def service_worker(request: Request) -> Response:
        # Served from / so that its scope covers the page; never cached stale.
        return FileResponse(
            STATIC_DIR / "sw.js",
            media_type="text/javascript",
            headers={"Cache-Control": "no-cache", "Service-Worker-Allowed": "/"},
        )

    async def manifest(request: Request) -> Response:
        return FileResponse(
            STATIC_DIR / "manifest.webmanifest",
            media_type="application/manifest+json",
            headers={"Cache-Control": "no-cache"},
        )

    async def api_docs(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "docs.html", headers={"Cache-Control": "no-cache"})

    async def upgrade_required(request: Request) -> Response:
        return JSONResponse(
            {"error": {"code": "bad_request", "message": "open /api/ws as a WebSocket"}},
            status_code=426,
            headers={"Upgrade": "websocket", "Connection": "Upgrade", **NO_STORE},
        )

    async def live(websocket: WebSocket) -> None:
        await serve_live_socket(broker, config, sockets, websocket)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            return error_response("method_not_allowed", "method not allowed", headers=headers)
        if exc.status_code == 404:
            return error_response("not_found", "no such page", headers=headers)
        return JSONResponse(
            {"error": {"code": "bad_request", "message": str(exc.detail)}},
            status_code=exc.status_code,
            headers=headers,
        )

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        return internal_error_response()

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            *ops_routes(broker),
            Route("/sw.js", service_worker, methods=["GET"]),
            Route("/manifest.webmanifest", manifest, methods=["GET"]),
            Route("/docs", api_docs, methods=["GET"]),
            *api.routes(),
            *invite_routes(broker, config),
            WebSocketRoute("/api/ws", live),
            Route("/api/ws", upgrade_required, methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        exception_handlers={HTTPException: http_error, Exception: unexpected_error},
    )
    app.state.sockets = sockets
    app.state.trusted_proxies = trusted_proxies(config.trusted_proxy)  # see forwarded.py
    return SecurityHeaders(app)


class _HypercornConfig(HypercornConfig):
    """Hypercorn with the broker's own TLS context (TLS 1.2+, the TCP listener's certificate)."""

    broker_ssl_context: ssl.SSLContext | None = None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self.broker_ssl_context


def hypercorn_config(config: Config) -> HypercornConfig:
    hconfig = _HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hconfig.bind = [f"{host}:{config.web_port}"]
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger("mailnet.web.hypercorn")
    # The socket takes only auth, ack and ping: pre-login sized (see budget.py).
    hconfig.websocket_max_message_size = pre_login_cap(config)
    hconfig.h11_max_incomplete_size = 16 * 1024
    hconfig.graceful_timeout = 2.0
    hconfig.alpn_protocols = ["http/1.1"]
    if not config.insecure_plaintext:
        cert, key = tls.certificate_paths(config)
        context = tls.server_ssl_context(cert, key)
        context.set_alpn_protocols(["http/1.1"])
        hconfig.certfile, hconfig.keyfile = str(cert), str(key)
        hconfig.broker_ssl_context = context
    return hconfig


async def serve_web(
    broker: Broker, config: Config, *, task_status: trio.TaskStatus[list[str]]
) -> None:
    """Serve the web UI and API until cancelled; `task_status.started` gets the URLs.

    The broker stops it by cancelling, like its TCP listeners; each WebSocket then closes itself
    with 1001 (see live.py) before hypercorn drops the connection.
    """
    app = create_app(broker, config)
    hconfig = hypercorn_config(config)
    async with trio.open_nursery() as nursery:
        # hypercorn's ASGI types are narrower than Starlette's; the app is plain ASGI 3.
        binds = await nursery.start(partial(hypercorn_serve, cast(Any, app), hconfig))
        urls = [url.rstrip("/") + "/" for url in binds]
        log.info("web UI at %s", ", ".join(urls))
        task_status.started(urls)
