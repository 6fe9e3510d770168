"""mobilenet-np: MobileNet V1 and V2 feature vectors, logits and endpoints on a CPU, exact to TensorFlow.

``list`` the registry, print a model's layer ``summary``, ``profile`` it, compare it with
TensorFlow (``parity``), fill the kernel cache (``warmup``), ``embed`` images into a file (or on
Dask) and ``classify`` them (both in ``image_commands.py``), ``serve`` models (``serve/``).

Exit status: 0 success, 1 partial success (some inputs failed), 2 failure or usage error,
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from . import registry, serve
from ._version import __version__
from .argparsing import SuggestingParser
from .errors import EXIT_OK, WeightsError
from .image_commands import MODEL_HELP, fail, load_model, positive_int, register_embed_commands
from .names import list_models
from .preprocess import PRESETS
from .tables import format_profile

def _list(args) -> int:
    found = list_models(args.pattern)
    if not found:
        return fail(f"no registry name matches {args.pattern!r} (patterns are shell-style: 'mobilenet_v2*')")
    print(f"{'name':<24} {'architecture':<14} {'multiplier':>10} {'input':>6}  checkpoint")
    for name in found:
        e = registry.REGISTRY[name]
        print(f"{name:<24} {e.architecture:<14} {e.depth_multiplier:>10g} {e.input_size:>6}  {e.url}")
    return 0


def _summary(args) -> int:
    model = load_model(args)
    size = (args.input_size, args.input_size) if args.input_size else None
    print(model.summary(size))
    return 0


def _profile(args) -> int:
    model = load_model(args, backend=args.backend, tiered=False)     # time the engine asked for
    size = (args.input_size, args.input_size) if args.input_size else model.input_size
    images = np.random.default_rng(0).random((args.batch_size, *size, 3), dtype=np.float32)
    rows = model.profile(images, repeats=args.repeats, threads=args.threads)
    print(f"{model!r}, batch {args.batch_size}, threads {args.threads or 'default'}")
    print(format_profile(rows))
    return 0


# The float layer kernels ``mobilenet-np warmup``'s second process compiles before the integer ones, so
# that the two take about as long (the first one finds them in the cache when it comes to them):
# measured in alternating runs, the two were done after 11.4-13.7 s with the input row's kernel
# here, 12.9-14.7 s with none, 14.0 s with the stem's (2026-12-02, the machine shared).
CHILD_KERNELS = ("input_rows",)


def _warmup(args) -> int:
    """Fill the kernel cache (the user cache folder) with the float and the integer kernels, for
    container images and fresh Dask or server nodes: their first call then loads the kernels in
    about a second.  With a cache folder and two cores or more, the integer kernels compile in
    a child process while this one compiles the float engine (Numba's compiler is Python code
    under one lock: one process compiles on one core); the child takes the input row's float
    kernel too (``CHILD_KERNELS``), so that the two finish together.  On the 2-core development
    machine everything took 10.7-13.5 s (2026-12-02, in a fresh venv; the two processes slow each
    other down, and both leave without the interpreter's teardown, ``tiered.exit_now``).
    Should the child fail, this process compiles what it left."""
    import tempfile

    from .forward.tiered import child_process, fill_cache
    from .kernels import cache, jit
    from .quantized_model import warm_up_integer_kernels

    started = time.perf_counter()
    child = None
    with tempfile.TemporaryFile() as errors:
        if jit._FOLDER is not None and _cores() > 1:
            child = child_process(f"from mobilenet_np.kernels.plan import compile_layer_kernels as c; c({CHILD_KERNELS}); "
                                  "from mobilenet_np.quantized_model import warm_up_integer_kernels as w; w(); "
                                  "from mobilenet_np.forward.tiered import exit_now; exit_now(0)", errors)
        try:
            fill_cache()
        except BaseException:
            if child is not None:
                child.kill()
                child.wait()
            raise
        if child is not None and child.wait() != 0:
            errors.seek(0)
            tail = errors.read().decode(errors="replace").strip().splitlines()[-1:]
            print(f"mobilenet-np: the compile in a second process failed (exit status "
                  f"{child.returncode}{': ' + tail[0] if tail else ''}); compiling its kernels here", file=sys.stderr)
            child = None
    if child is None:
        warm_up_integer_kernels()       # quantized (version-2) models' kernels, int8 and uint8
    if not args.quiet:
        print(f"kernels ready in {time.perf_counter() - started:.1f} s (cache: {cache.root()})")
    return EXIT_OK


def _cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _parity(args) -> int:
    from .parity import compare
    tf_version = _tf_version()      # first: without TensorFlow, say so before loading anything
    # A quantized .tflite or version-2 file is compared in float (its dequantized weights), as
    # before format version 2.
    model = load_model(args, args.source, backend=args.backend, weights=args.weights, dequantize=True,
                       tiered=False)
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
    p.add_argument("--input-size", type=positive_int, metavar="PIXELS", help="table for another (square) input size")
    p.set_defaults(func=_summary)
    p = _command(sub, "profile", "time per layer next to its MACs and GMAC/s")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--batch-size", type=positive_int, default=1, metavar="N", help="images per call (default 1)")
    p.add_argument("--threads", type=positive_int, metavar="N", help="model threads (default: all cores)")
    p.add_argument("--input-size", type=positive_int, metavar="PIXELS", help="square input size (default: the model's)")
    p.add_argument("--repeats", type=positive_int, default=50, metavar="N", help="timed runs; the median is shown (default 50)")
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
    p.set_defaults(func=_warmup, exit_now=True)
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
    """The ``mobilenet-np`` command (``argv`` None: this process's command line; the process is then
    the command's own, and ``warmup`` leaves it at once, ``tiered.exit_now``)."""
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        from .kernels import jit
        jit.quiet()             # no "compiling kernels" line either
    try:
        code = int(args.func(args) or 0)
        if argv is None and getattr(args, "exit_now", False):
            from .forward.tiered import exit_now
            exit_now(code)
        return code
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        return fail(f"'{args.command}' needs {top}, which is not installed: "
                     f"pip install 'mobilenet-np[{EXTRAS[top]}]'")
    except (WeightsError, OSError, ValueError, KeyError, ConnectionError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        return fail(str(message))


if __name__ == "__main__":
    sys.exit(main())
