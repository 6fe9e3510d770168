"""Calibration for post-training quantization, and the ``weights-tools quantize`` command.

``calibration_ranges(model, images)`` runs the float model on a batch of [0, 1] images and records
the min and max of every activation tensor a version-2 file names (``weights_tools.quantize.
activation_names``): the network input (x * 2 - 1), every conv's output (V2's projections before
their residual add), every add, the global pool and the logits.  Ranges are the plain min/max over
all calibration images, as the TFLite converter's calibrator records them.

``quantize_file`` is the command: read a version-1 file, preprocess the images of a folder as
``embed`` does (the model's default preset, at its default input size), calibrate, quantize
(``weights_tools.quantize``) and write a version-2 file atomically.  It sits in the application
layer because it runs the forward pass; the ``weights-tools`` console script enters through
``main`` here, which adds ``quantize`` to weights_tools' own parser.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from weights_tools import quantize as q

from . import spec
from . import weights_file_v2 as v2
from .errors import ImageError, MissingFileError, WeightsError
from .inputs import image_extensions

BATCH = 8

# Per-tensor stays the default (the syntax, and the TFLite converter's own per-tensor option
# exists), but a depthwise conv's channels span ranges too far apart for one scale: the int8 model's
# features keep cosine 0.15-0.31 with the float model's (benchmarks/results/quantize.md).
PER_TENSOR_WARNING = ("weights-tools: warning: per-tensor weights make MobileNets' depthwise convs lose most of "
                      "their accuracy (feature cosine 0.15-0.31, benchmarks/results/quantize.md); "
                      "add --per-channel")


class RangeRecorder:
    """Running min/max per activation name."""

    def __init__(self):
        self.ranges: dict[str, tuple[float, float]] = {}

    def see(self, name: str, y: np.ndarray) -> None:
        lo, hi = float(np.min(y)), float(np.max(y))
        old = self.ranges.get(name)
        self.ranges[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))


def record_batch(model, images: np.ndarray, recorder: RangeRecorder) -> np.ndarray:
    """Run one batch of [0, 1] images through ``model``'s float backend, recording every named
    activation; returns the pooled features.  A V2 projection's pre-add output is the layer's
    output minus the block input (the backends report outputs after the add)."""
    x = model._network_input(images)
    geo = model._geometry(x.shape[1:3])
    recorder.see("input", x * np.float32(2) - np.float32(1))
    state = {"previous": None, "block_input": None}

    def on_layer(i, y):
        layer = geo[i].layer
        if layer.block_start:
            state["block_input"] = state["previous"]
        if layer.adds_residual:
            recorder.see(layer.scope, y - state["block_input"])
            recorder.see(q.add_name(layer), y)
        else:
            recorder.see(layer.scope, y)
        state["previous"] = y.copy()        # the backends may reuse their output buffers

    last = model.backend.run(geo, x, on_layer)
    pooled = model.backend.global_mean(last)
    recorder.see("global_pool", pooled)
    if model.num_classes:
        recorder.see("Logits", model.backend.logits(pooled))
    return pooled


def calibration_ranges(model, images: np.ndarray, batch: int = BATCH) -> dict[str, tuple[float, float]]:
    """The min/max of every activation of ``model`` over ``images`` [N, H, W, 3] in [0, 1]."""
    recorder = RangeRecorder()
    for start in range(0, len(images), batch):
        record_batch(model, images[start:start + batch], recorder)
    return recorder.ranges


def image_files(folder: str) -> list[str]:
    """The image files of a calibration folder (by extension, sorted), or one clear error."""
    if not os.path.exists(folder):
        raise MissingFileError(f"{folder}: calibration folder does not exist")
    if not os.path.isdir(folder):
        raise WeightsError(f"{folder}: --calibration must be a folder of images")
    names = sorted(n for n in os.listdir(folder)
                   if os.path.splitext(n)[1].lower() in image_extensions() and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise WeightsError(f"{folder}: no image files to calibrate on")
    return [os.path.join(folder, n) for n in names]


def load_images(paths: list[str], size: tuple[int, int], preset: str) -> np.ndarray:
    """The calibration batch: each image preprocessed as ``embed`` does (undrafted)."""
    from .preprocess import preprocess
    return np.stack([preprocess(p, size, preset, draft=False) for p in paths])


def quantize_float_model(model, images: np.ndarray, per_channel: bool, provenance: dict | None = None,
                         projection: str = "union") -> v2.QuantizedWeightsFile:
    """Calibrate ``model`` (a float MobileNet) on ``images`` and quantize it: the version-2 model
    in memory (``QuantizedMobileNet(qw, input_size=...)`` runs it, ``write_quantized`` saves it)."""
    from ._version import __version__
    ranges = calibration_ranges(model, images)
    attrs = {"architecture": model.arch.name, "depth_multiplier": float(model.arch.depth_multiplier),
             "default_input_size": list(model.input_size), "input_range": "[-1, 1]",
             "num_classes": int(model.num_classes), "labels_offset": model.labels_offset,
             "batchnorm_folded": bool(model.folded), "batchnorm_epsilon": spec.TF_BATCHNORM_EPSILON,
             "weights_choice": "n/a", "source_format": "mobilenet-np", "source_files": [],
             **{k: v for k, v in model.attrs.items() if k not in ("format", "format_version")},
             "converter_version": __version__}
    return q.quantize_model(model.arch, model.tensors, attrs, ranges, per_channel, provenance, projection)


def quantize_file(source: str, output: str, calibration: str, per_channel: bool, log=print) -> v2.QuantizedWeightsFile:
    """``weights-tools quantize``: the v1 file ``source`` to the v2 file ``output``."""
    from . import weights_file
    from .load import from_file
    if os.path.isfile(source) and not weights_file.is_weights_file(source):
        raise WeightsError(f"{source}: not a mobilenet-np weights file; quantize reads a float one (.h5): "
                           "make it with weights-tools convert first")
    model = from_file(source, backend="numba")
    if int(model.attrs.get("format_version", 1)) != 1:
        raise WeightsError(f"{source}: already quantized (format version {model.attrs.get('format_version')})")
    paths = image_files(calibration)
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):             # before the calibration, not after it
        raise FileNotFoundError(f"{output}: folder {folder} does not exist")
    size = tuple(model.input_size)
    if not per_channel and any(layer.kind == "depthwise" for layer in model.arch.layers):
        log(PER_TENSOR_WARNING, file=sys.stderr)
    log(f"calibrating {model.name} on {len(paths)} image(s) from {calibration} at {size[0]}x{size[1]}"
        f" ({'per-channel' if per_channel else 'per-tensor'} weights)", file=sys.stderr)
    images = load_images(paths, size, model.default_preset)
    provenance = {"method": "min-max", "images_dir": os.path.abspath(calibration), "images": len(paths),
                  "files": [os.path.basename(p) for p in paths],
                  "input_size": list(size), "preset": model.default_preset, "per_channel": bool(per_channel),
                  "float_file": {"name": os.path.basename(source), "sha256": weights_file.file_sha256(source)}}
    qm = quantize_float_model(model, images, per_channel, provenance)
    qm.attrs["source_format"] = "mobilenet-np"
    qm.attrs["source_files"] = [{"name": os.path.basename(source), "sha256": provenance["float_file"]["sha256"],
                                 "size": os.path.getsize(source)}]
    write_quantized(output, qm)
    return qm


def write_quantized(path: str, qw: v2.QuantizedWeightsFile) -> None:
    """Write a version-2 file, atomically, after every check a reader makes."""
    from . import weights_file
    weights_file.write_quantized(path, qw.tensors, qw.activations, qw.attrs)


# --- the console script ---------------------------------------------------------------------

def _run_quantize(args) -> None:
    try:
        quantize_file(args.source, args.output, args.calibration, args.per_channel, log=print)
    except ImageError as exc:
        raise WeightsError(f"calibration image {exc}") from None
    print(f"wrote {args.output}: int8, {'per-channel' if args.per_channel else 'per-tensor'} weights")


def build_parser():
    """weights_tools' parser plus ``quantize``."""
    from weights_tools.cli import build_parser as base_parser
    parser = base_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    p = sub.add_parser("quantize", help="int8 post-training quantization of a float weights file "
                                        "(writes format version 2)")
    p.add_argument("source", help="a float mobilenet-np weights file (format version 1, .h5)")
    p.add_argument("output", help="the int8 weights file to write (.h5), replaced whole or not at all")
    p.add_argument("--calibration", required=True, metavar="IMAGES_DIR",
                   help="folder of images to calibrate activation ranges on")
    p.add_argument("--per-channel", action="store_true",
                   help="one weight scale per output channel, as MobileNets need (default: one per tensor, "
                        "which loses most of their accuracy: benchmarks/results/quantize.md)")
    p.set_defaults(func=_run_quantize)
    return parser


def main(argv=None) -> int:
    from weights_tools.cli import run
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
