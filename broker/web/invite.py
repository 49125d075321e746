"""GET /api/invite: the web UI's LAN address and a QR code of it, for a signed-in user to show
someone nearby ("invite someone"). The address comes from broker.lan; nothing here is secret."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker import tls
from broker.config import Config
from broker.core import Broker
from broker.discovery import default_broker_name
from broker.lan import invite_url, qr_svg
from broker.protocol import ProtocolError, RequestRefused

from .auth import authenticate
from .errors import NO_STORE, error_response, internal_error_response

log = logging.getLogger("mailnet.web.invite")


def invite_routes(broker: Broker, config: Config) -> list[Route]:
    name = config.lan_name or default_broker_name()
    fingerprint: str | None = None
    if not config.insecure_plaintext:
        from broker.tls import certificate_paths

        cert, _ = certificate_paths(config)
        fingerprint = tls.certificate_fingerprint(cert.read_bytes())

    def answer(request: Request) -> dict[str, Any]:
        local_host, port = request.scope.get("server") or (request.url.hostname, request.url.port)
        url = invite_url(config, request.url.scheme, str(local_host), int(port or 0))
        if url is None:
            message = (
                "This broker listens on its own computer only: start it with "
                "`mailnet serve --lan` to invite people on your network."
            )
        else:
            message = f"Open {url} on a device on this network (or scan the code)."
            if fingerprint:
                message += f" The certificate's fingerprint is {fingerprint}."
        return {
            "url": url,
            "svg": qr_svg(url) if url else None,
            "name": name,
            "fingerprint": fingerprint,
            "message": message,
        }

    async def invite(request: Request) -> Response:
        try:
            await authenticate(broker, request)
            return JSONResponse(answer(request), headers=NO_STORE)
        except RequestRefused as exc:
            return error_response(exc.code, exc.message, details=exc.details)
        except ProtocolError as exc:
            return error_response(exc.code, exc.message)
        except Exception:
            log.exception("internal error answering GET /api/invite")
            return internal_error_response()

    return [Route("/api/invite", invite, methods=["GET"])]
