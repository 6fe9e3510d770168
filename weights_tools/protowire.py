"""Just enough of the protobuf wire format to decode TensorFlow's checkpoint protos.

Generic, schema-free pieces: varints, and iteration over the (field number, wire type,
value) triples of one serialized message, skipping nothing silently and trusting no
length.  The message layouts themselves (BundleHeaderProto, BundleEntryProto, ...)
live next to their only user in ``tensor_bundle.py``.

Deliberately not here: encoding, text format, the ``protobuf`` package, descriptors,
zigzag (sint*) fields, and any notion of required fields -- proto3 has none.

Errors are :class:`WireFormatError`, a :class:`CorruptFileError` whose message does not
yet name the file; callers catch it and re-raise with the file path and the record that
was being decoded.
"""

from __future__ import annotations

from collections.abc import Iterator

from mobilenet_np.errors import CorruptFileError

__all__ = [
    "FIXED32",
    "FIXED64",
    "LEN",
    "VARINT",
    "WireFormatError",
    "as_int32",
    "as_int64",
    "iter_fields",
    "iter_packed_varints",
    "read_varint",
]

VARINT, FIXED64, LEN, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
_MAX_GROUP_DEPTH = 64  # protobuf's own default recursion limit is 100


class WireFormatError(CorruptFileError):
    """Malformed protobuf or varint bytes (message names no file; callers add it)."""


def read_varint(buf, pos: int, end: int, max_bits: int = 64) -> tuple[int, int]:
    """Decode the base-128 varint at ``buf[pos:end]``; return (value, next position).

    Refuses varints running past ``end`` and values of more than ``max_bits`` bits
    (a 64-bit varint takes at most 10 bytes, a 32-bit one at most 5).
    """
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireFormatError("varint runs past the end of its record")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift >= max_bits:
            raise WireFormatError(f"varint longer than {-(-max_bits // 7)} bytes")
    if result >> max_bits:
        raise WireFormatError(f"varint value does not fit in {max_bits} bits")
    return result, pos


def as_int64(v: int) -> int:
    """Two's-complement reading of a varint, as protobuf does for int64 fields."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


def as_int32(v: int) -> int:
    """Protobuf int32/enum reading: negative values arrive sign-extended to 64 bits."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


def iter_fields(buf, pos: int = 0, end: int | None = None) -> Iterator[tuple[int, int, object]]:
    """Yield ``(field_number, wire_type, value)`` for each field of one message.

    ``value`` is an int for VARINT, FIXED32 and FIXED64 fields (fixed ones read
    little-endian, unsigned) and a ``bytes`` slice for LEN fields.  Groups (wire types 3
    and 4, long deprecated) are skipped, nested ones included, and never yielded.
    """
    if end is None:
        end = len(buf)
    while pos < end:
        field, wire_type, value, pos = _next_field(buf, pos, end)
        if wire_type == START_GROUP:
            pos = _skip_group(buf, pos, end, field)
            continue
        if wire_type == END_GROUP:
            raise WireFormatError(f"end-group tag for field {field} without a start")
        yield field, wire_type, value


def _next_field(buf, pos: int, end: int):
    tag, pos = read_varint(buf, pos, end)
    field, wire_type = tag >> 3, tag & 7
    if field == 0 or field >= 1 << 29:
        raise WireFormatError(f"invalid field number {field}")
    if wire_type == VARINT:
        value, pos = read_varint(buf, pos, end)
    elif wire_type == FIXED64 or wire_type == FIXED32:
        width = 8 if wire_type == FIXED64 else 4
        if end - pos < width:
            raise WireFormatError(f"fixed-width field {field} runs past the end of its record")
        value = int.from_bytes(bytes(buf[pos : pos + width]), "little")
        pos += width
    elif wire_type == LEN:
        length, pos = read_varint(buf, pos, end)
        if length > end - pos:
            raise WireFormatError(
                f"field {field} claims {length} bytes but only {end - pos} remain"
            )
        value = bytes(buf[pos : pos + length])
        pos += length
    elif wire_type in (START_GROUP, END_GROUP):
        value = None
    else:
        raise WireFormatError(f"field {field} has invalid wire type {wire_type}")
    return field, wire_type, value, pos


def _skip_group(buf, pos: int, end: int, group_field: int) -> int:
    """Skip to just past the END_GROUP tag matching an already-read START_GROUP."""
    stack = [group_field]
    while stack:
        if pos >= end:
            raise WireFormatError(f"group for field {stack[-1]} is not closed")
        field, wire_type, _, pos = _next_field(buf, pos, end)
        if wire_type == START_GROUP:
            if len(stack) >= _MAX_GROUP_DEPTH:
                raise WireFormatError(f"groups nested deeper than {_MAX_GROUP_DEPTH}")
            stack.append(field)
        elif wire_type == END_GROUP:
            if field != stack.pop():
                raise WireFormatError(f"end-group tag for field {field} closes another group")
    return pos


def iter_packed_varints(data: bytes) -> Iterator[int]:
    """The varints of a packed repeated field (proto3 packs repeated scalars)."""
    pos = 0
    while pos < len(data):
        value, pos = read_varint(data, pos, len(data))
        yield value
