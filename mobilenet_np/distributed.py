"""Embedding a collection on a Dask cluster: ``embed_on_dask`` and ``embed --dask``.

The inputs are collected as the local embed collects them, then cut into fixed partitions:
partition k holds ``items[k * partition_size : (k + 1) * partition_size]``.  One Dask task
embeds one partition with the in-process pipeline (``pipeline.run_batches``) and, for a
dataset, writes it as ``part-<k>.parquet`` under a temporary name then renames it.  A task
whose worker is killed is rerun by Dask and rewrites its own file, so nothing is doubled;
``resume`` skips the partitions whose file is intact and matches (model, preset, the exact
inputs, row count).  A dataset folder holds:

* ``part-00000.parquet`` ...: columns ``path`` (string) and ``features`` (fixed-size list of
  float32); the footer (key ``mobilenet_np``) holds the partition's identity and its failures.
* ``_failures.jsonl``: one ``{"path": ..., "error": ...}`` object a line.
* ``_manifest.json``: model, weights sha256, preset, package version, counts, the partition
  files in input order; written last, so its presence means the dataset is complete.

The ``_`` and ``.`` prefixes keep the side files out of pyarrow's, Spark's and DuckDB's
(``part-*.parquet``) view of the dataset.  An ``.h5`` / ``.npy`` output is gathered at the end
from partitions staged in ``OUT.parts/`` and written by ``outputs.write_output``, so it is the
file the local embed writes.

The model travels as the bytes of its weights file (``model.save``; a MobileNet object does not
pickle) inside a ``WorkerPlugin``: Dask sends it once to each worker, and again to any worker
that joins or is restarted after a kill (data scattered with ``client.scatter`` is lost when
every worker holding it dies, and a temporary file works only where the workers share a disk
with the caller).  Each worker process builds the model on first use and keeps it, so weights
are read and Numba kernels compiled once per process.  A worker runs one partition at a time
with T = ``threads_per_worker`` (default: its Dask thread count) Numba/BLAS threads and T
decoding threads, as the local ``--threads T`` does, so N workers x T never asks for more
model threads than the cores ``local_cluster`` gave them.

Deliberately not here: decoding, batching and the output formats (``pipeline.py``,
``outputs.py``), the ``embed --dask`` command (``cli.py``), deploying
a cluster (any Dask deployment works; only ``--dask local[:N]`` starts one), and retry
policy (Dask reruns the tasks of a dead worker; ``distributed.scheduler.allowed-failures``).

The dataset folder's files (partition files, footers, manifest, reading it back) are
``dataset.py``'s; this module schedules the partitions and runs them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

try:
    import distributed

    from . import dataset          # pyarrow
except ImportError as exc:
    raise ImportError(f"embedding on Dask needs the 'dask' extra: pip install 'mobilenet-np[dask]' ({exc})") from exc

from . import threads as _threads
from ._version import __version__
from .errors import ImageError
from .inputs import Item, collect_inputs
from .journal import run_identity
from .load import from_file, load
from .model import MobileNet
from .outputs import H5_SUFFIXES, NPY_SUFFIX, check_output_path, write_output
from .pipeline import concatenate, progress_bar, run_batches

#: Inputs per task: the unit of retry and of --resume.  Each partition costs about 50 ms on the
#: 2-core development machine (task round trip, Parquet file, the decoding pipeline refilling),
#: under 1 % of the seconds 1000 images take (benchmarks/results/dask.md).
DEFAULT_PARTITION_SIZE = 1000

STAGING_SUFFIX = ".parts"


@dataclass
class DatasetSummary:
    """What ``embed_on_dask`` wrote: ``rows`` embedded, ``failures`` (path, reason) in input
    order, ``partitions`` in all, ``skipped`` of them found complete (resume), and the number
    of inputs this call ``processed``."""

    output: str
    rows: int
    failures: list[tuple[str, str]]
    partitions: int
    skipped: int
    processed: int


# --- the public entry points -----------------------------------------------------------------


def embed_on_dask(inputs, model, client=None, output=None, partition_size=DEFAULT_PARTITION_SIZE, batch_size=32,
                  preset=None, on_error="skip", threads_per_worker=None, resume=False, recursive=False,
                  progress=None):
    """Embed image files, folders or path lists on a Dask cluster.

    ``model``: a MobileNet, a weights file, a registry name or any source ``mobilenet-np embed``
    reads.  ``client``: a ``distributed.Client`` (default: the current one, else a LocalCluster
    for this call).  ``output``: None returns an ``EmbedResult`` (as ``mnp.embed``); a name
    ending in .h5/.hdf5/.npy writes that file; anything else is a dataset folder.  With an
    output the return value is a ``DatasetSummary``.  ``threads_per_worker``: Numba/BLAS and
    decoding threads per partition (default: each worker's Dask thread count).  ``resume``:
    keep the partitions an earlier run of the same inputs, model and preset finished.
    Other options as the local ``embed``; ``on_error="fail"`` raises the ``ImageError`` of the
    first bad input in input order, keeping the partitions finished before it.
    """
    for name, value in (("partition_size", partition_size), ("batch_size", batch_size)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    if output is not None:
        _check_output(os.fspath(output))
    model = _client_model(model)
    preset = preset or model.default_preset
    items = [Item(i.path, os.path.abspath(i.source)) for i in collect_inputs(inputs, recursive)]
    partitions = [items[start : start + int(partition_size)] for start in range(0, len(items), int(partition_size))]
    job = _Job(plugin=f"mobilenet-np-model-{uuid.uuid4().hex[:12]}", preset=preset, batch_size=int(batch_size),
               on_error=on_error, threads=threads_per_worker, width=model.num_features, folder=None)
    with _client_for(client, threads_per_worker) as client, progress_bar(len(items), progress) as bar:
        if output is None:
            results = _run(client, model, job, dict(enumerate(partitions)), [None] * len(partitions), bar)
            return concatenate([results[k] for k in range(len(partitions))], model.num_features)
        return _embed_to_output(client, model, job, partitions, os.fspath(output), resume, bar)


@contextlib.contextmanager
def local_cluster(n_workers: int | None = None, threads_per_worker: int | None = None):
    """A ``Client`` of a LocalCluster of worker processes (closed on leaving), sized so that
    workers x threads fits the cores: by default as many 1-thread workers as cores."""
    cores = os.cpu_count() or 1
    threads = threads_per_worker or max(1, cores // (n_workers or cores))
    n_workers = n_workers or max(1, cores // threads)
    if n_workers * threads > cores:
        raise ValueError(f"{n_workers} worker(s) x {threads} thread(s) would oversubscribe the {cores} cores")
    with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=threads, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        yield client


def client_for_address(address: str, threads: int | None):
    """A client of the scheduler at ``address``, or of a new LocalCluster for local[:N]."""
    if address != "local" and not address.startswith("local:"):
        return distributed.Client(address)
    workers = address.partition(":")[2] if ":" in address else "1"
    if not (workers.isdigit() and int(workers) >= 1):
        raise ValueError(f"--dask {address}: expected local or local:N with N >= 1 workers")
    return local_cluster(int(workers) if ":" in address else None, threads)


@contextlib.contextmanager
def _client_for(client, threads_per_worker):
    """``client``; else the current Dask client; else a LocalCluster for the duration."""
    if client is None:
        try:
            client = distributed.default_client()
        except ValueError:
            with local_cluster(threads_per_worker=threads_per_worker) as client:
                yield client
            return
    yield client


# --- the client side -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """What every task of one run needs besides its partition."""

    plugin: str
    preset: str
    batch_size: int
    on_error: str
    threads: int | None
    width: int
    folder: str | None


def _check_output(output: str) -> None:
    """Refuse an output before any work: bad file names, missing folders, a file in the way."""
    if output.lower().endswith(H5_SUFFIXES + (NPY_SUFFIX,)):
        check_output_path(output)
    elif os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(f"--output {output}: exists and is not a folder (a dataset is a folder of Parquet files)")
    elif not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise ValueError(f"--output {output}: folder {os.path.dirname(os.path.abspath(output))} does not exist")


def _client_model(model) -> MobileNet:
    return model if isinstance(model, MobileNet) else load(os.fspath(model))


def _embed_to_output(client, model, job, partitions, output, resume, bar) -> DatasetSummary:
    """Run the partitions that are not done yet into a dataset folder, then finish the output."""
    single_file = output.lower().endswith(H5_SUFFIXES + (NPY_SUFFIX,))
    folder = os.path.abspath(output + STAGING_SUFFIX if single_file else output)  # as the workers see it
    job = dataclasses.replace(job, folder=folder)
    dataset.prepare_folder(folder, resume)
    identities = [_partition_identity(model, job.preset, k, items) for k, items in enumerate(partitions)]
    done = {k for k, items in enumerate(partitions) if resume and dataset.finished(folder, k, items, identities[k])}
    bar.update(sum(len(partitions[k]) for k in done))
    todo = {k: items for k, items in enumerate(partitions) if k not in done}
    _run(client, model, job, todo, identities, bar)
    rows, failures = dataset.check_partitions(folder, partitions, identities)
    summary = DatasetSummary(output, rows, failures, len(partitions), len(done), sum(map(len, todo.values())))
    dataset.remove_leftovers(folder, len(partitions))
    attrs = {"model": model.name, "weights_sha256": model.weights_sha256, "preset": job.preset,
             "package_version": __version__}
    if not rows:  # as the local embed: no output
        dataset.clear_dataset(folder)
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    elif single_file:
        write_output(output, dataset.Gathered(folder, len(partitions), job.width, rows, failures), attrs)
        shutil.rmtree(folder)
    else:
        dataset.write_manifest(folder, model, attrs, summary)
    return summary


def _run(client, model, job, todo: dict[int, list[Item]], identities, bar) -> dict:
    """Run ``todo``'s partitions on the cluster with the model shipped in a worker plugin;
    each task's return value by partition number."""
    if not todo:
        return {}
    client.register_plugin(_ModelPlugin(_weights_bytes(model), model.backend.name), name=job.plugin)
    futures = {}
    try:
        for k, items in todo.items():
            futures[client.submit(_embed_partition, k, items, identities[k], job,
                                  key=f"{job.plugin}-partition-{k}")] = k
        return _results(client, futures, {k: len(items) for k, items in todo.items()}, bar)
    finally:
        client.cancel(list(futures))
        client.unregister_worker_plugin(job.plugin)


def _results(client, futures: dict, sizes: dict[int, int], bar) -> dict:
    """Wait for the tasks; on a failure, cancel the partitions after it and raise the error of
    the first failing partition in input order once those before it have finished."""
    results, first_failure = {}, None
    for future in distributed.as_completed(futures):
        k = futures[future]
        if future.cancelled():
            continue
        if future.status == "error":
            failure = future.exception()
        else:
            result = future.result()
            failure = ImageError(*result) if isinstance(result, _BadInput) else None
        if failure is None:
            results[k] = result
            bar.update(sizes[k])
        elif first_failure is None or k < first_failure[0]:
            first_failure = (k, failure)
            client.cancel([f for f, j in futures.items() if j > k])
    if first_failure is not None:
        raise first_failure[1]
    return results


def _weights_bytes(model: MobileNet) -> bytes:
    with tempfile.TemporaryDirectory(prefix="mobilenet-np-") as tmp:
        path = os.path.join(tmp, "model.h5")
        model.save(path)
        return Path(path).read_bytes()


def _partition_identity(model, preset, k, items) -> dict:
    return {"partition": k, **run_identity(model, preset, items)}


# --- the worker side -------------------------------------------------------------------------

#: A worker with T Dask threads runs one partition at a time with T Numba/BLAS threads: two
#: partitions side by side would fight over the same cores and over the process-wide BLAS setting.
_ONE_PARTITION_AT_A_TIME = threading.Lock()


class _BadInput(NamedTuple):
    """An ``ImageError`` as a return value: the exception does not survive pickling."""

    path: str
    reason: str


class _ModelPlugin(distributed.WorkerPlugin):
    """A weights file's bytes, on every worker; the model is built from them on first use."""

    def __init__(self, weights: bytes, backend: str):
        self.weights, self.backend = weights, backend
        self._model = None

    def model(self) -> MobileNet:
        if self._model is None:
            with tempfile.TemporaryDirectory(prefix="mobilenet-np-") as tmp:
                path = Path(tmp, "model.h5")
                path.write_bytes(self.weights)
                self._model = from_file(path, backend=self.backend)
        return self._model


def _embed_partition(k: int, items: list[Item], identity: dict, job: _Job):
    """The task: embed one partition; write it (dataset) or return its ``EmbedResult``."""
    with _ONE_PARTITION_AT_A_TIME:
        worker = distributed.get_worker()
        model = worker.plugins[job.plugin].model()
        threads = job.threads or worker.state.nthreads
        try:
            with _threads.limit(threads):
                batches = list(run_batches(items, model, model, job.width, job.batch_size, job.preset,
                                           job.on_error, threads, threads))
        except ImageError as exc:
            return _BadInput(exc.path, exc.reason)
        result = concatenate(batches, job.width)
        if job.folder is None:
            return result
        dataset.write_partition(job.folder, k, result, identity, job.width)
        return None
