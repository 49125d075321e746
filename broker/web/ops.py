"""Routes for operators and load balancers on the web port: /healthz (the process answers),
/readyz (it can serve: database, schema, commit notices) and /metrics (Prometheus)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.core import Broker
from broker.core.metrics import CONTENT_TYPE

NO_CACHE = {"Cache-Control": "no-store"}


def ops_routes(broker: Broker) -> list[Route]:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive", "node": broker.node_name}, headers=NO_CACHE)

    async def readyz(request: Request) -> Response:
        checks = await broker.readiness()
        ready = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "node": broker.node_name, **checks},
            status_code=200 if ready else 503,
            headers=NO_CACHE,
        )

    async def metrics(request: Request) -> Response:
        return Response(broker.metrics.render(), media_type=CONTENT_TYPE, headers=NO_CACHE)

    return [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
