"""The embedding pipeline: decode images in a thread pool while the model runs on the batch
before, holding at most a few batches of decoded images at a time.

``iter_embed`` / ``embed`` are the library calls (``mnp.embed``); ``run_batches`` is the engine
under them, under the ``embed`` and ``classify`` commands and under each Dask partition.
Undecodable files are skipped and reported, or stop the run (``on_error``).
Deliberately not here: decoding rules (``preprocess.py``), where results go (``journal.py``,
``outputs.py``), and the commands (``cli.py``).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .errors import ImageError
from .inputs import collect_inputs, text_path
from .load import load

#: Batches decoding ahead of the one the model is running on: enough to keep the model busy,
#: few enough that memory stays at (PREFETCH_BATCHES + 1) batches of decoded images.
PREFETCH_BATCHES = 2
MAX_DEFAULT_WORKERS = 4


@dataclass
class EmbedResult:
    """Features of the images that decoded, in input order, and the ones that did not."""

    paths: list[str]
    features: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)


def iter_embed(inputs, model, batch_size=32, preset=None, on_error="skip", recursive=False,
               progress=None, workers=None, threads=None) -> Iterator[EmbedResult]:
    """Yield one ``EmbedResult`` per ``batch_size`` inputs, in input order.  ``model``: a
    MobileNet, or any source ``mnp.load`` takes.

    ``on_error``: "skip" records undecodable files in ``failures``; "fail" raises their
    ``ImageError``.  ``progress``: a tqdm bar on stderr (None: only if stderr is a terminal).
    ``workers``: decoding threads (default: the CPU count, at most 4).  ``threads``: the
    model's threads (default: the cores the decoders leave, at least one).
    """
    model = load(model) if isinstance(model, (str, os.PathLike)) else model
    items = collect_inputs(inputs, recursive)
    with progress_bar(len(items), enabled=progress) as bar:
        for batch in run_batches(items, model, model, model.num_features, batch_size, preset, on_error, workers,
                                 threads):
            bar.update(len(batch.paths) + len(batch.failures))
            yield batch


def embed(inputs, model, batch_size=32, preset=None, on_error="skip", recursive=False,
          progress=None, workers=None, threads=None) -> EmbedResult:
    """All of ``iter_embed`` at once: features [N, model.num_features] float32."""
    model = load(model) if isinstance(model, (str, os.PathLike)) else model
    batches = list(iter_embed(inputs, model, batch_size, preset, on_error, recursive, progress, workers, threads))
    return concatenate(batches, model.num_features)


def run_batches(items, model, forward, width, batch_size=32, preset=None, on_error="skip",
                workers=None, model_threads=None) -> Iterator[EmbedResult]:
    """The pipeline under ``iter_embed``: ``model.preprocess`` in a thread pool, ``forward``
    (the model itself, or ``model.logits``) on each batch, giving [n, width] rows.

    Decoding a photo costs several times more than the network, and decoding threads and a
    model running wide fight for the same cores (on 2 cores, 2 decoders + a 2-thread model
    embed 1 MP JPEGs ~35 % slower than 2 decoders + a 1-thread model: benchmarks/results/
    embed.md), so by default the model gets the cores the decoders leave, at least one."""
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def decode(item):
        _decoding.path = item.path           # names the file in warnings (``file_warnings``)
        try:
            return model.preprocess(item.source, preset), None
        except ImageError as exc:
            return None, exc
        finally:
            _decoding.path = None

    workers = workers or _default_workers()
    model_threads = model_threads or max(1, (os.cpu_count() or 1) - workers)
    limited = functools.partial(forward, threads=model_threads)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mobilenet-np-decode")
    try:
        for chunk, decoded in _prefetched(pool, decode, items, int(batch_size)):
            yield _run_chunk(chunk, decoded, limited, width, on_error)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _prefetched(pool, decode, items, batch_size):
    """Chunks of items with their decoded results, keeping PREFETCH_BATCHES chunks in flight."""
    in_flight = collections.deque()
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        in_flight.append((chunk, [pool.submit(decode, item) for item in chunk]))
        if len(in_flight) > PREFETCH_BATCHES:
            yield _collect(*in_flight.popleft())
    while in_flight:
        yield _collect(*in_flight.popleft())


def _collect(chunk, futures):
    return chunk, [f.result() for f in futures]


def _run_chunk(chunk, decoded, forward, width, on_error) -> EmbedResult:
    paths, images, failures = [], [], []
    for item, (image, error) in zip(chunk, decoded):
        if error is None:
            paths.append(item.path)
            images.append(image)
        elif on_error == "fail":
            raise error
        else:
            failures.append((item.path, error.reason))
    rows = forward(np.stack(images)) if images else np.empty((0, width), np.float32)
    return EmbedResult(paths, np.asarray(rows, np.float32), failures)


def _default_workers() -> int:
    return min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)


def concatenate(batches, width) -> EmbedResult:
    return EmbedResult(
        paths=[p for b in batches for p in b.paths],
        features=np.concatenate([b.features for b in batches]) if batches else np.empty((0, width), np.float32),
        failures=[f for b in batches for f in b.failures],
    )


_decoding = threading.local()      # the file each decoding thread is working on


@contextlib.contextmanager
def file_warnings(report):
    """For the duration of the block, a warning raised while an image decodes (Pillow's: a
    corrupt EXIF block, a truncated palette...) becomes ``report("warning: <file>: <message>")``,
    naming the file, every time; with ``report=None`` such warnings are silenced (``--quiet``).
    For the command line, which owns its process's warning settings."""
    def show(message, category, filename, lineno, file=None, line=None):
        path = getattr(_decoding, "path", None)
        if report is not None:
            where = text_path(path) if path else f"{filename}:{lineno}"
            report(f"warning: {where}: {' '.join(str(message).split())}")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield


def progress_bar(total: int, enabled=None, initial: int = 0):
    """A tqdm bar (images/s) on stderr; ``enabled=None`` shows it only on a terminal."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if enabled is None else bool(enabled)
    return tqdm(total=total, initial=initial, unit="img", file=sys.stderr, disable=not show, dynamic_ncols=True)
