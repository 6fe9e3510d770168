"""The models a server holds: each one loaded once, warmed up, and fed by its own batcher.

A ``ServedModel`` is LOADING until its warm-up batch has run (the first call compiles the
Numba kernels, or loads them from Numba's on-disk cache), then AVAILABLE; the TF Serving status,
``/v2/models/{name}/ready`` and ``/v2/health/ready`` report that state.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

import mobilenet_np as mnp

from .batching import Batcher
from .errors import ServeError, unavailable

log = logging.getLogger("mobilenet_np.serve")

FEATURES = "features"
LOGITS = "logits"


class ServedModel:
    def __init__(self, name: str, source: str, model, *, max_batch: int, timeout_s: float, capacity: int,
                 threads: int | None, metrics=None):
        self.name = name
        self.source = source
        self.model = model
        self.threads = threads
        self.state = "LOADING"
        self.error: str | None = None
        self.warmup_seconds: float | None = None
        self.outputs = (FEATURES, LOGITS) if model.num_classes else (FEATURES,)
        self._metrics = metrics
        self.batcher = Batcher(name, self._infer, max_batch=max_batch, timeout_s=timeout_s, capacity=capacity,
                               metrics=metrics)

    @property
    def ready(self) -> bool:
        return self.state == "AVAILABLE"

    def describe(self) -> str:
        m = self.model
        height, width = m.input_size
        return (f"{self.name} = {self.source}: {m.name}, input {height}x{width}, {m.num_features} features, "
                + (f"{m.num_classes} classes" if m.num_classes else "no classifier"))

    def require_ready(self) -> None:
        if self.state == "LOADING":
            raise unavailable(f"model {self.name!r} is warming up (compiling its kernels); try again shortly", 2)
        if self.state != "AVAILABLE":
            raise ServeError(500, f"model {self.name!r} failed to start: {self.error}")

    def require_output(self, output: str) -> None:
        if output not in self.outputs:
            if output == LOGITS:
                raise ServeError(400, f"model {self.name!r} has no classifier (feature-vector weights "
                                      "only), so it has no logits")
            raise ServeError(400, f"model {self.name!r} has no output {output!r}; outputs: {', '.join(self.outputs)}")

    def warm_up(self) -> None:
        """One lone image and one full batch at the model's input size (both kernel paths),
        then AVAILABLE.  Runs in a background thread while the server already listens."""
        started = time.perf_counter()
        try:
            x = np.full((self.batcher.max_batch, *self.model.input_size, 3), 0.5, np.float32)
            for batch in (x[:1], x):
                self._infer(batch, None)
        except Exception as exc:
            self.state, self.error = "END", f"{type(exc).__name__}: {exc}"
            log.exception("model %s: warm-up failed", self.name)
        else:
            self.warmup_seconds = time.perf_counter() - started
            self.state = "AVAILABLE"
            log.info("model %s ready: warm-up took %.1f s (first calls compile the Numba kernels or "
                     "load them from the on-disk cache)", self.name, self.warmup_seconds)
        if self._metrics is not None:
            self._metrics.model_ready.labels(self.name).set(1 if self.ready else 0)

    def _infer(self, batch: np.ndarray, items) -> list[dict]:
        features = self.model(batch, threads=self.threads)
        wanted = [self.model.num_classes > 0 and (items is None or LOGITS in item.outputs)
                  for item in (items or [None] * len(batch))]
        # model.classify computes each row on its own: the same logits as the image alone
        logits = self.model.classify(features[wanted]) if any(wanted) else None
        results, row = [], 0
        for i in range(len(batch)):
            result = {FEATURES: features[i]}
            if wanted[i]:
                result[LOGITS] = logits[row]
                row += 1
            results.append(result)
        return results

    def close(self) -> None:
        self.batcher.close()


def load_models(specs: list[tuple[str, str]], **options) -> dict[str, ServedModel]:
    """``mnp.load`` every (name, source); the caller starts the warm-ups."""
    served = {}
    for name, source in specs:
        started = time.perf_counter()
        model = mnp.load(source)
        served[name] = ServedModel(name, source, model, **options)
        log.info("loaded %s in %.1f s", served[name].describe(), time.perf_counter() - started)
    return served


def start_warm_up(served: dict[str, ServedModel]) -> threading.Thread:
    """Warm the models up one after the other in a background thread."""
    def run():
        for model in served.values():
            model.warm_up()
        if served and all(m.ready for m in served.values()):
            log.info("all %d model(s) ready", len(served))
    thread = threading.Thread(target=run, name="mobilenet-np-warm-up", daemon=True)
    thread.start()
    return thread
