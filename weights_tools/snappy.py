"""Snappy decompression (the raw block format), for checkpoint index blocks older TensorFlow wrote.

A Snappy block is the uncompressed length as a varint, then elements, each starting with a
tag byte whose low two bits say what follows:

* 0, literal: length - 1 in the tag's upper six bits (values 60-63 mean: in the next 1-4
  bytes, little-endian), then that many bytes copied as they are;
* 1, copy: length 4-11 (3 bits) and an 11-bit offset (3 bits of the tag and one byte);
* 2 / 3, copy: length 1-64 (6 bits) and a 2- / 4-byte little-endian offset.

A copy repeats ``length`` bytes starting ``offset`` bytes back in the output; when the offset
is shorter than the length, the copied bytes overlap those being written (run-length style).

Why our own decoder rather than python-snappy or cramjam: it is about 60 lines, has no native
code, and checks every length and offset against the declared size and the bytes written so
far, so hostile input can neither allocate beyond ``max_length`` nor read out of bounds;
the libraries would add a compiled core dependency for one rarely met case.  Not here:
compression, and the framed (``.sz`` stream) format.
"""

from __future__ import annotations

from mobilenet_np.errors import CorruptFileError

from .protowire import WireFormatError, read_varint

__all__ = ["decompress"]

_LITERAL, _COPY_1, _COPY_2, _COPY_4 = 0, 1, 2, 3


def decompress(data: bytes, max_length: int, where: str) -> bytes:
    """The uncompressed bytes of the Snappy block ``data``, at most ``max_length`` of them.

    Raises :class:`CorruptFileError` naming ``where`` for any malformed input: a bad
    length varint, a declared length over ``max_length``, an element running past the end,
    a copy from before the start, or output that does not end at the declared length.
    """
    def fail(problem: str) -> CorruptFileError:
        return CorruptFileError(f"{where}: malformed Snappy data: {problem}")

    try:
        length, pos = read_varint(data, 0, len(data), 32)
    except WireFormatError as exc:
        raise fail(f"uncompressed length: {exc}") from None
    if length > max_length:
        raise fail(f"declares {length} uncompressed bytes, more than the {max_length} allowed")
    out = bytearray()
    end = len(data)
    while pos < end:
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == _LITERAL:
            size = tag >> 2
            if size >= 60:                                     # the length follows the tag
                extra = size - 59
                if pos + extra > end:
                    raise fail("literal length runs past the end")
                size = int.from_bytes(data[pos:pos + extra], "little")
                pos += extra
            size += 1
            if pos + size > end or len(out) + size > length:
                raise fail(f"literal of {size} bytes runs past the input or the declared length")
            out += data[pos:pos + size]
            pos += size
            continue
        if kind == _COPY_1:
            if pos + 1 > end:
                raise fail("copy runs past the end")
            size, offset = 4 + ((tag >> 2) & 7), ((tag >> 5) << 8) | data[pos]
            pos += 1
        else:
            width = 2 if kind == _COPY_2 else 4
            if pos + width > end:
                raise fail("copy runs past the end")
            size, offset = 1 + (tag >> 2), int.from_bytes(data[pos:pos + width], "little")
            pos += width
        if offset == 0 or offset > len(out):
            raise fail(f"copy from offset {offset} with only {len(out)} bytes written")
        if len(out) + size > length:
            raise fail("copy runs past the declared length")
        start = len(out) - offset
        if offset >= size:
            out += out[start:start + size]
        else:                                                  # overlapping: repeat the pattern
            out += (out[start:] * (size // offset + 1))[:size]
    if len(out) != length:
        raise fail(f"{len(out)} bytes decoded, {length} declared")
    return bytes(out)
