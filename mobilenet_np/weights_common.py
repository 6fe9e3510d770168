"""What both weights-file versions share: safe opening of files, the root attributes' checks,
and the HDF5 storage checks (documented in docs/weights-format.md).

``weights_file`` (version 1, and the reader of both versions) and ``weights_file_v2`` (the
quantized datasets of version 2) import these; ``weights_file`` re-exports them, so callers keep
importing them from there.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import stat

import numpy as np

from . import spec
from .errors import CorruptFileError, MissingFileError, UnsupportedFormatError

FORMAT_NAME = "mobilenet-np-weights"

# Root attributes every file carries (name -> what it means); see docs/weights-format.md.
REQUIRED_ATTRS = (
    "format", "format_version", "architecture", "depth_multiplier", "default_input_size",
    "input_range", "num_classes", "labels_offset", "batchnorm_folded", "batchnorm_epsilon",
    "weights_choice", "source_format", "source_files", "converter_version",
)


def require_regular_file(path: str | os.PathLike, what: str = "file") -> str:
    """``path`` as a string if it is a regular file (or a symlink to one), else a project error.

    Opening a FIFO, device or socket can block forever or read without end, so inputs are
    checked with ``stat`` (which never blocks) before they are opened."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise MissingFileError(f"{path}: cannot access the {what} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO, device or socket"
        raise UnsupportedFormatError(f"{path}: is {kind}, not a regular file; not a {what}")
    return path


def read_regular_file(path: str | os.PathLike, what: str = "file") -> bytes:
    """The bytes of a regular file (see ``require_regular_file``), or a project error."""
    path = require_regular_file(path, what)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise MissingFileError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (for provenance records)."""
    digest = hashlib.sha256()
    require_regular_file(path)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(chunk_size):
                digest.update(chunk)
    except FileNotFoundError:
        raise MissingFileError(f"{os.fspath(path)}: file not found") from None
    return digest.hexdigest()


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
        except (json.JSONDecodeError, RecursionError):
            pass
    return value


# Bounds on what a root attribute may say.  Widths beyond MAX_DEPTH_MULTIPLIER would make every
# shape, and the memory a reader or model sizes from them, grow with the square of the width.
MAX_DEPTH_MULTIPLIER = 3.0
MAX_INPUT_SIZE = 4096
MAX_CLASSES = 100_000


def check_attrs(attrs: dict, where: str) -> dict:
    """The root attributes checked for type and range, or one CorruptFileError naming the first
    bad one: what ``read`` (``verify``, ``mnp.load``) and ``write`` both accept."""
    def bad(name: str, expected: str) -> CorruptFileError:
        return CorruptFileError(f"{where}: root attribute {name}={attrs.get(name)!r} is not {expected}")

    def number(name: str, kinds=(int, float)) -> float:
        value = attrs[name]
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise bad(name, "a number" if float in kinds else "an integer")
        return value

    missing = [a for a in REQUIRED_ATTRS if a not in attrs]
    if missing:
        raise CorruptFileError(f"{where}: root attribute(s) missing: {', '.join(missing)}")
    if attrs["architecture"] not in spec.ARCHITECTURES:
        raise UnsupportedFormatError(f"{where}: unknown architecture {attrs['architecture']!r}")
    if not 0 < number("depth_multiplier") <= MAX_DEPTH_MULTIPLIER:
        raise bad("depth_multiplier", f"a width in (0, {MAX_DEPTH_MULTIPLIER:g}]")
    size = attrs["default_input_size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and spec.MIN_INPUT_SIZE <= v <= MAX_INPUT_SIZE
            for v in size)):
        raise bad("default_input_size", f"[height, width] with sizes from {spec.MIN_INPUT_SIZE} "
                                        f"to {MAX_INPUT_SIZE}")
    if not 0 <= number("num_classes", (int,)) <= MAX_CLASSES:
        raise bad("num_classes", f"a class count from 0 to {MAX_CLASSES}")
    if number("labels_offset", (int,)) not in (0, 1):
        raise bad("labels_offset", "0 or 1")
    if not isinstance(attrs["batchnorm_folded"], (bool, np.bool_)) and attrs["batchnorm_folded"] not in (0, 1):
        raise bad("batchnorm_folded", "a boolean")
    epsilon = number("batchnorm_epsilon")
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise bad("batchnorm_epsilon", "a positive finite number")
    # input_range "[-1, 1]" reads back as a JSON list (every "[..." attribute does).
    for name in ("input_range", "weights_choice", "source_format", "converter_version"):
        if not isinstance(attrs[name], (str, list) if name == "input_range" else str):
            raise bad(name, "a string")
    if not isinstance(attrs["source_files"], list):
        raise bad("source_files", "a JSON list")
    if not isinstance(attrs.get("notes", []), list):
        raise bad("notes", "a JSON list")
    return attrs


def stored_in_file(dataset, where: str) -> None:
    """Refuse an HDF5 dataset whose bytes live outside the file (external raw storage or a
    virtual dataset): they could come from any file on the machine, or block on a FIFO.
    Checked from the dataset's metadata, before any of its data is read."""
    if dataset.is_virtual or dataset.id.get_create_plist().get_external_count() > 0:
        raise UnsupportedFormatError(f"{where}: dataset {dataset.name} is not stored in the file itself "
                                     "(external or virtual storage); refused")


def standard_float(dataset, where: str) -> None:
    """Refuse a floating-point dataset whose HDF5 type is not a standard IEEE one: a damaged
    datatype message (say, its exponent bias) makes HDF5 convert every value wrongly, and
    no data checksum sees it, since the stored bytes are intact."""
    import h5py

    if dataset.dtype.kind == "f" and not any(dataset.id.get_type().equal(t) for t in (
            h5py.h5t.IEEE_F16LE, h5py.h5t.IEEE_F16BE, h5py.h5t.IEEE_F32LE, h5py.h5t.IEEE_F32BE,
            h5py.h5t.IEEE_F64LE, h5py.h5t.IEEE_F64BE)):
        raise CorruptFileError(f"{where}: dataset {dataset.name} has a non-standard floating-point "
                               "type (a damaged datatype?); refused")


def hdf5_datasets(group, where: str) -> dict:
    """Every dataset below ``group`` by relative path, each checked by ``stored_in_file`` and
    ``standard_float``.
    A damaged object header makes h5py's visit fail with RuntimeError or KeyError; that is a
    damaged file, reported as such.  Callers run ``check_layout`` once the shapes are known
    to be the architecture's."""
    import h5py

    found = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            stored_in_file(obj, where)
            standard_float(obj, where)
            found[name] = obj

    try:
        group.visititems(visit)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise CorruptFileError(f"{where}: damaged HDF5 structure ({exc})") from None
    return found


def check_layout(datasets, where: str) -> None:
    """Where each dataset's bytes lie must make sense: inside the file, no two datasets on the
    same bytes, and data present at all.  Files without checksums (Keras .h5, older weights
    files) would otherwise read a damaged data address as other bytes of the file, or as the
    fill value, silently.  Run only after the shapes are checked: the storage size of a
    chunked dataset walks its chunk index, which a hostile shape can make astronomically long."""
    datasets = list(datasets)
    if not datasets:
        return
    file_size = datasets[0].file.id.get_filesize()
    spans = []
    for dataset in datasets:
        size = dataset.id.get_storage_size()
        if size == 0 and dataset.size:
            raise CorruptFileError(f"{where}: dataset {dataset.name} has no data stored")
        offset = dataset.id.get_offset()              # None unless contiguous
        if offset is not None:
            if offset + size > file_size:
                raise CorruptFileError(f"{where}: dataset {dataset.name} lies past the end of the file "
                                       "(truncated or damaged)")
            spans.append((offset, offset + size, dataset.name))
    spans.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise CorruptFileError(f"{where}: datasets {first} and {second} share bytes; the file is damaged")


def open_hdf5(path: str | os.PathLike, what: str = "file"):
    """An HDF5 file opened for reading, or a project error naming the path."""
    import h5py

    require_regular_file(path, what)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise UnsupportedFormatError(f"{os.fspath(path)}: not an HDF5 file ({exc})") from None

