"""weights-tools: inspect a weight source, convert it to a mobilenet-np weights file, verify it.

Exit status 0 on success, 1 with a one-line reason on stderr when the input is unusable
(damaged, not a MobileNet, a format we do not read), 2 for any other failure (an output
that cannot be written) and for usage errors (argparse's own convention), 130 when
interrupted (Ctrl-C; outputs are written whole or not at all).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from mobilenet_np import weights_file
from mobilenet_np._version import __version__
from mobilenet_np.argparsing import SuggestingParser
from mobilenet_np.errors import EXIT_INTERRUPTED, WeightsError

from .convert import WEIGHT_CHOICES, convert, detect, open_source


def _inspect(args) -> None:
    if args.source.endswith((".h5", ".hdf5")) and weights_file.is_weights_file(args.source):
        return _verify(args)
    src = open_source(args.source, args.weights)
    print(f"source: {args.source} ({src.source_format})")
    for f in src.source_files:
        print(f"  file: {f}")
    print(f"tensors ({len(src.tensors)}, TF-Slim names):")
    for name in sorted(src.tensors):
        t = src.tensors[name]
        print(f"  {name:<64} {str(list(t.shape)):<20} {t.dtype}")
    try:
        print(f"detected: {detect(src.tensors, args.source).describe()}")
    except WeightsError as exc:
        print(f"detected: nothing that fits ({exc})")
    if src.ignored:
        print(f"ignored ({len(src.ignored)}):")
        for name in sorted(src.ignored):
            print(f"  {name:<64} {src.ignored[name]}")
    for note in src.notes:
        print(f"note: {note}")


def _convert(args) -> None:
    found = convert(args.source, args.output, weights=args.weights, input_size=args.input_size,
                    dequantize=args.dequantize)
    kept = weights_file.read(args.output).attrs.get("quantization")
    print(f"wrote {args.output}: {found.describe()}" + (f", quantized ({kept}, format version 2)" if kept else ""))


def _verify(args) -> None:
    from mobilenet_np.tables import format_table
    path = getattr(args, "file", None) or args.source
    wf = weights_file.read(path)
    total = sum(int(np.prod(t.shape)) for t in wf.tensors.values())
    print(f"{path}: OK, format version {wf.attrs['format_version']}, {len(wf.tensors)} tensors, {total:,} values")
    for key in sorted(wf.attrs):
        value = wf.attrs[key]
        print(f"  {key}: {json.dumps(value) if isinstance(value, (list, dict)) else value}")
    if getattr(args, "table", False):
        print(format_table(wf.architecture, tuple(wf.attrs["default_input_size"]), int(wf.attrs["num_classes"])))


def build_parser() -> SuggestingParser:
    parser = SuggestingParser(prog="weights-tools", description=__doc__.split("\n")[0].partition(": ")[2].capitalize(),
                              epilog="exit status: 0 success, 1 unusable input, 2 other failure or usage error, "
                                     "130 interrupted")
    parser.add_argument("--version", action="version", version=f"weights-tools (mobilenet-np) {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of these; weights-tools COMMAND --help for its options")
    p = sub.add_parser("inspect", help="list a source's tensors, what was recognised and what is ignored")
    p.add_argument("source", help="checkpoint prefix or directory, TF-Hub module dir, .tflite, model.json, Keras .h5")
    p.add_argument("--weights", choices=WEIGHT_CHOICES, default="ema",
                   help="for checkpoints: raw variables or their ExponentialMovingAverage shadows (default ema)")
    p.set_defaults(func=_inspect)
    p = sub.add_parser("convert", help="write a mobilenet-np weights file (HDF5)")
    p.add_argument("source", help="checkpoint prefix or directory, TF-Hub module dir, .tflite, model.json, Keras .h5")
    p.add_argument("output", help="the weights file to write (.h5), replaced whole or not at all")
    p.add_argument("--weights", choices=WEIGHT_CHOICES, default="ema",
                   help="for checkpoints: raw variables or their ExponentialMovingAverage shadows (default ema)")
    p.add_argument("--input-size", type=int, default=None,
                   help="default input size recorded in the file (default: from the source or its name, else 224)")
    p.add_argument("--dequantize", action="store_true",
                   help="a quantized .tflite: write its dequantized weights as a float (version-1) file "
                        "instead of keeping it quantized (version 2)")
    p.set_defaults(func=_convert)
    p = sub.add_parser("verify", help="check a weights file (format, attributes, storage, every shape and value); "
                                      "print its attributes")
    p.add_argument("file", help="a mobilenet-np weights file (.h5)")
    p.add_argument("--table", action="store_true", help="also print the layer table")
    p.set_defaults(func=_verify)
    return parser


def main(argv=None) -> int:
    """``python -m weights_tools``: the commands of this package.  ``quantize`` runs the float
    model, which this layer may not import; it is in the ``weights-tools`` console script
    (``mobilenet_np.calibrate.main``), and this points there."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["quantize"]:
        return _fail("quantize runs the float model, so it is not in python -m weights_tools: use the "
                     "weights-tools command or python -m mobilenet_np.calibrate quantize", 2)
    return run(build_parser(), args)


def run(parser, argv=None) -> int:
    """Parse ``argv`` with ``parser`` and run the command: the exit statuses of the module notes.
    (The console script passes a parser with ``quantize`` added: mobilenet_np/calibrate.py.)"""
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except WeightsError as exc:
        return _fail(exc, 1)
    except (OSError, ValueError, KeyError) as exc:
        return _fail(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc, 2)
    except KeyboardInterrupt:
        return _fail("interrupted; no output was written", EXIT_INTERRUPTED)
    return 0


def _fail(message, status: int) -> int:
    print(f"weights-tools: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
