"""Dynamic batching: one queue and one worker thread per model.

Requests reserve queue slots *before* their bodies are parsed (``Batcher.reserve``), so the
images held in memory are bounded by the queue size, and a full queue is refused at once
(503 with ``Retry-After``) instead of waiting.  A slot is released when its image leaves the
queue for a batch, or when the request gives up (bad body, timeout).

The worker takes the oldest image, then waits until ``max_batch`` images of the same shape
and dtype are queued or ``timeout_s`` has passed since that oldest image arrived (and only
while other requests are still being read or decoded: with none, there is nothing to wait
for), and runs them as one batch.  Images of other shapes stay queued, in order, for the next batch.  The
engine's feature vectors do not depend on the batch (tests/test_serve_batching.py checks
it), so a batched image gets the vector ``model(x)`` gives it alone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .errors import ServeError, unavailable

log = logging.getLogger("mobilenet_np.serve")


@dataclass(eq=False)
class Item:
    """One image waiting for the model; ``future`` is resolved on the request's event loop."""
    image: np.ndarray
    outputs: frozenset
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    @property
    def key(self):
        return self.image.shape, self.image.dtype


class Ticket:
    """A request's reserved queue slots.  ``grow`` reserves more, ``submit`` queues images
    (using slots), ``close`` gives back the slots not used and cancels images still queued."""

    def __init__(self, batcher: "Batcher", slots: int):
        self._batcher = batcher
        self.slots = slots
        self.items: list[Item] = []

    def grow(self, n: int) -> None:
        if n > 0:
            self._batcher._reserve(n)
            self.slots += n

    def submit(self, images: list[np.ndarray], outputs: frozenset) -> list[asyncio.Future]:
        self.grow(len(images) - self.slots)
        loop = asyncio.get_running_loop()
        items = [Item(image, outputs, loop.create_future(), loop) for image in images]
        self.slots -= len(items)
        self.items.extend(items)
        self._batcher._put(items)
        return [item.future for item in items]

    def close(self) -> None:
        self._batcher._cancel(self.items, self.slots)
        self.slots = 0


class Batcher:
    """Runs ``infer(batch, items) -> list of per-image results`` on batches, in its own thread."""

    def __init__(self, name: str, infer, *, max_batch: int, timeout_s: float, capacity: int, metrics=None):
        if max_batch < 1 or capacity < 1:
            raise ValueError(f"max batch and queue size must be >= 1, got {max_batch} and {capacity}")
        self.name = name
        self.max_batch = max_batch
        self.timeout_s = max(0.0, timeout_s)
        self.capacity = capacity
        self._infer = infer
        self._metrics = metrics
        self._cond = threading.Condition()
        self._queue: deque[Item] = deque()
        self._reserved = 0  # slots held by tickets plus images queued
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"mobilenet-np-batcher-{name}", daemon=True)
        self._thread.start()

    # --- used by the event loop -------------------------------------------------------------

    def reserve(self, n: int = 1) -> Ticket:
        """Reserve ``n`` slots or raise a 503 ``ServeError`` (with ``Retry-After``)."""
        self._reserve(n)
        return Ticket(self, n)

    def depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self) -> None:
        """Run every queued image, then stop the worker (no new reservations from now on)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def _reserve(self, n: int) -> None:
        with self._cond:
            if self._closing:
                raise unavailable(f"model {self.name!r} is shutting down")
            if n > self.capacity:
                raise ServeError(413, f"the request has {n} images; this server queues at most "
                                      f"{self.capacity} per model (--queue-size)")
            if self._reserved + n > self.capacity:
                raise unavailable(f"the queue of model {self.name!r} is full ({self.capacity} images); "
                                  "try again shortly")
            self._reserved += n

    def _put(self, items: list[Item]) -> None:
        with self._cond:
            self._queue.extend(items)
            self._gauge()
            self._cond.notify_all()

    def _cancel(self, items: list[Item], unused_slots: int) -> None:
        with self._cond:
            for item in items:
                if not item.future.done():
                    item.cancelled = True
            queued = [item for item in items if item.cancelled and item in self._queue]
            for item in queued:
                self._queue.remove(item)
            self._reserved -= unused_slots + len(queued)
            self._gauge()
            self._cond.notify_all()

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.labels(self.name).set(len(self._queue))

    # --- the worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run_batch(batch)

    def _next_batch(self) -> list[Item] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            first = self._queue[0]
            deadline = first.arrived + self.timeout_s
            # Wait for more only while some request holds slots it has not queued yet (its
            # body is being read or decoded): with none, waiting adds latency and no images.
            while not self._closing and self._count(first.key) < self.max_batch and self._preparing():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [item for item in self._queue if item.key == first.key][: self.max_batch]
            for item in batch:
                self._queue.remove(item)
            self._reserved -= len(batch)
            self._gauge()
            return batch

    def _preparing(self) -> int:
        return self._reserved - len(self._queue)

    def _count(self, key) -> int:
        return sum(1 for item in self._queue if item.key == key)

    def _run_batch(self, batch: list[Item]) -> None:
        started = time.perf_counter()
        if self._metrics is not None:
            self._metrics.running.labels(self.name).set(len(batch))
        try:
            results = self._infer(np.stack([item.image for item in batch]), batch)
        except Exception as exc:  # one failing batch must not stop the worker
            if self._metrics is not None:
                self._metrics.running.labels(self.name).set(0)
            log.exception("model %s: a batch of %d failed", self.name, len(batch))
            error = ServeError(500, f"inference failed: {type(exc).__name__}: {exc}")
            for item in batch:
                item.loop.call_soon_threadsafe(_settle, item.future, None, error)
            return
        if self._metrics is not None:
            self._metrics.running.labels(self.name).set(0)
            self._metrics.batch_size.labels(self.name).observe(len(batch))
            self._metrics.batch_seconds.labels(self.name).observe(time.perf_counter() - started)
        for item, result in zip(batch, results):
            item.loop.call_soon_threadsafe(_settle, item.future, result, None)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # the request timed out meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
