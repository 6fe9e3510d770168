"""Embedding and classifying many image files, and the ``embed`` / ``classify`` commands.

``iter_embed`` / ``embed`` walk the inputs (image files, folders, list files), decode images in
a thread pool while the model runs on the previous batch, and hold at most a few batches of
decoded images at a time.  Undecodable files are skipped and reported, or stop the run.

The ``embed`` command writes its .h5 or .npy output atomically (a temporary file in the same
folder, then ``os.replace``) and keeps an append-only journal beside it: one checksummed record
per finished batch, flushed to disk.  After a crash or a SIGKILL at any moment, the same
command with ``--resume`` drops a torn last record, continues with the next unrecorded input,
and writes the same file an uninterrupted run would have written.

Deliberately not here: decoding rules (preprocess.py), the network (model.py), the other
commands (cli.py calls ``register_cli``), and any search or clustering over the features.
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import json
import os
import struct
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image

from .atomic import write_atomically
from .errors import ImageError
from .preprocess import PRESETS

#: Files given on the command line with these suffixes are lists of image paths, one a line.
LIST_SUFFIXES = (".txt", ".lst")

#: Inside folders, files are images when Pillow can open their extension.
IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)

#: Batches decoding ahead of the one the model is running on: enough to keep the model busy,
#: few enough that memory stays at (PREFETCH_BATCHES + 1) batches of decoded images.
PREFETCH_BATCHES = 2
MAX_DEFAULT_WORKERS = 4

EXIT_OK, EXIT_PARTIAL, EXIT_FAILURE = 0, 1, 2
EXIT_INTERRUPTED = 130
EXIT_STATUS_HELP = """exit status:
  0  every input was embedded (classified)
  1  partial success: some inputs could not be decoded and were skipped (--on-error skip)
  2  failure: nothing embedded, a bad input with --on-error fail, or bad arguments"""


class Item(NamedTuple):
    """One input image: ``path`` as recorded in the output, ``source`` as opened."""

    path: str
    source: str


@dataclass
class EmbedResult:
    """Features of the images that decoded, in input order, and the ones that did not."""

    paths: list[str]
    features: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)


# --- inputs ---------------------------------------------------------------------------------


def collect_inputs(inputs, recursive: bool = False) -> list[Item]:
    """The images named by ``inputs``, in order: files as given; folders' images (by extension,
    sorted, recorded relative to the folder; ``recursive`` descends into sub-folders); and the
    lines of ``.txt`` / ``.lst`` list files (relative lines resolved against the list's folder,
    recorded as written).  Missing files are kept: they fail, with a reason, when decoded."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items = []
    for given in map(os.fspath, inputs):
        if os.path.isdir(given):
            items += _folder_items(given, recursive)
        elif given.lower().endswith(LIST_SUFFIXES) and os.path.isfile(given):
            items += _list_items(given)
        else:
            items.append(Item(given, given))
    return items


def _folder_items(root: str, recursive: bool) -> list[Item]:
    found = []
    for folder, subfolders, files in os.walk(root):
        # Without recursion a sub-folder named like an image is an input that fails, not a
        # silent omission; with recursion it is a folder to descend into.
        names = files if recursive else files + subfolders
        found += [os.path.relpath(os.path.join(folder, n), root) for n in names if _is_image_name(n)]
        if not recursive:
            break
    found.sort(key=lambda rel: rel.split(os.sep))
    return [Item(rel.replace(os.sep, "/"), os.path.join(root, rel)) for rel in found]


def _list_items(list_file: str) -> list[Item]:
    base = os.path.dirname(list_file)
    with open(list_file, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [Item(line, os.path.join(base, line)) for line in lines if line]


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# --- the pipeline ---------------------------------------------------------------------------


def iter_embed(inputs, model, batch_size=32, preset=None, on_error="skip", recursive=False,
               progress=None, workers=None, threads=None) -> Iterator[EmbedResult]:
    """Yield one ``EmbedResult`` per ``batch_size`` inputs, in input order.

    ``on_error``: "skip" records undecodable files in ``failures``; "fail" raises their
    ``ImageError``.  ``progress``: a tqdm bar on stderr (None: only if stderr is a terminal).
    ``workers``: decoding threads (default: the CPU count, at most 4).  ``threads``: the
    model's threads (default: the cores the decoders leave, at least one).
    """
    items = collect_inputs(inputs, recursive)
    with progress_bar(len(items), enabled=progress) as bar:
        for batch in run_batches(items, model, model, model.num_features, batch_size, preset, on_error, workers,
                                 threads):
            bar.update(len(batch.paths) + len(batch.failures))
            yield batch


def embed(inputs, model, batch_size=32, preset=None, on_error="skip", recursive=False,
          progress=None, workers=None, threads=None) -> EmbedResult:
    """All of ``iter_embed`` at once: features [N, model.num_features] float32."""
    batches = list(iter_embed(inputs, model, batch_size, preset, on_error, recursive, progress, workers, threads))
    return _concatenate(batches, model.num_features)


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
        try:
            return model.preprocess(item.source, preset), None
        except ImageError as exc:
            return None, exc

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


def _concatenate(batches, width) -> EmbedResult:
    return EmbedResult(
        paths=[p for b in batches for p in b.paths],
        features=np.concatenate([b.features for b in batches]) if batches else np.empty((0, width), np.float32),
        failures=[f for b in batches for f in b.failures],
    )


def progress_bar(total: int, enabled=None, initial: int = 0):
    """A tqdm bar (images/s) on stderr; ``enabled=None`` shows it only on a terminal."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if enabled is None else bool(enabled)
    return tqdm(total=total, initial=initial, unit="img", file=sys.stderr, disable=not show, dynamic_ncols=True)


# --- the journal ----------------------------------------------------------------------------

_JOURNAL_MAGIC = b"mobilenet-np embed journal 1\n"
_RECORD = struct.Struct("<4sQI")  # tag, payload length, CRC-32 of the payload
_RECORD_TAG = b"REC1"
_META_LENGTH = struct.Struct("<I")


class Journal:
    """Append-only record of the finished batches of one ``embed`` run.

    Layout: a magic line, a record holding the run's identity (model, preset, the ordered
    inputs), then one record per batch: the length of a JSON part (paths, failures), the
    JSON, then the float32 features.  Each record carries its length and CRC-32 and is flushed and
    fsynced before the next batch starts, so a torn or garbled tail is detected on reading
    and cut off; everything before it is intact.
    """

    def __init__(self, path: str, identity: dict, width: int, resume: bool):
        self.path, self.width = path, width
        self.items_done, self.rows, self.failures = 0, 0, []
        self._identity = json.dumps(identity, sort_keys=True).encode()
        self.resumed = resume and os.path.exists(path) and self._replay()
        if not self.resumed:
            self._file = open(path, "w+b")
            self._file.write(_JOURNAL_MAGIC)
            self._append(self._identity)
            self._data_start = self._file.tell()

    def _replay(self) -> bool:
        """Read an existing journal; False if it is unusable (then the run starts over)."""
        self._file = open(self.path, "r+b")
        if self._file.read(len(_JOURNAL_MAGIC)) != _JOURNAL_MAGIC:
            self._file.close()
            return False
        records = _read_records(self._file)
        identity = next(records, None)
        if identity is None:
            self._file.close()
            return False
        if identity[1] != self._identity:
            self._file.close()
            raise ValueError(f"{self.path} was written by a different run (model, preset or inputs differ); "
                             "delete it or run without --resume")
        self._data_start = good_end = identity[0]
        for good_end, payload in records:
            self._count(_decode_batch(payload, self.width))
        self._file.truncate(good_end)  # a torn last record
        self._file.seek(good_end)
        return True

    def append(self, batch: EmbedResult) -> None:
        self._append(_encode_batch(batch))
        self._count(batch)

    def batches(self) -> Iterator[EmbedResult]:
        """The recorded batches from the start, checksums verified."""
        self._file.seek(self._data_start)
        rows = 0
        for _, payload in _read_records(self._file):
            batch = _decode_batch(payload, self.width)
            rows += len(batch.paths)
            yield batch
        if rows != self.rows:
            raise RuntimeError(f"{self.path}: {rows} rows readable of the {self.rows} written; "
                               "the journal was changed during the run")

    def close(self) -> None:
        self._file.close()

    def remove(self) -> None:
        self.close()
        os.remove(self.path)

    def _count(self, batch: EmbedResult) -> None:
        self.items_done += len(batch.paths) + len(batch.failures)
        self.rows += len(batch.paths)
        self.failures += batch.failures

    def _append(self, payload: bytes) -> None:
        self._file.write(_RECORD.pack(_RECORD_TAG, len(payload), zlib.crc32(payload)) + payload)
        self._file.flush()
        os.fsync(self._file.fileno())


def _read_records(f) -> Iterator[tuple[int, bytes]]:
    """(end offset, payload) of each intact record from the current position; stops at the
    first short, garbled or checksum-failing one."""
    size = os.fstat(f.fileno()).st_size
    while True:
        head = f.read(_RECORD.size)
        if len(head) < _RECORD.size:
            return
        tag, length, crc = _RECORD.unpack(head)
        if tag != _RECORD_TAG or length > size - f.tell():
            return
        payload = f.read(length)
        if zlib.crc32(payload) != crc:
            return
        yield f.tell(), payload


def _encode_batch(batch: EmbedResult) -> bytes:
    meta = json.dumps({"paths": batch.paths, "failures": batch.failures}).encode()
    return _META_LENGTH.pack(len(meta)) + meta + np.ascontiguousarray(batch.features, "<f4").tobytes()


def _decode_batch(payload: bytes, width: int) -> EmbedResult:
    (meta_length,) = _META_LENGTH.unpack_from(payload)
    meta = json.loads(payload[_META_LENGTH.size : _META_LENGTH.size + meta_length])
    features = np.frombuffer(payload, "<f4", offset=_META_LENGTH.size + meta_length).reshape(-1, width)
    return EmbedResult(meta["paths"], features.astype(np.float32), [tuple(f) for f in meta["failures"]])


def run_identity(model, preset: str, items: list[Item]) -> dict:
    """What makes two runs "the same command" for ``--resume``."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(os.fsencode(item.path) + b"\0" + os.fsencode(item.source) + b"\0")
    return {"model": model.name, "weights_sha256": model.weights_sha256, "preset": preset,
            "input_size": list(model.input_size), "inputs_sha256": digest.hexdigest()}


# --- outputs --------------------------------------------------------------------------------

H5_SUFFIXES = (".h5", ".hdf5")
NPY_SUFFIX = ".npy"


def check_output_path(path: str) -> None:
    if not path.lower().endswith(H5_SUFFIXES + (NPY_SUFFIX,)):
        raise ValueError(f"--output {path}: the name must end in .h5, .hdf5 or .npy")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ValueError(f"--output {path}: folder {folder} does not exist")


def write_output(path: str, journal: Journal, attrs: dict) -> None:
    """Write the journal's batches to ``path`` (.h5: everything; .npy: features, with
    ``.paths.txt`` and ``.failed.txt`` beside), each file replaced atomically."""
    if path.lower().endswith(NPY_SUFFIX):
        stem = path[: -len(NPY_SUFFIX)]
        paths = (_text(p) for batch in journal.batches() for p in batch.paths)
        failures = (f"{_text(p)}\t{reason}" for p, reason in journal.failures)
        write_atomically(f"{stem}.paths.txt", lambda tmp: _write_lines(tmp, paths))
        write_atomically(f"{stem}.failed.txt", lambda tmp: _write_lines(tmp, failures))
        write_atomically(path, lambda tmp: _write_npy(tmp, journal))  # last: its presence means complete
    else:
        write_atomically(path, lambda tmp: _write_h5(tmp, journal, attrs))


def _write_h5(tmp: str, journal: Journal, attrs: dict) -> None:
    import h5py

    text = h5py.string_dtype("utf-8")
    with h5py.File(tmp, "w") as f:
        features = f.create_dataset("features", (journal.rows, journal.width), np.float32)
        paths = f.create_dataset("paths", (journal.rows,), text)
        row = 0
        for batch in journal.batches():
            end = row + len(batch.paths)
            features[row:end] = batch.features
            paths[row:end] = [_text(p) for p in batch.paths]
            row = end
        failed = journal.failures
        f.create_dataset("failed_paths", data=np.array([_text(p) for p, _ in failed], dtype=object), dtype=text)
        f.create_dataset("failed_errors", data=np.array([r for _, r in failed], dtype=object), dtype=text)
        f.attrs.update(attrs)


def _write_npy(tmp: str, journal: Journal) -> None:
    features = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(journal.rows, journal.width))
    row = 0
    for batch in journal.batches():
        features[row : row + len(batch.paths)] = batch.features
        row += len(batch.paths)
    features.flush()
    del features


def _write_lines(tmp: str, lines) -> None:
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{line}\n" for line in lines)


def _text(path: str) -> str:
    """A path as UTF-8-safe text (undecodable file-name bytes become backslash escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


# --- labels ---------------------------------------------------------------------------------

BACKGROUND_LABEL = "background"


def class_names(num_classes: int, labels_offset: int, labels_file=None) -> list[str]:
    """Names for the model's classes: the lines of ``labels_file`` (a 1001-line list with
    'background' first; a 1000-line list is accepted too), or the class indices as text."""
    if labels_file is None:
        return [str(i) for i in range(num_classes)]
    with open(labels_file, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) == num_classes - labels_offset:
        names = [BACKGROUND_LABEL] * labels_offset + names
    elif len(names) == num_classes + 1 and labels_offset == 0:
        names = names[1:]
    if len(names) != num_classes:
        raise ValueError(f"{labels_file}: {len(names)} labels for a model with {num_classes} classes")
    return names


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and softmax probabilities (computed in float64) of the k largest logits per row."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probabilities, order, axis=1)


# --- the commands ---------------------------------------------------------------------------


def register_cli(subparsers) -> None:
    """Add ``embed`` and ``classify`` to an argparse subparsers object (cli.py's)."""
    p = subparsers.add_parser(
        "embed", help="feature vectors of many images into an .h5 or .npy file",
        description="Embed images: files, folders (images by extension) and .txt/.lst lists of paths.",
        epilog=EXIT_STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common_arguments(p)
    p.add_argument("--output", "-o", required=True,
                   help="OUT.h5 (features, paths, failures, provenance) or OUT.npy "
                        "(with OUT.paths.txt and OUT.failed.txt beside it)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command from its journal (OUT.journal)")
    p.add_argument("--dask", metavar="SCHEDULER",
                   help="run on Dask: a scheduler address, or local[:N] for N local worker processes; OUT "
                        "may then also be a folder, written as a partitioned Parquet dataset (needs the dask extra)")
    p.add_argument("--partition-size", type=_positive_int,
                   help="with --dask: inputs per task, the unit of retry and --resume (default 1000)")
    p.set_defaults(func=run_embed)

    p = subparsers.add_parser(
        "classify", help="top-k ImageNet classes of images (models with a classifier)",
        description="Print one line per image: the path, then the top-k 'label (probability)', tab-separated.",
        epilog=EXIT_STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common_arguments(p)
    p.add_argument("--top", type=_positive_int, default=5, help="how many classes per image (default 5)")
    p.add_argument("--labels", help="class names, one a line, 'background' first (default: print class indices)")
    p.set_defaults(func=run_classify)


def _add_common_arguments(p) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUTS", help="image files, folders, or .txt/.lst lists of paths")
    p.add_argument("--model", required=True, help="registry name or weights file (.h5)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per model call (default 32)")
    p.add_argument("--threads", type=_positive_int, help="model and decoding threads (default: all cores)")
    p.add_argument("--preset", choices=PRESETS, help="preprocessing (default: the model's own)")
    p.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    p.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                   help="skip undecodable images and list them (default), or stop at the first one")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no per-file warnings")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def run_embed(args) -> int:
    """The ``embed`` command; returns the exit status."""
    from . import __version__, threads
    from .cli import model_from_arg

    if args.dask:  # the same command with its partitions run on Dask
        try:
            from .distributed import run_embed_cli
        except ImportError as exc:
            return _fail(str(exc))
        return run_embed_cli(args)
    started = time.perf_counter()
    check_output_path(args.output)
    model = model_from_arg(args.model)
    items = collect_inputs(args.inputs, args.recursive)
    if not items:
        return _fail("no images found in the inputs")
    preset = args.preset or model.default_preset
    journal_path = f"{args.output}.journal"
    if not args.resume and os.path.exists(journal_path):
        _note(args, f"starting over: replacing the journal of an earlier run ({journal_path}; --resume continues it)")
    journal = Journal(journal_path, run_identity(model, preset, items), model.num_features, args.resume)
    if journal.resumed:
        _note(args, f"resuming after {journal.items_done} of {len(items)} inputs")
    done_before = journal.items_done
    show_progress = False if args.quiet else None
    try:
        with threads.limit(args.threads), progress_bar(len(items), show_progress, initial=done_before) as bar:
            for batch in run_batches(items[done_before:], model, model, model.num_features, args.batch_size,
                                     preset, args.on_error, args.threads, args.threads):
                journal.append(batch)
                bar.update(len(batch.paths) + len(batch.failures))
                for path, reason in batch.failures:
                    _note(args, f"skipped {path}: {reason}", bar)
    except ImageError as exc:
        journal.close()
        return _fail(f"{exc} (--on-error fail; the finished batches are kept in {journal.path}: "
                     "fix or remove the file and rerun with --resume)")
    except KeyboardInterrupt:
        journal.close()
        return _fail(f"interrupted; rerun with --resume to continue from {journal.path}", EXIT_INTERRUPTED)
    attrs = {"model": model.name, "weights_sha256": model.weights_sha256, "preset": preset,
             "package_version": __version__}
    if journal.rows:
        write_output(args.output, journal, attrs)
    journal.remove()
    _summary(journal.rows, len(journal.failures), journal.items_done - done_before, started)
    if not journal.rows:
        return _fail("nothing embedded; no output written")
    return EXIT_PARTIAL if journal.failures else EXIT_OK


def run_classify(args) -> int:
    """The ``classify`` command; returns the exit status."""
    from . import threads
    from .cli import model_from_arg

    started = time.perf_counter()
    model = model_from_arg(args.model)
    if not model.num_classes:
        return _fail(f"{model.name} has no classifier (feature-vector weights only)")
    names = class_names(model.num_classes, model.labels_offset, args.labels)
    items = collect_inputs(args.inputs, args.recursive)
    done, failed = 0, 0
    try:
        with threads.limit(args.threads):
            for batch in run_batches(items, model, model.logits, model.num_classes, args.batch_size,
                                     args.preset, args.on_error, args.threads, args.threads):
                for path, reason in batch.failures:
                    _note(args, f"skipped {path}: {reason}")
                for path, order, probabilities in zip(batch.paths, *top_k(batch.features, args.top)):
                    print("\t".join([path] + [f"{names[i]} ({p:.4f})" for i, p in zip(order, probabilities)]))
                done, failed = done + len(batch.paths), failed + len(batch.failures)
    except ImageError as exc:
        return _fail(f"{exc} (--on-error fail)")
    _summary(done, failed, done + failed, started, verb="classified")
    if not done:
        return _fail("nothing classified")
    return EXIT_PARTIAL if failed else EXIT_OK


def _summary(done: int, failed: int, processed: int, started: float, verb: str = "embedded") -> None:
    seconds = time.perf_counter() - started
    rate = processed / seconds if seconds > 0 else 0.0
    print(f"{done} {verb}, {failed} failed, {seconds:.1f} s, {rate:.1f} images/s", file=sys.stderr)


def _note(args, message: str, bar=None) -> None:
    if not args.quiet:
        (bar.write if bar is not None else print)(message, file=sys.stderr)


def _fail(message: str, status: int = EXIT_FAILURE) -> int:
    print(f"mobilenet-np: error: {message}", file=sys.stderr)
    return status
