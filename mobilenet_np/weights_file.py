"""The mobilenet-np weights file: HDF5, format versions 1 and 2 (documented in docs/weights-format.md).

One dataset per model tensor, at the path of its TF-Slim name
(``MobilenetV2/expanded_conv_3/project/weights``), in TF-Slim layout, float32; root attributes
say what the file holds and where it came from.  Version 2 holds a quantized model: integer
datasets with their quantization, and the activations' (``weights_file_v2``).  This module
writes such files atomically (``write``, ``write_quantized``) and reads both versions back with
every shape checked (``read``); it does not know how foreign formats are parsed (that is
``weights_tools``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import spec
from .atomic import write_atomically
from . import weights_file_v2 as v2
from .errors import ArchitectureError, CorruptFileError, MissingFileError, UnsupportedFormatError, WeightsError
# Shared with version 2, re-exported: callers import these from here.
from .weights_common import (FORMAT_NAME, MAX_CLASSES, MAX_DEPTH_MULTIPLIER, MAX_INPUT_SIZE,  # noqa: F401
                             REQUIRED_ATTRS, _attr, check_attrs, check_layout, file_sha256, hdf5_datasets,
                             open_hdf5, read_regular_file, require_regular_file, standard_float, stored_in_file)

FORMAT_VERSION = 1
READABLE_VERSIONS = (1, 2)


@dataclass
class WeightsFile:
    """A weights file read into memory: the tensors by TF-Slim name and the root attributes."""

    path: str
    tensors: dict[str, np.ndarray]
    attrs: dict

    @property
    def architecture(self) -> spec.Architecture:
        return spec.build(self.attrs["architecture"], float(self.attrs["depth_multiplier"]))


def mismatches(arch: spec.Architecture, tensors: dict, num_classes: int, folded: bool) -> list[str]:
    """What keeps ``tensors`` from being this architecture: missing, unknown, misshapen tensors."""
    expected = arch.variables(num_classes, folded)
    missing = sorted(set(expected) - set(tensors))
    unknown = sorted(set(tensors) - set(expected))
    wrong = [f"{k} has shape {list(np.shape(tensors[k]))}, expected {list(expected[k])}"
             for k in sorted(set(expected) & set(tensors)) if tuple(np.shape(tensors[k])) != expected[k]]
    return [f"missing tensor {k}" for k in missing] + [f"unknown tensor {k}" for k in unknown] + wrong


def check_tensors(arch: spec.Architecture, tensors: dict, num_classes: int, folded: bool,
                  where: str) -> None:
    """Every expected tensor present with its exact shape, and nothing else: or one clear error."""
    problems = mismatches(arch, tensors, num_classes, folded)
    if problems:
        raise ArchitectureError(describe_mismatch(arch, num_classes, problems, where))


def describe_mismatch(arch: spec.Architecture, num_classes: int, problems: list[str], where: str) -> str:
    shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
    return (f"{where}: not a {arch.name} with depth multiplier {arch.depth_multiplier:g} and "
            f"{num_classes} classes: {shown}")


def write(path: str | os.PathLike, tensors: dict[str, np.ndarray], attrs: dict) -> None:
    """Write a version-1 file atomically: a temporary file beside ``path``, renamed at the end.

    On any failure (including KeyboardInterrupt) the temporary file is removed and ``path``
    is left as it was.
    """
    import h5py

    path = Path(path)
    arch = spec.build(attrs["architecture"], float(attrs["depth_multiplier"]))
    check_tensors(arch, tensors, int(attrs["num_classes"]), bool(attrs["batchnorm_folded"]), str(path))
    full = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **attrs}
    missing = [a for a in REQUIRED_ATTRS if a not in full]
    if missing:
        raise ValueError(f"{path}: attributes missing: {', '.join(missing)}")
    check_attrs(full, str(path))
    check_values(tensors, str(path))

    def write_h5(tmp: str) -> None:
        # Fletcher-32 on each tensor's one chunk: a damaged byte of a weight is refused on read
        # instead of read as another value.  The metadata keeps HDF5's default (1.8) layout: the
        # 1.10 layout would checksum it too, but HDF5 1.14.6 corrupts its heap (double free,
        # then a crash) on some damaged 1.10 object headers (found by fuzzing); check_layout
        # covers damaged data addresses instead.
        with h5py.File(tmp, "w") as f:
            for key, value in full.items():
                f.attrs[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
            for name in sorted(tensors):
                value = np.ascontiguousarray(tensors[name], dtype=np.float32)
                checked = {"chunks": value.shape, "fletcher32": True} if value.size else {}
                f.create_dataset(name, data=value, **checked)

    write_atomically(path, write_h5)


def write_quantized(path: str | os.PathLike, tensors: dict[str, v2.QuantizedTensor],
                    activations: dict[str, v2.ActivationQuantization], attrs: dict) -> None:
    """Write a version-2 (quantized) file atomically, after every check ``read`` makes.

    ``tensors``: TF-Slim name -> ``QuantizedTensor`` (kernels uint8/int8 in the TF-Slim layouts,
    biases int32); ``activations``: the names of ``weights_file_v2.activation_names`` ->
    ``ActivationQuantization``; ``attrs``: version 1's root attributes plus ``quantization``,
    ``global_pool_op``, ``logits_op`` (with a classifier), ``output_op``, ``softmax_beta``
    (with SOFTMAX) and optionally ``global_pool_keep_dims``."""
    import h5py

    path = Path(path)
    full = {**attrs, "format": FORMAT_NAME, "format_version": v2.FORMAT_VERSION, "batchnorm_folded": True}
    check_quantized_file(full, tensors, activations, str(path))

    def write_h5(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:      # the metadata layout of ``write``, for the same reason
            for key, value in full.items():
                f.attrs[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
            v2.write_datasets(f, tensors, activations)

    write_atomically(path, write_h5)


def check_quantized_file(attrs: dict, tensors: dict, activations: dict, where: str) -> spec.Architecture:
    """Every check of a version-2 model (attributes, names, shapes, values), as ``read`` makes them."""
    check_attrs(attrs, where)
    v2.check_v2_attrs(attrs, where)
    arch = spec.build(attrs["architecture"], float(attrs["depth_multiplier"]))
    check_tensors(arch, tensors, int(attrs["num_classes"]), True, where)
    v2.check_quantized(arch, tensors, activations, attrs, where)
    return arch


def check_values(tensors: dict, where: str) -> None:
    """Values a model can use: floating point, finite, and BatchNorm variances not negative.
    The one value check, run by ``write`` (so by every conversion) and by ``read`` (so by
    ``weights-tools verify`` and ``mnp.load``) alike."""
    for name in sorted(tensors):
        value = np.asarray(tensors[name])
        if value.dtype.kind != "f":
            raise ArchitectureError(f"{where}: tensor {name} has dtype {value.dtype}; weights must be "
                                    "floating point")
        if not np.all(np.isfinite(value)):
            raise CorruptFileError(f"{where}: tensor {name} holds NaN or infinite values")
        if name.endswith("/BatchNorm/moving_variance") and np.any(value < 0):
            raise CorruptFileError(f"{where}: tensor {name} holds negative variances")


def is_weights_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an HDF5 file carrying this format's version attribute."""
    try:
        with open_hdf5(path) as f:
            return "format_version" in f.attrs
    except (MissingFileError, UnsupportedFormatError):
        return False


def read(path: str | os.PathLike) -> WeightsFile | v2.QuantizedWeightsFile:
    """Read and check a weights file: format name, version, attributes, every shape (all before
    any tensor data is read), then every value (``check_values``; version 2:
    ``weights_file_v2.check_quantized``).  A version-2 file gives a ``QuantizedWeightsFile``."""
    path = str(path)
    with open_hdf5(path, "weights file") as f:
        try:
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            tensors = _checked_datasets(f, attrs, path)
            if attrs["format_version"] == v2.FORMAT_VERSION:
                quantized = {k: v2.read_tensor(v, k, path) for k, v in tensors.items()}
                activations = v2.read_activations(f, path)
            else:
                arrays = {k: _read_float32(v, k, path) for k, v in tensors.items()}
        except (OSError, RuntimeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            if isinstance(exc, WeightsError):
                raise
            raise CorruptFileError(f"{path}: damaged HDF5 file ({type(exc).__name__}: {exc})") from None
    if attrs["format_version"] == v2.FORMAT_VERSION:
        check_quantized_file(attrs, quantized, activations, path)
        return v2.QuantizedWeightsFile(path, quantized, activations, attrs)
    check_values(arrays, path)
    return WeightsFile(path, arrays, attrs)


def _checked_datasets(f, attrs: dict, path: str) -> dict:
    """The file's datasets, after the format, the attributes and every shape are checked."""
    if attrs.get("format") != FORMAT_NAME:
        raise UnsupportedFormatError(
            f"{path}: not a mobilenet-np weights file (no format={FORMAT_NAME!r} attribute); "
            "convert the source with 'weights-tools convert'")
    version = attrs.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise UnsupportedFormatError(
            f"{path}: weights format version {version} is not readable by this mobilenet-np "
            f"(reads {', '.join(map(str, READABLE_VERSIONS))}); upgrade mobilenet-np")
    check_attrs(attrs, path)
    if version == v2.FORMAT_VERSION:
        v2.check_v2_attrs(attrs, path)
    tensors = hdf5_datasets(f, path)
    arch = spec.build(attrs["architecture"], float(attrs["depth_multiplier"]))
    check_tensors(arch, tensors, int(attrs["num_classes"]), bool(attrs["batchnorm_folded"]), path)
    check_layout(tensors.values(), path)
    return tensors


def _read_float32(dataset, name: str, path: str) -> np.ndarray:
    """A dataset's data as float32; its shape was checked, so the read is bounded."""
    if dataset.dtype.kind != "f":
        raise ArchitectureError(f"{path}: tensor {name} has dtype {dataset.dtype}; weights must be "
                                "floating point")
    return np.asarray(dataset[()], dtype=np.float32)
