"""The mobilenet-np weights file: HDF5, format version 1 (documented in docs/weights-format.md).

One dataset per model tensor, at the path of its TF-Slim name
(``MobilenetV2/expanded_conv_3/project/weights``), in TF-Slim layout, float32; root attributes
say what the file holds and where it came from.  This module writes such files atomically and
reads them back with every shape checked; it does not know how foreign formats are parsed
(that is ``weights_tools``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import spec
from .atomic import write_atomically
from .errors import ArchitectureError, CorruptFileError, MissingFileError, UnsupportedFormatError

FORMAT_NAME = "mobilenet-np-weights"
FORMAT_VERSION = 1
READABLE_VERSIONS = (1,)

# Root attributes every version-1 file carries (name -> what it means); see docs/weights-format.md.
REQUIRED_ATTRS = (
    "format", "format_version", "architecture", "depth_multiplier", "default_input_size",
    "input_range", "num_classes", "labels_offset", "batchnorm_folded", "batchnorm_epsilon",
    "weights_choice", "source_format", "source_files", "converter_version",
)


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (for provenance records)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(chunk_size):
                digest.update(chunk)
    except FileNotFoundError:
        raise MissingFileError(f"{os.fspath(path)}: file not found") from None
    return digest.hexdigest()


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

    def write_h5(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            for key, value in full.items():
                f.attrs[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
            for name in sorted(tensors):
                f.create_dataset(name, data=np.ascontiguousarray(tensors[name], dtype=np.float32))

    write_atomically(path, write_h5)


def _attr(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            pass
    return value


def open_hdf5(path: str | os.PathLike, what: str = "file"):
    """An HDF5 file opened for reading, or a project error naming the path."""
    import h5py

    if not os.path.isfile(path):
        raise MissingFileError(f"{os.fspath(path)}: no such {what}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise UnsupportedFormatError(f"{os.fspath(path)}: not an HDF5 file ({exc})") from None


def is_weights_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an HDF5 file carrying this format's version attribute."""
    try:
        with open_hdf5(path) as f:
            return "format_version" in f.attrs
    except (MissingFileError, UnsupportedFormatError):
        return False


def read(path: str | os.PathLike) -> WeightsFile:
    """Read and check a weights file: format name, version, architecture, every shape."""
    import h5py

    path = str(path)
    with open_hdf5(path, "weights file") as f:
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
        if attrs.get("format") != FORMAT_NAME:
            raise UnsupportedFormatError(
                f"{path}: not a mobilenet-np weights file (no format={FORMAT_NAME!r} attribute); "
                "convert the source with 'weights-tools convert'")
        version = attrs.get("format_version")
        if version not in READABLE_VERSIONS:
            raise UnsupportedFormatError(
                f"{path}: weights format version {version} is not readable by this mobilenet-np "
                f"(reads {', '.join(map(str, READABLE_VERSIONS))}); upgrade mobilenet-np")
        missing = [a for a in REQUIRED_ATTRS if a not in attrs]
        if missing:
            raise CorruptFileError(f"{path}: root attribute(s) missing: {', '.join(missing)}")
        if attrs["architecture"] not in spec.ARCHITECTURES:
            raise UnsupportedFormatError(f"{path}: unknown architecture {attrs['architecture']!r}")
        tensors: dict[str, np.ndarray] = {}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                tensors[name] = obj

        f.visititems(visit)
        arch = spec.build(attrs["architecture"], float(attrs["depth_multiplier"]))
        check_tensors(arch, tensors, int(attrs["num_classes"]), bool(attrs["batchnorm_folded"]), path)
        try:
            arrays = {k: np.asarray(v[()], dtype=np.float32) for k, v in tensors.items()}
        except OSError as exc:
            raise CorruptFileError(f"{path}: cannot read tensor data ({exc})") from None
    for name, value in arrays.items():
        if not np.all(np.isfinite(value)):
            raise CorruptFileError(f"{path}: tensor {name} holds NaN or infinite values")
    return WeightsFile(path, arrays, attrs)
