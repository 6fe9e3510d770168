"""The ASGI application: the Starlette app that mounts the TF Serving (``tfserving.py``) and
Open Inference Protocol v2 (``v2.py``) routes over the shared request path (``server.py``),
``/metrics``, and the error handlers.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import tfserving, v2
from .errors import ServeError
from .metrics import Metrics, MetricsMiddleware
from .models import ServedModel, start_warm_up
from .server import BODY_READ, DRAIN_TIMEOUT_S, Server, Settings, json_response, log

async def _drain(request: Request) -> None:
    """Read and drop a body the handler did not read, before an error answer: a client still
    sending gets the answer (a 503, a 404) rather than a connection reset.  Bounded in size and
    time; the connection is closed beyond."""
    if request.scope.get(BODY_READ) or request.method in ("GET", "HEAD"):
        return
    server = request.app.state.server

    async def consume():
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > server.settings.max_body_bytes:
                return

    with contextlib.suppress(Exception):
        await asyncio.wait_for(consume(), max(server.settings.request_timeout_s, DRAIN_TIMEOUT_S))


async def _serve_error(request: Request, exc: ServeError) -> Response:
    await _drain(request)
    return json_response({"error": exc.message}, exc.status, exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error answering %s %s", request.method, request.url.path)
    return json_response({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)


async def _not_found(request: Request, exc) -> Response:
    await _drain(request)
    status = getattr(exc, "status_code", 404)
    detail = getattr(exc, "detail", "") or "not found"
    return json_response({"error": f"{request.method} {request.url.path}: {detail}"}, status)


def build_app(models: dict[str, ServedModel], settings: Settings, metrics: Metrics, warm_up: bool = True):
    """The Starlette app serving ``models`` (already loaded; warmed up in the background from
    startup on, unless ``warm_up`` is False)."""
    server = Server(models, settings, metrics)

    async def metrics_endpoint(request: Request) -> Response:
        for served in models.values():
            metrics.queue_depth.labels(served.name).set(served.batcher.depth())
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if warm_up:
            start_warm_up(models)
        yield
        server.close()
        by_status: dict[str, int] = {}
        for family in metrics.requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    status = sample.labels["status"]
                    by_status[status] = by_status.get(status, 0) + int(sample.value)
        log.info("stopped: answered %d requests (%s); every accepted request was finished",
                 sum(by_status.values()), ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items())) or "none")

    routes = [*tfserving.routes(server), *v2.routes(server), Route("/metrics", metrics_endpoint)]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ServeError: _serve_error, 404: _not_found, 405: _not_found,
                                        Exception: _unexpected})
    app.state.server = server
    return MetricsMiddleware(app, metrics, models)
