"""The commands that read images, ``embed`` (locally or on Dask) and ``classify``, and the
helpers every command of ``cli.py`` shares (loading ``--model``, notes, errors, exit statuses).

Each is a thin layer over the library: models come from ``load.load``, images go through
``pipeline.run_batches``, results through ``journal.py`` and ``outputs.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import threads as _threads
from ._version import __version__
from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, ImageError, UnknownSourceError
from .inputs import collect_inputs, text_path
from .journal import Journal, OutputLock, run_identity
from .labels import PREDICTION_SUFFIXES, class_names, top_k, write_predictions
from .load import load
from .outputs import DTYPES, NORMALIZATIONS, check_output_path, check_paths_fit, write_output
from .pipeline import file_warnings, progress_bar, run_batches
from .preprocess import PRESETS

EXIT_STATUS_HELP = """exit status:
  0  every input was embedded (classified)
  1  partial success: some inputs could not be decoded and were skipped (--on-error skip)
  2  failure: nothing embedded, a bad input with --on-error fail, or bad arguments
  130  interrupted (embed: rerun with --resume)"""


def load_model(args, source=None, **options):
    """``load`` for a command: an unknown source is an error that names its flag."""
    source = args.model if source is None else source
    try:
        return load(source, **options)
    except UnknownSourceError as exc:
        flag = "--model" if source == getattr(args, "model", None) else "SOURCE"
        raise UnknownSourceError(f"{flag}: {exc}") from None


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
    p.add_argument("--partition-size", type=positive_int, metavar="N",
                   help="with --dask: inputs per task, the unit of retry and --resume (default 1000)")
    p.set_defaults(func=run_embed)

    p = subparsers.add_parser(
        "classify", help="top-k ImageNet classes of images (models with a classifier)",
        description="Print one line per image: the path, then the top-k 'label (probability)',\n"
                    "tab-separated (or write them to --output).",
        epilog=EXIT_STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common_arguments(p)
    p.add_argument("--top", type=positive_int, default=5, help="how many classes per image (default 5)")
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
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                   help="images per model call (default 32)")
    p.add_argument("--threads", type=positive_int, metavar="N", help="model and decoding threads (default: all cores)")
    p.add_argument("--preset", choices=PRESETS, help="preprocessing (default: the model's own)")
    p.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    p.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                   help="skip undecodable images and list them (default), or stop at the first one")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no per-file warnings")


def positive_int(text: str) -> int:
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
            return fail("--dtype and --normalize are not available with --dask")
        return run_embed_on_dask(args)
    started = time.perf_counter()
    check_output_path(args.output)
    model = load_model(args)
    skipped = []
    items = collect_inputs(args.inputs, args.recursive, skipped)
    _report_skipped(args, skipped)
    if not items:
        return fail("no images found in the inputs")
    check_paths_fit(args.output, (item.path for item in items))
    with OutputLock(args.output):
        return _embed_locked(args, model, items, started, len(skipped))


def _embed_locked(args, model, items, started: float, skipped: int) -> int:
    """``embed`` once the output is ours: run into the journal, then write the output."""
    preset = args.preset or model.default_preset
    journal_path = f"{args.output}.journal"
    if not args.resume and os.path.exists(journal_path):
        note(args, f"starting over: replacing the journal of an earlier run ({journal_path}; --resume continues it)")
    journal = Journal(journal_path, run_identity(model, preset, items), model.num_features, args.resume)
    if journal.resumed:
        note(args, f"resuming after {journal.items_done} of {len(items)} inputs")
    done_before = journal.items_done
    show_progress = False if args.quiet else None
    try:
        with _threads.limit(args.threads), progress_bar(len(items), show_progress, initial=done_before) as bar, \
                file_warnings(None if args.quiet else lambda m: note(args, m, bar)):
            for batch in run_batches(items[done_before:], model, model, model.num_features, args.batch_size,
                                     preset, args.on_error, args.threads, args.threads):
                journal.append(batch)
                bar.update(len(batch.paths) + len(batch.failures))
                for path, reason in batch.failures:
                    note(args, f"skipped {text_path(path)}: {reason}", bar)
    except ImageError as exc:
        journal.close()
        return fail(f"{exc} (--on-error fail; the finished batches are kept in {journal.path}: "
                     "fix or remove the file and rerun with --resume)")
    except KeyboardInterrupt:
        journal.close()
        return fail(f"interrupted; rerun with --resume to continue from {journal.path}", EXIT_INTERRUPTED)
    attrs = {"model": model.name, "weights_sha256": model.weights_sha256, "preset": preset,
             "package_version": __version__}
    if journal.rows:
        try:
            write_output(args.output, journal, attrs, args.dtype, args.normalize)
        except OSError as exc:
            journal.close()
            return fail(f"{exc}; the embeddings are kept in {journal.path}: free some space and rerun "
                         "the same command with --resume to write the output")
    journal.remove()
    _run_summary(journal.rows, len(journal.failures), journal.items_done - done_before, started, skipped=skipped)
    if not journal.rows:
        return fail("nothing embedded; no output written")
    return EXIT_PARTIAL if journal.failures else EXIT_OK


def _report_skipped(args, skipped) -> None:
    """One line per file or folder the inputs held but that is not an image input."""
    for path, reason in skipped:
        note(args, f"skipped {text_path(path)}: {reason}")


def run_embed_on_dask(args) -> int:
    """``mobilenet-np embed ... --dask SCHEDULER|local[:N]``; returns the exit status."""
    try:
        from . import distributed as on_dask
    except ImportError as exc:
        return fail(str(exc))
    from distributed import KilledWorker
    started = time.perf_counter()
    try:
        with OutputLock(args.output), on_dask.client_for_address(args.dask, args.threads) as client:
            summary = on_dask.embed_on_dask(args.inputs, args.model, client, args.output,
                                    args.partition_size or on_dask.DEFAULT_PARTITION_SIZE,
                                    args.batch_size, args.preset, args.on_error, args.threads, args.resume,
                                    args.recursive, progress=False if args.quiet else None)
    except ImageError as exc:
        return fail(f"{exc} (--on-error fail; the finished partitions are kept: fix or remove the file "
                     "and rerun with --resume)")
    except KilledWorker as exc:
        return fail(f"{exc} (its workers died repeatedly; the finished partitions are kept: rerun with --resume)")
    except KeyboardInterrupt:
        return fail("interrupted; rerun with --resume to keep the finished partitions", EXIT_INTERRUPTED)
    if summary.skipped:
        note(args, f"kept {summary.skipped} of {summary.partitions} partitions written by an earlier run")
    for path, reason in summary.failures:
        note(args, f"skipped {path}: {reason}")
    _run_summary(summary.rows, len(summary.failures), summary.processed, started)
    if not summary.rows:
        return fail("nothing embedded; no output written")
    return EXIT_PARTIAL if summary.failures else EXIT_OK


def run_classify(args) -> int:
    """The ``classify`` command; returns the exit status."""
    started = time.perf_counter()
    if args.labels and not os.path.isfile(args.labels):
        return fail(f"--labels {args.labels}: no such file")
    if args.output and not args.output.lower().endswith(PREDICTION_SUFFIXES):
        return fail(f"--output {args.output}: the name must end in {' or '.join(PREDICTION_SUFFIXES)}")
    model = load_model(args)
    if not model.num_classes:
        return fail(f"{model.name} has no classifier (feature-vector weights only)")
    names = class_names(model.num_classes, model.labels_offset, args.labels)
    skipped = []
    items = collect_inputs(args.inputs, args.recursive, skipped)
    _report_skipped(args, skipped)
    done, failed, rows = 0, 0, []
    try:
        with _threads.limit(args.threads), file_warnings(None if args.quiet else lambda m: note(args, m)):
            for batch in run_batches(items, model, model.logits, model.num_classes, args.batch_size,
                                     args.preset, args.on_error, args.threads, args.threads):
                for path, reason in batch.failures:
                    note(args, f"skipped {text_path(path)}: {reason}")
                for path, order, probabilities in zip(batch.paths, *top_k(batch.features, args.top)):
                    if args.output:
                        rows.append((path, order, probabilities))
                    else:       # any path the OS gives, whatever stdout's encoding (bytes escaped)
                        print("\t".join([text_path(path)] + [f"{names[i]} ({p:.4f})"
                                                             for i, p in zip(order, probabilities)]), flush=True)
                done, failed = done + len(batch.paths), failed + len(batch.failures)
    except ImageError as exc:
        return fail(f"{exc} (--on-error fail)")
    if args.output and rows:
        write_predictions(args.output, rows, names)
    _run_summary(done, failed, done + failed, started, verb="classified", skipped=len(skipped))
    if not done:
        return fail("nothing classified")
    return EXIT_PARTIAL if failed else EXIT_OK


def _run_summary(done: int, failed: int, processed: int, started: float, verb: str = "embedded",
                 skipped: int = 0) -> None:
    seconds = time.perf_counter() - started
    rate = processed / seconds if seconds > 0 else 0.0
    extra = f", {skipped} passed over (not images)" if skipped else ""
    print(f"{done} {verb}, {failed} failed{extra}, {seconds:.1f} s, {rate:.1f} images/s", file=sys.stderr)


def note(args, message: str, bar=None) -> None:
    if not args.quiet:
        (bar.write if bar is not None else print)(message, file=sys.stderr)


def fail(message: str, status: int = EXIT_FAILURE) -> int:
    print(f"mobilenet-np: error: {message}", file=sys.stderr)
    return status


MODEL_HELP = ("registry name (also TF-Hub, Kaggle, TF-Slim and Hugging Face names of the same models), "
              "weights file, or any source weights-tools reads")
