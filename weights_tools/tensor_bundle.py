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

import dataclasses
import math
import os
import re
from collections.abc import Iterator

import numpy as np

from mobilenet_np.errors import CorruptFileError, MissingFileError, UnsupportedFormatError

from . import crc32c
from .protowire import (
    FIXED32,
    LEN,
    VARINT,
    WireFormatError,
    as_int32,
    as_int64,
    iter_fields,
    iter_packed_varints,
    read_varint,
)
from .sstable import read_table

from mobilenet_np.weights_file import file_sha256  # noqa: E402  (re-exported: provenance hashing lives there)

__all__ = ["CheckpointReader", "file_sha256"]

# TensorFlow's DataType enum (types.proto) for the dtypes we can return, little-endian.
_NUMPY_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    8: np.dtype("<c8"),  # DT_COMPLEX64
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL, one byte per element
    17: np.dtype("<u2"),  # DT_UINT16
    18: np.dtype("<c16"),  # DT_COMPLEX128
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}
_DT_STRING = 7
_DT_BFLOAT16 = 14
try:  # bfloat16 has no NumPy dtype of its own; ml_dtypes (a TensorFlow dependency) has one
    import ml_dtypes

    _NUMPY_DTYPES[_DT_BFLOAT16] = np.dtype(ml_dtypes.bfloat16).newbyteorder("<")
except ImportError:  # pragma: no cover - depends on the environment
    pass
_DTYPE_NAMES = {
    0: "DT_INVALID", 1: "DT_FLOAT", 2: "DT_DOUBLE", 3: "DT_INT32", 4: "DT_UINT8",
    5: "DT_INT16", 6: "DT_INT8", 7: "DT_STRING", 8: "DT_COMPLEX64", 9: "DT_INT64",
    10: "DT_BOOL", 11: "DT_QINT8", 12: "DT_QUINT8", 13: "DT_QINT32", 14: "DT_BFLOAT16",
    15: "DT_QINT16", 16: "DT_QUINT16", 17: "DT_UINT16", 18: "DT_COMPLEX128", 19: "DT_HALF",
    20: "DT_RESOURCE", 21: "DT_VARIANT", 22: "DT_UINT32", 23: "DT_UINT64",
}  # fmt: skip

_READER_VERSION = 1  # the bundle format version we implement (TensorFlow's kTensorBundleVersion)
_MAX_RANK = 64  # NumPy's limit (TensorFlow allows 254)
_SHARD_NAME = re.compile(r"^(.*)\.data-\d{5,}-of-\d{5,}$")


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One decoded BundleEntryProto."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored
    sliced: bool  # a partitioned variable whose data lives in slice entries


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
        if entry.dtype == _DT_STRING:
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
        if entry.dtype == _DT_STRING:
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
        if entry.dtype == _DT_STRING:
            return _decode_strings(raw, entry, name, shard)
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

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(name) from None

    def _numpy_dtype(self, name: str, entry: _Entry) -> np.dtype:
        try:
            return _NUMPY_DTYPES[entry.dtype]
        except KeyError:
            label = _DTYPE_NAMES.get(entry.dtype, "unknown")
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


def _read_index(index_path: str) -> tuple[int, int, dict[str, _Entry]]:
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
    num_shards = _decode_header(table[0][1], index_path)
    entries: dict[str, _Entry] = {}
    for key, value in table[1:]:
        if key.startswith(b"\x00"):
            continue  # one slice of a partitioned variable, stored under an encoded name
        try:
            name = key.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptFileError(f"{index_path}: tensor name {key!r} is not UTF-8") from None
        entries[name] = _decode_entry(value, name, index_path)
    return num_shards, len(table) - 1, entries


def _decode_header(value: bytes, index_path: str) -> int:
    """Check a BundleHeaderProto (num_shards=1, endianness=2, version=3); return num_shards."""
    num_shards, endianness = 0, 0
    producer, min_consumer, bad_consumers = 0, 0, []
    try:
        for field, wire, v in iter_fields(value):
            if field == 1:
                num_shards = as_int32(_expect(wire, VARINT, "num_shards", v))
            elif field == 2:
                endianness = as_int32(_expect(wire, VARINT, "endianness", v))
            elif field == 3:
                for vf, vwire, vv in iter_fields(_expect(wire, LEN, "version", v)):
                    if vf == 1:
                        producer = as_int32(_expect(vwire, VARINT, "version.producer", vv))
                    elif vf == 2:
                        min_consumer = as_int32(_expect(vwire, VARINT, "version.min_consumer", vv))
                    elif vf == 3 and vwire == LEN:  # proto3 packs repeated scalars
                        bad_consumers.extend(as_int32(x) for x in iter_packed_varints(vv))
                    elif vf == 3:
                        bad_consumers.append(as_int32(_expect(vwire, VARINT, "version.bad_consumers", vv)))
    except WireFormatError as e:
        raise CorruptFileError(f"{index_path}: malformed checkpoint header: {e}") from None
    if endianness == 1:
        raise UnsupportedFormatError(f"{index_path}: big-endian checkpoint; only little-endian ones are supported")
    if endianness != 0:
        raise UnsupportedFormatError(f"{index_path}: unknown endianness value {endianness} in the header")
    if producer < 0:
        raise CorruptFileError(f"{index_path}: negative producer version {producer} in the header")
    if min_consumer > _READER_VERSION or _READER_VERSION in bad_consumers:
        raise UnsupportedFormatError(
            f"{index_path}: checkpoint format version {producer} needs a reader of version "
            f">= {min_consumer} (excluding {bad_consumers}); this reader is version {_READER_VERSION}"
        )
    return num_shards


def _decode_entry(value: bytes, name: str, index_path: str) -> _Entry:
    """BundleEntryProto: dtype=1, shape=2, shard_id=3, offset=4, size=5, crc32c=6, slices=7."""
    dtype = shard_id = offset = size = crc = 0
    dims: list[int] = []
    unknown_rank = sliced = False
    try:
        for field, wire, v in iter_fields(value):
            if field == 1:
                dtype = as_int32(_expect(wire, VARINT, "dtype", v))
            elif field == 2:  # TensorShapeProto: dim=2 (Dim: size=1, name=2), unknown_rank=3
                for sf, swire, sv in iter_fields(_expect(wire, LEN, "shape", v)):
                    if sf == 2:
                        dim_size = 0
                        for df, dwire, dv in iter_fields(_expect(swire, LEN, "shape.dim", sv)):
                            if df == 1:
                                dim_size = as_int64(_expect(dwire, VARINT, "shape.dim.size", dv))
                        dims.append(dim_size)
                    elif sf == 3:
                        unknown_rank = bool(_expect(swire, VARINT, "shape.unknown_rank", sv))
            elif field == 3:
                shard_id = as_int32(_expect(wire, VARINT, "shard_id", v))
            elif field == 4:
                offset = as_int64(_expect(wire, VARINT, "offset", v))
            elif field == 5:
                size = as_int64(_expect(wire, VARINT, "size", v))
            elif field == 6:
                crc = _expect(wire, FIXED32, "crc32c", v)
            elif field == 7:
                _expect(wire, LEN, "slices", v)
                sliced = True
    except WireFormatError as e:
        raise CorruptFileError(f"{index_path}: malformed entry for tensor {name!r}: {e}") from None

    def bad(problem: str) -> CorruptFileError:
        return CorruptFileError(f"{index_path}: entry for tensor {name!r}: {problem}")

    if unknown_rank or any(d < 0 for d in dims):
        raise bad(f"invalid shape {dims}{' (unknown rank)' if unknown_rank else ''}")
    if shard_id < 0 or offset < 0 or size < 0:
        raise bad(f"negative shard_id, offset or size ({shard_id}, {offset}, {size})")
    if len(dims) > _MAX_RANK:
        raise UnsupportedFormatError(f"{index_path}: tensor {name!r} has rank {len(dims)}, more than NumPy's {_MAX_RANK}")
    entry = _Entry(dtype, tuple(dims), shard_id, offset, size, crc, sliced)
    if not sliced:
        _check_size(entry, name, index_path)
    return entry


def _check_size(entry: _Entry, name: str, index_path: str) -> None:
    """The stored size must be what the shape and dtype imply (strings: a lower bound)."""
    count = math.prod(entry.shape)
    if entry.dtype == _DT_STRING:
        # Each element costs at least its 1-byte varint length; the lengths' CRC 4 more.
        needed = count + 4 if count else 0
        if entry.size < needed:
            raise CorruptFileError(
                f"{index_path}: entry for tensor {name!r}: {entry.size} bytes cannot hold {count} strings"
            )
        itemsize = 8
    elif entry.dtype in _NUMPY_DTYPES:
        itemsize = _NUMPY_DTYPES[entry.dtype].itemsize
        if entry.size != count * itemsize:
            raise CorruptFileError(
                f"{index_path}: entry for tensor {name!r}: size {entry.size} bytes, but shape "
                f"{list(entry.shape)} of {_DTYPE_NAMES.get(entry.dtype)} needs {count * itemsize}"
            )
    else:
        return  # unsupported dtype: refused when the tensor is asked for
    # NumPy refuses even empty arrays whose nonzero dimensions multiply past its limit.
    if math.prod(d for d in entry.shape if d) * itemsize >= 1 << 63:
        raise UnsupportedFormatError(f"{index_path}: tensor {name!r} has shape {list(entry.shape)}, too large for NumPy")


def _expect(wire: int, wanted: int, field: str, value):
    if wire != wanted:
        raise WireFormatError(f"field {field} has wire type {wire}, expected {wanted}")
    return value


# --- string tensors -------------------------------------------------------------


def _decode_strings(raw: bytearray, entry: _Entry, name: str, shard: str) -> np.ndarray:
    """DT_STRING data: varint64 lengths, a masked CRC of the lengths, then the bytes.

    The entry's CRC covers the lengths as little-endian uint32 (uint64 if larger), the
    4 stored CRC bytes, and the string bytes -- not the varint bytes themselves.
    """
    count = math.prod(entry.shape)
    out = np.empty(count, dtype=object)
    if not raw:  # TensorFlow itself accepts a zero-size entry for an empty tensor
        return out.reshape(entry.shape)
    size = len(raw)
    lengths = []
    pos = 0
    crc = 0
    try:
        for _ in range(count):
            length, pos = read_varint(raw, pos, size)
            lengths.append(length)
            crc = crc32c.extend(crc, length.to_bytes(4 if length <= 0xFFFFFFFF else 8, "little"))
    except WireFormatError as e:
        raise CorruptFileError(f"{shard}: string tensor {name!r}: {e}") from None
    if size - pos < 4:
        raise CorruptFileError(f"{shard}: string tensor {name!r}: lengths run past the tensor's {size} bytes")
    stored_lengths_crc = int.from_bytes(raw[pos : pos + 4], "little")
    if stored_lengths_crc != crc32c.mask(crc):
        raise CorruptFileError(
            f"{shard}: crc32c mismatch for the string lengths of tensor {name!r} "
            f"(stored 0x{stored_lengths_crc:08x}, computed 0x{crc32c.mask(crc):08x})"
        )
    crc = crc32c.extend(crc, raw[pos : pos + 4])
    pos += 4
    if sum(lengths) != size - pos:
        raise CorruptFileError(
            f"{shard}: string tensor {name!r}: lengths add up to {sum(lengths)} bytes, "
            f"but {size - pos} follow them"
        )
    crc = crc32c.extend(crc, memoryview(raw)[pos:])
    if crc32c.mask(crc) != entry.crc32c:
        raise CorruptFileError(
            f"{shard}: crc32c mismatch for tensor {name!r} "
            f"(stored 0x{entry.crc32c:08x}, computed 0x{crc32c.mask(crc):08x})"
        )
    for i, length in enumerate(lengths):
        out[i] = bytes(raw[pos : pos + length])
        pos += length
    return out.reshape(entry.shape)

