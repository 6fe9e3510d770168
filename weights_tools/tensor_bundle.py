"""Read TensorFlow V2 checkpoints ("tensor bundles") with NumPy alone.

A checkpoint with prefix ``P`` is the index ``P.index`` -- an SSTable (see
``sstable.py``) mapping each tensor name to a serialized ``BundleEntryProto`` (dtype,
shape, shard, offset, size, masked CRC-32C), with a ``BundleHeaderProto`` under the
empty key -- and the data shards ``P.data-NNNNN-of-MMMMM`` holding the raw
little-endian tensor bytes.

Public API: :class:`CheckpointReader` and :func:`file_sha256`.

Every byte that TensorFlow checks is checked here too (block and tensor CRCs, header
versions, sizes against shapes), plus the structure TensorFlow merely trusts (key
order, restart points, footer padding).  Damaged bytes raise :class:`CorruptFileError`,
files that are not (supported) checkpoints :class:`UnsupportedFormatError`, absent
files :class:`MissingFileError` -- each message one line naming the file; no other
exception escapes on bad bytes.  Sizes and offsets are checked against the real file
sizes before anything is allocated or read.

Deliberately not here: TensorFlow (never imported), writing, partitioned variables
(entries with slices are listed but refused on read), big-endian checkpoints, variant
and resource tensors, and V1 (``.ckpt`` TensorSliceReader) checkpoints.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import numpy as np

from mobilenet_np.errors import (
    CorruptFileError,
    MissingFileError,
    UnsupportedFormatError,
)
from mobilenet_np.weights_file import file_sha256  # noqa: E402  (re-exported: provenance hashing lives there)

from . import crc32c
from .bundle_entries import (
    DT_STRING,
    DTYPE_NAMES,
    NUMPY_DTYPES,
    Entry,
    decode_entry,
    decode_header,
    decode_strings,
)
from .sstable import read_table

__all__ = ["CheckpointReader", "file_sha256"]

_SHARD_NAME = re.compile(r"^(.*)\.data-\d{5,}-of-\d{5,}$")


class CheckpointReader:
    """Random access to the tensors of one TensorFlow V2 checkpoint.

    ``path`` may be a checkpoint prefix (``dir/model.ckpt``), that prefix plus
    ``.index`` or one of its ``.data-*`` shards, a directory holding a ``checkpoint``
    state file (its ``model_checkpoint_path`` is used, relative to the directory unless
    absolute), or a TF-Hub / SavedModel directory with ``variables/variables.index``.

    The index is read and fully validated on construction (and every data shard must
    exist); tensor bytes are read, and their CRC-32C checked, only by :meth:`get_tensor`.
    No file stays open between calls.

    Attributes: ``prefix``, ``index_path``, ``data_paths`` (one per shard, in order).
    """

    def __init__(self, path: str | os.PathLike):
        self.prefix = _resolve_prefix(os.fspath(path))
        self.index_path = self.prefix + ".index"
        num_shards, num_records, entries = _read_index(self.index_path)
        self._entries = entries
        # TensorFlow's MergeV2Checkpoints gives every shard at least one entry, so a
        # larger count is damage -- and must not make us build a huge list of names.
        if num_shards < 1 or num_shards > max(1, num_records):
            raise CorruptFileError(
                f"{self.index_path}: header claims {num_shards} data shards for {num_records} entries"
            )
        self.data_paths = []
        for k in range(num_shards):
            shard = f"{self.prefix}.data-{k:05d}-of-{num_shards:05d}"
            if not os.path.isfile(shard):
                raise MissingFileError(f"{shard}: data shard {k} of {num_shards} is missing")
            self.data_paths.append(shard)
        for name, entry in entries.items():
            if not entry.sliced and entry.shard_id >= num_shards:
                raise CorruptFileError(
                    f"{self.index_path}: tensor {name!r} is in shard {entry.shard_id} "
                    f"but the checkpoint has {num_shards}"
                )

    def __repr__(self) -> str:
        return f"CheckpointReader({self.prefix!r}, {len(self._entries)} tensors)"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        """Tensor names, in the index's (bytewise sorted) order."""
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor ``name`` (``KeyError`` if absent)."""
        return self._entry(name).shape

    def dtype(self, name: str) -> np.dtype:
        """NumPy dtype ``get_tensor(name)`` returns (``object`` holding ``bytes`` for strings)."""
        entry = self._entry(name)
        if entry.dtype == DT_STRING:
            return np.dtype(object)
        return self._numpy_dtype(name, entry).newbyteorder("=")

    def get_tensor(self, name: str) -> np.ndarray:
        """A fresh, writable, native-byte-order array holding tensor ``name``.

        Raises ``KeyError`` for an unknown name, :class:`CorruptFileError` if the data
        is truncated or fails its CRC-32C, :class:`UnsupportedFormatError` for dtypes
        we do not read and for partitioned variables.
        """
        entry = self._entry(name)
        if entry.sliced:
            raise UnsupportedFormatError(
                f"{self.index_path}: tensor {name!r} is a partitioned variable (saved in slices); not supported"
            )
        if entry.dtype == DT_STRING:
            dtype = np.dtype(object)
        else:
            dtype = self._numpy_dtype(name, entry)
        shard = self.data_paths[entry.shard_id]
        try:
            f = open(shard, "rb")
        except FileNotFoundError:
            raise MissingFileError(f"{shard}: data shard {entry.shard_id} has disappeared") from None
        with f:
            file_size = os.fstat(f.fileno()).st_size
            if entry.offset + entry.size > file_size:
                raise CorruptFileError(
                    f"{shard}: tensor {name!r} occupies bytes [{entry.offset}, {entry.offset + entry.size}) "
                    f"but the file has only {file_size} (truncated?)"
                )
            f.seek(entry.offset)
            raw = _read_exact(f, entry.size, shard, f"tensor {name!r}")
        if entry.dtype == DT_STRING:
            return decode_strings(raw, entry, name, shard)
        computed = crc32c.mask(crc32c.value(raw))
        if computed != entry.crc32c:
            raise CorruptFileError(
                f"{shard}: crc32c mismatch for tensor {name!r} "
                f"(stored 0x{entry.crc32c:08x}, computed 0x{computed:08x})"
            )
        array = np.frombuffer(raw, dtype=dtype).reshape(entry.shape)  # writable: raw is a bytearray
        if not dtype.isnative:
            array = array.astype(dtype.newbyteorder("="))
        return array

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(name, get_tensor(name))`` for every tensor, in index order."""
        for name in self._entries:
            yield name, self.get_tensor(name)

    def _entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(name) from None

    def _numpy_dtype(self, name: str, entry: Entry) -> np.dtype:
        try:
            return NUMPY_DTYPES[entry.dtype]
        except KeyError:
            label = DTYPE_NAMES.get(entry.dtype, "unknown")
            raise UnsupportedFormatError(
                f"{self.index_path}: tensor {name!r} has unsupported dtype {label} ({entry.dtype})"
            ) from None


# --- locating the checkpoint ------------------------------------------------------


def _resolve_prefix(path: str) -> str:
    if os.path.isdir(path):
        return _prefix_in_directory(path)
    if path.endswith(".index"):
        if not os.path.isfile(path):
            raise MissingFileError(f"{path}: checkpoint index not found")
        return path[: -len(".index")]
    if os.path.isfile(path + ".index"):
        return path
    shard = _SHARD_NAME.match(path)
    if shard and os.path.isfile(path):
        return _resolve_prefix(shard.group(1))
    if os.path.isfile(path):
        raise UnsupportedFormatError(
            f"{path}: not a TensorFlow checkpoint (expected a prefix P with P.index, "
            "P.index itself, or a checkpoint directory)"
        )
    raise MissingFileError(f"{path}.index: checkpoint index not found (and {path} is not a directory)")


def _prefix_in_directory(directory: str) -> str:
    state = os.path.join(directory, "checkpoint")
    if os.path.isfile(state):
        prefix = _model_checkpoint_path(state)
        if not os.path.isabs(prefix):
            prefix = os.path.join(directory, prefix)
        if not os.path.isfile(prefix + ".index"):
            raise MissingFileError(f"{prefix}.index: checkpoint index named by {state} not found")
        return prefix
    variables = os.path.join(directory, "variables", "variables")
    if os.path.isfile(variables + ".index"):
        return variables
    for marker in ("saved_model.pb", "saved_model.pbtxt", "tfhub_module.pb"):
        if os.path.isfile(os.path.join(directory, marker)):
            raise MissingFileError(f"{variables}.index: {directory} has {marker} but no variables index")
    raise UnsupportedFormatError(
        f"{directory}: not a checkpoint directory (no 'checkpoint' file and no variables/variables.index)"
    )


_STATE_LINE = re.compile(rb'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"\s*$', re.MULTILINE)
_TEXT_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.DOTALL)
_SIMPLE_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b'"': b'"', b"'": b"'", b"\\": b"\\"}


def _model_checkpoint_path(state: str) -> str:
    """``model_checkpoint_path`` from a text-format CheckpointState file."""
    with open(state, "rb") as f:
        text = f.read(1 << 20)  # the state file is a few lines; ignore anything absurd
    m = _STATE_LINE.search(text)
    if not m:
        raise UnsupportedFormatError(f"{state}: no model_checkpoint_path line; not a checkpoint state file")

    # Protobuf text format C-escapes strings (non-ASCII bytes usually as octal).
    def unescape(e: re.Match) -> bytes:
        octal, hexa, char = e.groups()
        if octal or hexa:
            return bytes([int(octal, 8) & 0xFF if octal else int(hexa, 16)])
        if char not in _SIMPLE_ESCAPES:
            raise CorruptFileError(f"{state}: unknown escape sequence {char!r} in model_checkpoint_path")
        return _SIMPLE_ESCAPES[char]

    try:
        return _TEXT_ESCAPE.sub(unescape, m.group(1)).decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptFileError(f"{state}: model_checkpoint_path is not UTF-8") from None


# --- the index ----------------------------------------------------------------------


def _read_exact(f, n: int, path: str, what: str) -> bytearray:
    """Read exactly ``n`` bytes from ``f`` (callers check ``n`` against the file size first)."""
    buf = bytearray(n)
    got = f.readinto(buf)
    if got != n:
        raise CorruptFileError(f"{path}: file ended after {got} of the {n} bytes of {what}")
    return buf


def _read_index(index_path: str) -> tuple[int, int, dict[str, Entry]]:
    """(num_shards, number of non-header records, tensor name -> entry) of an index file."""
    try:
        f = open(index_path, "rb")
    except FileNotFoundError:
        raise MissingFileError(f"{index_path}: checkpoint index not found") from None
    with f:
        data = bytes(_read_exact(f, os.fstat(f.fileno()).st_size, index_path, "the index"))
    table = read_table(data, index_path)
    if not table or table[0][0] != b"":
        raise UnsupportedFormatError(
            f"{index_path}: an SSTable without a BundleHeaderProto; not a TensorFlow V2 checkpoint index"
        )
    num_shards = decode_header(table[0][1], index_path)
    entries: dict[str, Entry] = {}
    for key, value in table[1:]:
        if key.startswith(b"\x00"):
            continue  # one slice of a partitioned variable, stored under an encoded name
        try:
            name = key.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptFileError(f"{index_path}: tensor name {key!r} is not UTF-8") from None
        entries[name] = decode_entry(value, name, index_path)
    return num_shards, len(table) - 1, entries
