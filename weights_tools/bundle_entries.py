"""The records of a TensorFlow checkpoint index: ``BundleHeaderProto`` and ``BundleEntryProto``
(dtype, shape, shard, offset, size, CRC), decoded from protobuf wire format and checked, and
the layout of string tensors in the data shards.

Used by ``tensor_bundle.CheckpointReader``; it reads no files itself.  Sizes are checked
against shapes and dtypes here, so nothing later allocates from an inconsistent entry.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mobilenet_np.errors import CorruptFileError, UnsupportedFormatError

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

# TensorFlow's DataType enum (types.proto) for the dtypes we can return, little-endian.
NUMPY_DTYPES: dict[int, np.dtype] = {
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
DT_STRING = 7
_DT_BFLOAT16 = 14
try:  # bfloat16 has no NumPy dtype of its own; ml_dtypes (a TensorFlow dependency) has one
    import ml_dtypes

    NUMPY_DTYPES[_DT_BFLOAT16] = np.dtype(ml_dtypes.bfloat16).newbyteorder("<")
except ImportError:  # pragma: no cover - depends on the environment
    pass
DTYPE_NAMES = {
    0: "DT_INVALID", 1: "DT_FLOAT", 2: "DT_DOUBLE", 3: "DT_INT32", 4: "DT_UINT8",
    5: "DT_INT16", 6: "DT_INT8", 7: "DT_STRING", 8: "DT_COMPLEX64", 9: "DT_INT64",
    10: "DT_BOOL", 11: "DT_QINT8", 12: "DT_QUINT8", 13: "DT_QINT32", 14: "DT_BFLOAT16",
    15: "DT_QINT16", 16: "DT_QUINT16", 17: "DT_UINT16", 18: "DT_COMPLEX128", 19: "DT_HALF",
    20: "DT_RESOURCE", 21: "DT_VARIANT", 22: "DT_UINT32", 23: "DT_UINT64",
}  # fmt: skip

_READER_VERSION = 1  # the bundle format version we implement (TensorFlow's kTensorBundleVersion)
_MAX_RANK = 64  # NumPy's limit (TensorFlow allows 254)
@dataclasses.dataclass(frozen=True)
class Entry:
    """One decoded BundleEntryProto."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored
    sliced: bool  # a partitioned variable whose data lives in slice entries


def decode_header(value: bytes, index_path: str) -> int:
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


def decode_entry(value: bytes, name: str, index_path: str) -> Entry:
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
    entry = Entry(dtype, tuple(dims), shard_id, offset, size, crc, sliced)
    if not sliced:
        _check_size(entry, name, index_path)
    return entry


def _check_size(entry: Entry, name: str, index_path: str) -> None:
    """The stored size must be what the shape and dtype imply (strings: a lower bound)."""
    count = math.prod(entry.shape)
    if entry.dtype == DT_STRING:
        # Each element costs at least its 1-byte varint length; the lengths' CRC 4 more.
        needed = count + 4 if count else 0
        if entry.size < needed:
            raise CorruptFileError(
                f"{index_path}: entry for tensor {name!r}: {entry.size} bytes cannot hold {count} strings"
            )
        itemsize = 8
    elif entry.dtype in NUMPY_DTYPES:
        itemsize = NUMPY_DTYPES[entry.dtype].itemsize
        if entry.size != count * itemsize:
            raise CorruptFileError(
                f"{index_path}: entry for tensor {name!r}: size {entry.size} bytes, but shape "
                f"{list(entry.shape)} of {DTYPE_NAMES.get(entry.dtype)} needs {count * itemsize}"
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


def decode_strings(raw: bytearray, entry: Entry, name: str, shard: str) -> np.ndarray:
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

