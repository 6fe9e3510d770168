"""mobilenet-np: MobileNet V1 and V2 feature vectors, logits and endpoints on a CPU, exact to TensorFlow.

``list`` the registry, print a model's layer ``summary``, ``profile`` it, compare it with
TensorFlow (``parity``), ``embed`` images into a file (or on Dask) and ``classify`` them.  Each
command is a thin layer over the library: models come from ``load.load``, images go through
``pipeline.run_batches``, results through ``journal.py`` and ``outputs.py``.

Exit status: 0 success, 1 partial success (some inputs failed), 2 failure or usage error,
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from . import registry, serve, threads as _threads
from ._version import __version__
from .argparsing import SuggestingParser
from .errors import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, ImageError, UnknownSourceError,
                     WeightsError)
from .inputs import collect_inputs, text_path
from .journal import Journal, OutputLock, run_identity
from .labels import PREDICTION_SUFFIXES, class_names, top_k, write_predictions
from .load import load
from .names import list_models
from .outputs import DTYPES, NORMALIZATIONS, check_output_path, check_paths_fit, write_output
from .pipeline import file_warnings, progress_bar, run_batches
from .preprocess import PRESETS
from .tables import format_profile

EXIT_STATUS_HELP = """exit status:
  0  every input was embedded (classified)
  1  partial success: some inputs could not be decoded and were skipped (--on-error skip)
  2  failure: nothing embedded, a bad input with --on-error fail, or bad arguments
  130  interrupted (embed: rerun with --resume)"""


def _list(args) -> int:
    found = list_models(args.pattern)
    if not found:
        return _fail(f"no registry name matches {args.pattern!r} (patterns are shell-style: 'mobilenet_v2*')")
    print(f"{'name':<24} {'architecture':<14} {'multiplier':>10} {'input':>6}  checkpoint")
    for name in found:
        e = registry.REGISTRY[name]
        print(f"{name:<24} {e.architecture:<14} {e.depth_multiplier:>10g} {e.input_size:>6}  {e.url}")
    return 0


def _load(args, source=None, **options):
    """``load`` for a command: an unknown source is an error that names its flag."""
    source = args.model if source is None else source
    try:
        return load(source, **options)
    except UnknownSourceError as exc:
        flag = "--model" if source == getattr(args, "model", None) else "SOURCE"
        raise UnknownSourceError(f"{flag}: {exc}") from None


def _summary(args) -> int:
    model = _load(args)
    size = (args.input_size, args.input_size) if args.input_size else None
    print(model.summary(size))
    return 0


def _profile(args) -> int:
    model = _load(args, backend=args.backend)
    size = (args.input_size, args.input_size) if args.input_size else model.input_size
    images = np.random.default_rng(0).random((args.batch_size, *size, 3), dtype=np.float32)
    rows = model.profile(images, repeats=args.repeats, threads=args.threads)
    print(f"{model!r}, batch {args.batch_size}, threads {args.threads or 'default'}")
    print(format_profile(rows))
    return 0


def _warmup(args) -> int:
    """Fill the kernel cache (the user cache folder), for container images and fresh Dask or
    server nodes: their first call then loads the kernels in about a second."""
    from .forward.engine import warmup
    from .kernels import cache

    started = time.perf_counter()
    warmup()
    if not args.quiet:
        print(f"kernels ready in {time.perf_counter() - started:.1f} s (cache: {cache.root()})")
    return EXIT_OK


def _parity(args) -> int:
    from .parity import compare
    tf_version = _tf_version()      # first: without TensorFlow, say so before loading anything
    model = _load(args, args.source, backend=args.backend, weights=args.weights)
    if args.images:
        images = np.stack([model.preprocess(p, args.preset) for p in args.images])
    else:
        images = np.random.default_rng(args.seed).random((2, *model.input_size, 3), dtype=np.float32)
    rows = compare(model, images)
    print(f"{model!r} vs TensorFlow {tf_version}, {len(images)} image(s) {images.shape[1]}x{images.shape[2]}")
    print(f"{'endpoint':<30} {'shape':<20} {'max abs diff':>13} {'scaled diff':>13}")
    for r in rows:
        flag = "" if r["scaled"] <= args.tolerance else "  <-- above tolerance"
        print(f"{r['endpoint']:<30} {str(r['shape']):<20} {r['max_abs']:>13.3e} {r['scaled']:>13.3e}{flag}")
    bad = [r for r in rows if r["scaled"] > args.tolerance]
    print(f"{len(rows) - len(bad)} of {len(rows)} endpoints within {args.tolerance:g} "
          "(scaled diff = max abs diff / max(1, largest TensorFlow magnitude))")
    return 2 if bad else 0


def _tf_version() -> str:
    import tensorflow as tf
    return tf.__version__


def register_embed_commands(subparsers) -> None:
    """Add ``embed`` and ``classify`` to the subcommands."""
    p = subparsers.add_parser(
        "embed", help="feature vectors of many images into an .h5, .npy, .npz or .parquet file",
        description="Embed images: files, folders (images by extension) and .txt/.lst lists of paths.\n"
                    "Paths are stored relative to the folder (or list) when it is the only input,\n"
                    "otherwise as named, so that two folders' x.jpg stay apart.",
        epilog=EXIT_STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common_arguments(p)
    p.add_argument("--output", "-o", required=True, metavar="OUT",
                   help="OUT.h5 (features, paths, failures, provenance), OUT.npy (with OUT.paths.txt and "
                        "OUT.failed.txt beside it), OUT.npz (all in one NumPy archive) or OUT.parquet "
                        "(columns path and features, as the Dask dataset; needs pyarrow)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="stored feature type (default float32)")
    p.add_argument("--normalize", choices=NORMALIZATIONS,
                   help="scale each feature vector to unit L2 norm before storing it (default: as computed)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command from its journal (OUT.journal)")
    p.add_argument("--dask", metavar="SCHEDULER",
                   help="run on Dask: a scheduler address, or local[:N] for N local worker processes; OUT "
                        "may then also be a folder, written as a partitioned Parquet dataset (needs the dask extra)")
    p.add_argument("--partition-size", type=_positive_int, metavar="N",
                   help="with --dask: inputs per task, the unit of retry and --resume (default 1000)")
    p.set_defaults(func=run_embed)

    p = subparsers.add_parser(
        "classify", help="top-k ImageNet classes of images (models with a classifier)",
        description="Print one line per image: the path, then the top-k 'label (probability)',\n"
                    "tab-separated (or write them to --output).",
        epilog=EXIT_STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common_arguments(p)
    p.add_argument("--top", type=_positive_int, default=5, help="how many classes per image (default 5)")
    p.add_argument("--labels", metavar="FILE",
                   help="class names, one a line, 'background' first (default: the ImageNet names shipped "
                        "with the package for 1000/1001-class models, else class indices)")
    p.add_argument("--output", "-o", metavar="OUT",
                   help="write OUT.csv (path, rank, class, label, probability) or OUT.jsonl (one JSON object "
                        "per image) instead of printing")
    p.set_defaults(func=run_classify)


def _add_common_arguments(p) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUTS", help="image files, folders, or .txt/.lst lists of paths")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--batch-size", type=_positive_int, default=32, metavar="N",
                   help="images per model call (default 32)")
    p.add_argument("--threads", type=_positive_int, metavar="N", help="model and decoding threads (default: all cores)")
    p.add_argument("--preset", choices=PRESETS, help="preprocessing (default: the model's own)")
    p.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    p.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                   help="skip undecodable images and list them (default), or stop at the first one")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no per-file warnings")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def run_embed(args) -> int:
    """The ``embed`` command; returns the exit status."""
    if args.dask:  # the same command with its partitions run on Dask
        if args.dtype != "float32" or args.normalize:
            return _fail("--dtype and --normalize are not available with --dask")
        return run_embed_on_dask(args)
    started = time.perf_counter()
    check_output_path(args.output)
    model = _load(args)
    skipped = []
    items = collect_inputs(args.inputs, args.recursive, skipped)
    _report_skipped(args, skipped)
    if not items:
        return _fail("no images found in the inputs")
    check_paths_fit(args.output, (item.path for item in items))
    with OutputLock(args.output):
        return _embed_locked(args, model, items, started, len(skipped))


def _embed_locked(args, model, items, started: float, skipped: int) -> int:
    """``embed`` once the output is ours: run into the journal, then write the output."""
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
        with _threads.limit(args.threads), progress_bar(len(items), show_progress, initial=done_before) as bar, \
                file_warnings(None if args.quiet else lambda m: _note(args, m, bar)):
            for batch in run_batches(items[done_before:], model, model, model.num_features, args.batch_size,
                                     preset, args.on_error, args.threads, args.threads):
                journal.append(batch)
                bar.update(len(batch.paths) + len(batch.failures))
                for path, reason in batch.failures:
                    _note(args, f"skipped {text_path(path)}: {reason}", bar)
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
        try:
            write_output(args.output, journal, attrs, args.dtype, args.normalize)
        except OSError as exc:
            journal.close()
            return _fail(f"{exc}; the embeddings are kept in {journal.path}: free some space and rerun "
                         "the same command with --resume to write the output")
    journal.remove()
    _run_summary(journal.rows, len(journal.failures), journal.items_done - done_before, started, skipped=skipped)
    if not journal.rows:
        return _fail("nothing embedded; no output written")
    return EXIT_PARTIAL if journal.failures else EXIT_OK


def _report_skipped(args, skipped) -> None:
    """One line per file or folder the inputs held but that is not an image input."""
    for path, reason in skipped:
        _note(args, f"skipped {text_path(path)}: {reason}")


def run_embed_on_dask(args) -> int:
    """``mobilenet-np embed ... --dask SCHEDULER|local[:N]``; returns the exit status."""
    try:
        from . import distributed as on_dask
    except ImportError as exc:
        return _fail(str(exc))
    from distributed import KilledWorker
    started = time.perf_counter()
    try:
        with OutputLock(args.output), on_dask.client_for_address(args.dask, args.threads) as client:
            summary = on_dask.embed_on_dask(args.inputs, args.model, client, args.output,
                                    args.partition_size or on_dask.DEFAULT_PARTITION_SIZE,
                                    args.batch_size, args.preset, args.on_error, args.threads, args.resume,
                                    args.recursive, progress=False if args.quiet else None)
    except ImageError as exc:
        return _fail(f"{exc} (--on-error fail; the finished partitions are kept: fix or remove the file "
                     "and rerun with --resume)")
    except KilledWorker as exc:
        return _fail(f"{exc} (its workers died repeatedly; the finished partitions are kept: rerun with --resume)")
    except KeyboardInterrupt:
        return _fail("interrupted; rerun with --resume to keep the finished partitions", EXIT_INTERRUPTED)
    if summary.skipped:
        _note(args, f"kept {summary.skipped} of {summary.partitions} partitions written by an earlier run")
    for path, reason in summary.failures:
        _note(args, f"skipped {path}: {reason}")
    _run_summary(summary.rows, len(summary.failures), summary.processed, started)
    if not summary.rows:
        return _fail("nothing embedded; no output written")
    return EXIT_PARTIAL if summary.failures else EXIT_OK


def run_classify(args) -> int:
    """The ``classify`` command; returns the exit status."""
    started = time.perf_counter()
    if args.labels and not os.path.isfile(args.labels):
        return _fail(f"--labels {args.labels}: no such file")
    if args.output and not args.output.lower().endswith(PREDICTION_SUFFIXES):
        return _fail(f"--output {args.output}: the name must end in {' or '.join(PREDICTION_SUFFIXES)}")
    model = _load(args)
    if not model.num_classes:
        return _fail(f"{model.name} has no classifier (feature-vector weights only)")
    names = class_names(model.num_classes, model.labels_offset, args.labels)
    skipped = []
    items = collect_inputs(args.inputs, args.recursive, skipped)
    _report_skipped(args, skipped)
    done, failed, rows = 0, 0, []
    try:
        with _threads.limit(args.threads), file_warnings(None if args.quiet else lambda m: _note(args, m)):
            for batch in run_batches(items, model, model.logits, model.num_classes, args.batch_size,
                                     args.preset, args.on_error, args.threads, args.threads):
                for path, reason in batch.failures:
                    _note(args, f"skipped {text_path(path)}: {reason}")
                for path, order, probabilities in zip(batch.paths, *top_k(batch.features, args.top)):
                    if args.output:
                        rows.append((path, order, probabilities))
                    else:       # any path the OS gives, whatever stdout's encoding (bytes escaped)
                        print("\t".join([text_path(path)] + [f"{names[i]} ({p:.4f})"
                                                             for i, p in zip(order, probabilities)]), flush=True)
                done, failed = done + len(batch.paths), failed + len(batch.failures)
    except ImageError as exc:
        return _fail(f"{exc} (--on-error fail)")
    if args.output and rows:
        write_predictions(args.output, rows, names)
    _run_summary(done, failed, done + failed, started, verb="classified", skipped=len(skipped))
    if not done:
        return _fail("nothing classified")
    return EXIT_PARTIAL if failed else EXIT_OK


def _run_summary(done: int, failed: int, processed: int, started: float, verb: str = "embedded",
                 skipped: int = 0) -> None:
    seconds = time.perf_counter() - started
    rate = processed / seconds if seconds > 0 else 0.0
    extra = f", {skipped} passed over (not images)" if skipped else ""
    print(f"{done} {verb}, {failed} failed{extra}, {seconds:.1f} s, {rate:.1f} images/s", file=sys.stderr)


def _note(args, message: str, bar=None) -> None:
    if not args.quiet:
        (bar.write if bar is not None else print)(message, file=sys.stderr)


def _fail(message: str, status: int = EXIT_FAILURE) -> int:
    print(f"mobilenet-np: error: {message}", file=sys.stderr)
    return status


MODEL_HELP = ("registry name (also TF-Hub, Kaggle, TF-Slim and Hugging Face names of the same models), "
              "weights file, or any source weights-tools reads")


def build_parser() -> argparse.ArgumentParser:
    parser = SuggestingParser(prog="mobilenet-np", description=__doc__.split("\n")[0].partition(": ")[2],
                              epilog="exit status: 0 success, 1 partial success, 2 failure")
    parser.add_argument("--version", action="version", version=f"mobilenet-np {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of these; mobilenet-np COMMAND --help for its options")
    p = _command(sub, "list", "the registry of published TF-Slim MobileNets")
    p.add_argument("pattern", nargs="?", metavar="PATTERN", help="only names matching it, e.g. 'mobilenet_v2*'")
    p.set_defaults(func=_list)
    p = _command(sub, "summary", "per-layer table: op, stride, shapes, padding, params, MACs")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--input-size", type=_positive_int, metavar="PIXELS", help="table for another (square) input size")
    p.set_defaults(func=_summary)
    p = _command(sub, "profile", "time per layer next to its MACs and GMAC/s")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--batch-size", type=_positive_int, default=1, metavar="N", help="images per call (default 1)")
    p.add_argument("--threads", type=_positive_int, metavar="N", help="model threads (default: all cores)")
    p.add_argument("--input-size", type=_positive_int, metavar="PIXELS", help="square input size (default: the model's)")
    p.add_argument("--repeats", type=_positive_int, default=50, metavar="N", help="timed runs; the median is shown (default 50)")
    p.add_argument("--backend", choices=("numba", "numpy"), default="numba",
                   help="the Numba engine (default) or the NumPy reference")
    p.set_defaults(func=_profile)
    p = _command(sub, "parity", "compare with TensorFlow at every endpoint (needs the parity extra)")
    p.add_argument("source", metavar="SOURCE",
                   help="checkpoint, weights file, registry name or any source weights-tools reads")
    p.add_argument("--images", nargs="*", metavar="IMAGE", help="image files (default: two seeded random images)")
    p.add_argument("--preset", choices=PRESETS, help="preprocessing of --images (default: the model's own)")
    p.add_argument("--backend", choices=("numba", "numpy"), default="numba",
                   help="the Numba engine (default) or the NumPy reference")
    p.add_argument("--weights", choices=("raw", "ema"), default="ema",
                   help="for checkpoints: the raw or the moving-average (EMA, default) values")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest scaled difference that passes (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random images (default 0)")
    p.set_defaults(func=_parity)
    p = _command(sub, "warmup", "compile the kernels for this CPU now, or check that they are cached")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.set_defaults(func=_warmup)
    register_embed_commands(sub)
    serve.add_parser(sub)
    return parser


def _command(sub, name: str, summary: str):
    """A sub-command whose --help starts with its one-line summary."""
    return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")


# Optional packages, by the name Python reports when one is missing, and the extra that has it.
EXTRAS = {"tensorflow": "parity", "ai_edge_litert": "parity", "dask": "dask", "distributed": "dask",
          "pyarrow": "dask"}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        from .kernels import jit
        jit.quiet()             # no "compiling kernels" line either
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        return _fail(f"'{args.command}' needs {top}, which is not installed: "
                     f"pip install 'mobilenet-np[{EXTRAS[top]}]'")
    except (WeightsError, OSError, ValueError, KeyError, ConnectionError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        return _fail(str(message))


if __name__ == "__main__":
    sys.exit(main())
