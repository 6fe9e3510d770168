"""The shared request path of both protocols: limits, reading and decompressing the body,
decoding in the pool, batching and timeouts (``Server``), and the small records and helpers the
protocol modules (``tfserving.py``, ``v2.py``) build their answers with.

A request for a model goes: reserve a queue slot (503 + Retry-After when full) -> read the
body (413 past ``max_body_bytes``) -> parse and decode in the decode pool (400 naming the
problem) -> queue the images -> wait for the batch that runs them, all within
``request_timeout_s`` (504).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from dataclasses import dataclass

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from .errors import ServeError, bad_request
from .inputs import DecodePool, decode_image
from .metrics import Metrics
from .models import ServedModel

log = logging.getLogger("mobilenet_np.serve")

#: Bodies up to this size are parsed on the event loop rather than in the decode pool.
INLINE_PARSE_BYTES = 16 * 1024

#: At least this long is given to reading and dropping an unread body before an error answer
#: (a request that timed out while its body was arriving has no time of its own left).
DRAIN_TIMEOUT_S = 10.0

#: Set in the ASGI scope once the handler has read the whole body.
BODY_READ = "mobilenet_np.body_read"


@dataclass
class Settings:
    max_batch: int = 32
    batch_timeout_ms: float = 2.0
    queue_size: int = 64
    max_body_bytes: int = 16 * 2**20
    request_timeout_s: float = 30.0
    threads: int | None = None
    decode_workers: int = 2


@dataclass(frozen=True)
class Encoded:
    """Encoded image bytes found in a request, decoded later in the pool."""
    data: bytes
    where: str


def json_response(content, status: int = 200, headers: dict | None = None) -> Response:
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


class Server:
    """What the protocol handlers share: the models, the decode pool, the settings."""

    def __init__(self, models: dict[str, ServedModel], settings: Settings, metrics: Metrics):
        self.models = models
        self.settings = settings
        self.metrics = metrics
        self.pool = DecodePool(settings.decode_workers)

    def model(self, name: str) -> ServedModel:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ServeError(404, f"unknown model {name!r}; this server has: {known}") from None

    @property
    def ready(self) -> bool:
        return all(m.ready for m in self.models.values())

    async def read_body(self, request: Request) -> bytes:
        """The request body, at most ``max_body_bytes`` (after gzip/deflate decompression)."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        chunks, size = [], 0
        too_large = declared is not None and declared.isdigit() and int(declared) > limit
        async for chunk in request.stream():
            # Past the limit the rest is read and dropped (memory stays bounded; the request
            # timeout bounds the time), so that the client reads the 413 rather than a reset.
            size += len(chunk)
            too_large = too_large or size > limit
            if not too_large:
                chunks.append(chunk)
        request.scope[BODY_READ] = True
        if too_large:
            raise _too_large(limit)
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "deflate"):
            body = _decompress(body, encoding, limit)
        elif encoding not in ("identity", ""):
            raise ServeError(415, f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
        return body

    async def run(self, request: Request, served: ServedModel, parse, json_bytes=None):
        """Parse ``request`` with ``parse(body) -> (list of images or Encoded, outputs wanted,
        context)`` and run the images; returns ([result dict per image], context).
        ``json_bytes(body)``: how much of the body is JSON (default: all of it)."""
        served.require_ready()
        ticket = served.batcher.reserve(1)
        try:
            return await asyncio.wait_for(self._run(request, served, parse, json_bytes, ticket),
                                          self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise ServeError(504, f"the request took longer than {self.settings.request_timeout_s:g} s "
                                  "(--request-timeout-s)") from None
        finally:
            ticket.close()

    async def _run(self, request, served, parse, json_bytes, ticket):
        body = await self.read_body(request)
        # A small body (a binary tensor's JSON header, a few encoded images) parses in
        # microseconds: a trip to the pool and back would cost more than that.
        if (json_bytes(body) if json_bytes else len(body)) <= INLINE_PARSE_BYTES:
            found, outputs, context = parse(body)
        else:
            found, outputs, context = await self.pool.run(parse, body)
        if not found:
            raise bad_request("the request holds no images")
        for output in outputs:
            served.require_output(output)
        ticket.grow(len(found) - 1)
        images = await asyncio.gather(*(self._decode(served, f) for f in found))
        results = await asyncio.gather(*ticket.submit(list(images), outputs))
        return results, context

    async def _decode(self, served: ServedModel, found):
        if isinstance(found, Encoded):
            return await self.pool.run(decode_image, served.model, found.data, found.where)
        return found

    def close(self) -> None:
        for served in self.models.values():
            served.close()
        self.pool.close()


def _too_large(limit: int) -> ServeError:
    return ServeError(413, f"the request body is larger than {limit} bytes (--max-body-bytes)")


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise bad_request(f"the body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise _too_large(limit)
    return out


def stack_results(results: list[dict], output: str) -> np.ndarray:
    return np.stack([r[output] for r in results])
