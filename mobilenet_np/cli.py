"""``mobilenet-np``: the command line.  ``list`` the registry, print a model's layer ``summary``,
``parity`` against TensorFlow, and (from ``embedding.py``) ``embed`` and ``classify`` images.

Exit status: 0 success, 1 partial success (embed: some inputs failed), 2 failure or usage error.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import registry, weights_file
from .errors import WeightsError


def model_from_arg(source: str, backend: str = "numba", weights: str = "ema"):
    """A model from a registry name, a weights file, or any source weights_tools reads
    (converted in memory, nothing written)."""
    import os

    from . import load
    from .model import MobileNet
    if source in registry.REGISTRY or source.endswith((".h5", ".hdf5")) and weights_file.is_weights_file(source):
        return load(source, backend=backend, weights=weights)
    if not os.path.exists(source):
        raise KeyError(f"{source!r} is neither a registry name nor an existing file")
    from weights_tools.convert import detect, open_source
    from . import spec
    src = open_source(source, weights)
    found = detect(src.tensors, source)
    size = src.input_size or (224, 224)
    return MobileNet(spec.build(found.architecture, found.depth_multiplier), src.tensors,
                     num_classes=found.num_classes, folded=found.folded, input_size=size, backend=backend,
                     name=os.path.basename(source.rstrip("/")))


def _list(args) -> int:
    print(f"{'name':<24} {'architecture':<14} {'multiplier':>10} {'input':>6}  checkpoint")
    for name in registry.list_models():
        e = registry.REGISTRY[name]
        print(f"{name:<24} {e.architecture:<14} {e.depth_multiplier:>10g} {e.input_size:>6}  {e.url}")
    return 0


def _summary(args) -> int:
    model = model_from_arg(args.model)
    size = (args.input_size, args.input_size) if args.input_size else None
    print(model.summary(size))
    return 0


def _profile(args) -> int:
    from .model import format_profile
    model = model_from_arg(args.model, backend=args.backend)
    size = (args.input_size, args.input_size) if args.input_size else model.input_size
    images = np.random.default_rng(0).random((args.batch_size, *size, 3), dtype=np.float32)
    rows = model.profile(images, repeats=args.repeats, threads=args.threads)
    print(f"{model!r}, batch {args.batch_size}, threads {args.threads or 'default'}")
    print(format_profile(rows))
    return 0


def _parity(args) -> int:
    from .parity import compare
    model = model_from_arg(args.source, backend=args.backend, weights=args.weights)
    if args.images:
        images = np.stack([model.preprocess(p, args.preset) for p in args.images])
    else:
        images = np.random.default_rng(args.seed).random((2, *model.input_size, 3), dtype=np.float32)
    rows = compare(model, images)
    print(f"{model!r} vs TensorFlow {_tf_version()}, {len(images)} image(s) {images.shape[1]}x{images.shape[2]}")
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
    parser = argparse.ArgumentParser(prog="mobilenet-np", description=__doc__.split("\n")[0],
                                     epilog="exit status: 0 success, 1 partial success, 2 failure")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="the registry of published TF-Slim MobileNets")
    p.set_defaults(func=_list)
    p = sub.add_parser("summary", help="per-layer table: op, stride, shapes, padding, params, MACs")
    p.add_argument("--model", required=True, help="registry name, weights file, or any weight source")
    p.add_argument("--input-size", type=int, help="table for another input size")
    p.set_defaults(func=_summary)
    p = sub.add_parser("profile", help="time per layer next to its MACs and GMAC/s")
    p.add_argument("--model", required=True, help="registry name, weights file, or any weight source")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--backend", choices=("numba", "numpy"), default="numba")
    p.set_defaults(func=_profile)
    p = sub.add_parser("parity", help="compare with TensorFlow at every endpoint (needs the parity extra)")
    p.add_argument("source", help="checkpoint, weights file, registry name or any source weights-tools reads")
    p.add_argument("--images", nargs="*", help="image files (default: two seeded random images)")
    p.add_argument("--preset", choices=("hub", "slim"), default=None)
    p.add_argument("--backend", choices=("numba", "numpy"), default="numba")
    p.add_argument("--weights", choices=("raw", "ema"), default="ema")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_parity)
    try:
        from .embedding import register_cli
    except ImportError:
        pass
    else:
        register_cli(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (WeightsError, OSError, ValueError, KeyError, ConnectionError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"mobilenet-np: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
