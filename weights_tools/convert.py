"""From any supported source to a mobilenet-np weights file: open, recognise, check, write.

``open_source`` picks the reader by what the path is (checkpoint prefix or directory, TF-Hub
module, .tflite, TF.js model.json, Keras .h5); every reader returns ``SourceTensors`` under
TF-Slim names.  ``detect`` recognises architecture, depth multiplier and class count from
names and shapes alone, then checks *every* tensor against the rules of SPEC.md (via
``mobilenet_np.spec``); ``convert`` writes the HDF5 file with its provenance, atomically.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from mobilenet_np import spec, weights_file
from mobilenet_np.weights_file_v2 import FORMAT_VERSION, QuantizedWeightsFile
from mobilenet_np.errors import UnsupportedFormatError

from .recognise import Detected, detect
from .source import SourceTensors
from .tflite_quantized import is_quantized, read_quantized_tflite

__all__ = ["Detected", "WEIGHT_CHOICES", "convert", "detect", "open_source", "read_quantized",
           "select_checkpoint_weights"]

WEIGHT_CHOICES = ("raw", "ema")
EMA_SUFFIX = "/ExponentialMovingAverage"
# Checkpoint tensors that are training state, not model: optimizer slots and the step counter.
_TRAINING_STATE = re.compile(r"(/RMSProp(_1)?|/Momentum|/Adam(_1)?)$|^global_step$")


def select_checkpoint_weights(names: list[str], read, choice: str, where: str) -> SourceTensors:
    """From the names of a TF-Slim checkpoint, the model variables: raw values or their
    ExponentialMovingAverage shadows; optimizer slots and ``global_step`` are set aside."""
    if choice not in WEIGHT_CHOICES:
        raise ValueError(f"--weights must be one of {', '.join(WEIGHT_CHOICES)}, got {choice!r}")
    present = set(names)
    tensors, ignored = {}, {}
    no_shadow = []
    for name in names:
        if name.endswith(EMA_SUFFIX):
            ignored[name] = "EMA shadow (used with --weights ema)" if choice == "raw" else "EMA shadow (read)"
            continue
        if _TRAINING_STATE.search(name):
            ignored[name] = "optimizer state / step counter"
            continue
        if not name.startswith(tuple(f"{s}/" for s in spec.SCOPES.values())):
            ignored[name] = "not a MobileNet variable"
            continue
        shadow = name + EMA_SUFFIX
        if choice == "ema" and shadow in present:
            tensors[name] = read(shadow)
        else:
            if choice == "ema":
                no_shadow.append(name)
            tensors[name] = read(name)
    notes = []
    if no_shadow:
        notes.append(f"--weights ema: {len(no_shadow)} variable(s) have no EMA shadow, raw values used: "
                     + ", ".join(no_shadow[:8]) + (" ..." if len(no_shadow) > 8 else ""))
    for name in list(ignored):
        if ignored[name] == "not a MobileNet variable" and name.startswith("module/"):
            ignored[name] += " (strip a 'module/' prefix? hub modules store names without it)"
    return SourceTensors(tensors, "tf-checkpoint", [], batchnorm_folded=False, weights_choice=choice,
                         ignored=ignored, notes=notes)


def open_source(path: str | os.PathLike, weights: str = "ema") -> SourceTensors:
    """Read any supported source into TF-Slim names (the reader is chosen by what ``path`` is),
    with every value checked (``weights_file.check_values``: float, finite, variances >= 0)."""
    src = _read_source(str(path), weights)
    weights_file.check_values(src.tensors, str(path))
    return src


def _read_source(path: str, weights: str) -> SourceTensors:
    p = Path(path)
    lower = path.lower()
    if lower.endswith(".tflite"):
        from .tflite import read_tflite
        _require_file(path)
        return read_tflite(path)
    if lower.endswith(".json") or (p.is_dir() and (p / "model.json").exists()):
        from .tfjs import read_tfjs_graph
        return read_tfjs_graph(path)
    if lower.endswith((".h5", ".hdf5", ".keras")):
        from .keras_h5 import read_keras_h5
        _require_file(path)
        return read_keras_h5(path)
    from .tensor_bundle import CheckpointReader
    reader = CheckpointReader(path)
    src = select_checkpoint_weights(list(reader.keys()), reader.get_tensor, weights, reader.prefix)
    src.source_files = [reader.index_path, *reader.data_paths]
    return src


def _require_file(path: str) -> None:
    weights_file.require_regular_file(path)


def convert(src_path: str | os.PathLike, out_path: str | os.PathLike, weights: str = "ema",
            input_size: int | tuple[int, int] | None = None, model_name: str | None = None,
            dequantize: bool = False) -> Detected:
    """Convert one source to a weights file; returns what was recognised.  Nothing is written
    unless every check passes, and a failure part-way leaves no file behind.  A quantized
    .tflite stays quantized (a version-2 file) unless ``dequantize``."""
    if os.path.isfile(src_path) and weights_file.is_weights_file(src_path):
        raise UnsupportedFormatError(f"{src_path}: already a mobilenet-np weights file, nothing to convert "
                                     "(weights-tools verify checks it; mnp.load(FILE, dequantize=True).save(OUT) "
                                     "makes a float file of a quantized one)")
    src = open_source(src_path, weights)
    found = detect(src.tensors, str(src_path))
    attrs = _attrs(src_path, src, found, input_size, model_name)
    quantized = None if dequantize else _quantized(src_path, src, found, attrs)
    if quantized is not None:
        weights_file.write_quantized(out_path, quantized.tensors, quantized.activations, quantized.attrs)
    else:
        weights_file.write(out_path, src.tensors, attrs)
    return found


def read_quantized(src_path: str | os.PathLike, input_size=None) -> QuantizedWeightsFile | None:
    """A quantized .tflite as the version-2 model it converts to, in memory and checked as a
    file would be; None for any other source (``mnp.load`` runs those in float)."""
    if not str(src_path).lower().endswith(".tflite"):
        return None
    src = open_source(src_path)
    found = detect(src.tensors, str(src_path))
    return _quantized(src_path, src, found, _attrs(src_path, src, found, input_size, None))


def _quantized(src_path, src: SourceTensors, found: Detected, attrs: dict) -> QuantizedWeightsFile | None:
    if src.source_format != "tflite" or not is_quantized(src_path):
        return None
    tensors, activations, extra = read_quantized_tflite(src_path, found.architecture, found.depth_multiplier)
    notes = [n for n in src.notes if not n.startswith("dequantized")] + [
        "kept quantized: the integer weights and every activation's quantization of the .tflite"]
    attrs = {**attrs, **extra, "notes": notes, "format": weights_file.FORMAT_NAME,
             "format_version": FORMAT_VERSION, "batchnorm_folded": True}
    weights_file.check_quantized_file(attrs, tensors, activations, str(src_path))
    return QuantizedWeightsFile(str(src_path), tensors, activations, attrs)


def _attrs(src_path, src: SourceTensors, found: Detected, input_size, model_name) -> dict:
    """The root attributes of the converted file (docs/weights-format.md)."""
    size = _input_size(input_size or _plausible(src.input_size) or _size_from_name(str(src_path)))
    from mobilenet_np._version import __version__
    attrs = {
        "architecture": found.architecture,
        "depth_multiplier": float(found.depth_multiplier),
        "default_input_size": list(size),
        "input_range": "[-1, 1]",
        "num_classes": found.num_classes,
        "labels_offset": 1 if found.num_classes == 1001 else 0,
        "batchnorm_folded": found.folded,
        "batchnorm_epsilon": spec.TF_BATCHNORM_EPSILON,
        "weights_choice": src.weights_choice,
        "source_format": src.source_format,
        "source_files": [{"name": os.path.basename(f), "sha256": weights_file.file_sha256(f), "size": os.path.getsize(f)}
                         for f in src.source_files],
        "converter_version": __version__,
        "notes": src.notes,
    }
    if model_name:
        attrs["model_name"] = model_name
    return attrs


def _size_from_name(path: str) -> int:
    """TF-Slim names checkpoints by width and resolution (mobilenet_v1_0.5_160.ckpt); 224 else."""
    m = re.search(r"_(\d{2,3})(?:_quant)?(?:\.ckpt|\.tflite|\.h5|$|/)", os.path.basename(path.rstrip("/")) + "/")
    return int(m.group(1)) if m and int(m.group(1)) >= spec.MIN_INPUT_SIZE else 224


def _plausible(size: tuple[int, int] | None) -> tuple[int, int] | None:
    """A source's declared input size, if a weights file could record it (else None: the
    size then comes from the file name, or is 224)."""
    ok = size and all(spec.MIN_INPUT_SIZE <= s <= weights_file.MAX_INPUT_SIZE for s in size)
    return size if ok else None


def _input_size(input_size) -> tuple[int, int]:
    if np.isscalar(input_size):
        return (int(input_size), int(input_size))
    if len(input_size) != 2:
        raise UnsupportedFormatError(f"input size must be one or two integers, got {input_size}")
    return tuple(int(s) for s in input_size)
