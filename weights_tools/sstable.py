"""Reader for the LevelDB table ("SSTable") format TensorFlow uses for checkpoint indexes.

A table is: data blocks, a metaindex block, an index block, then a 48-byte footer.
The footer holds the block handles (varint64 offset + varint64 size) of the metaindex
and index blocks, zero padding, and the magic number.  The index block maps separator
keys to the handles of the data blocks.  Every block is followed by a 5-byte trailer:
a compression type byte and the masked CRC-32C of the block contents plus that byte.
Inside a block, keys are prefix-compressed against the previous key; an array of
"restart points" (offsets of entries that store their key in full) and its length end
the block.

:func:`read_table` verifies all of it and returns every (key, value) pair in order.

Blocks may be Snappy-compressed (trailer type 1): older TensorFlow builds compressed
index blocks when that saved at least 1/8, and ``snappy.py`` decodes them, bounded.
Deliberately not here: other compressions (zstd is refused), seeking by key, filter
blocks, block caches, and writing.  The whole index is parsed from one ``bytes`` object; reading the file is the
caller's job.
"""

from __future__ import annotations

from mobilenet_np.errors import CorruptFileError, UnsupportedFormatError

from . import crc32c, snappy
from .protowire import WireFormatError, read_varint

__all__ = ["FOOTER_SIZE", "TABLE_MAGIC", "read_table"]

TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB's table magic number, stored little-endian
FOOTER_SIZE = 48  # two handles of at most 20 bytes each, zero padding, 8-byte magic
_HANDLES_SIZE = FOOTER_SIZE - 8
_TRAILER_SIZE = 5
_NO_COMPRESSION, _SNAPPY = 0, 1
_COMPRESSION_NAMES = {2: "zstd"}
# Snappy's densest element (a 3-byte copy of 64 bytes) expands about 21-fold; a block that
# claims more than this per compressed byte is damaged, and no allocation follows its claim.
_MAX_SNAPPY_EXPANSION = 24
# Prefix compression lets a small block expand into many long keys; real checkpoint
# indexes stay far below this ratio, so a file that exceeds it is hostile or damaged.
_MAX_KEY_BYTES_PER_FILE_BYTE = 64


def read_table(data: bytes, path: str) -> list[tuple[bytes, bytes]]:
    """Every (key, value) pair of the SSTable ``data`` (the bytes of file ``path``).

    Raises :class:`CorruptFileError` for any damage (truncation, bad magic, checksum
    mismatch, handles out of range, malformed blocks, keys out of order) and
    :class:`UnsupportedFormatError` for blocks compressed other than with Snappy.
    """
    return _TableParser(data, path).entries()


class _TableParser:
    def __init__(self, data: bytes, path: str):
        self.data = data
        self.path = path
        self.key_budget = _MAX_KEY_BYTES_PER_FILE_BYTE * len(data) + (1 << 20)
        self.block_handles: list[tuple[int, int]] = []  # every block read, for tests and tools

    def fail(self, problem: str) -> CorruptFileError:
        return CorruptFileError(f"{self.path}: {problem}")

    def entries(self) -> list[tuple[bytes, bytes]]:
        meta_handle, index_handle = self._footer()
        blocks_end = len(self.data) - FOOTER_SIZE
        self._block(meta_handle, "metaindex block", blocks_end)  # checked, contents unused
        index = self._parse_block(self._block(index_handle, "index block", blocks_end), "index block")

        out: list[tuple[bytes, bytes]] = []
        next_free = 0  # TensorFlow writes data blocks in key order, one after the other
        for i, (separator, handle_bytes) in enumerate(index):
            what = f"data block {i}"
            offset, size = self._handle(handle_bytes, f"index entry for {what}", exact=True)
            if offset < next_free:
                raise self.fail(f"{what} at offset {offset} overlaps or precedes the previous block")
            next_free = offset + size + _TRAILER_SIZE
            block = self._block((offset, size), what, blocks_end)
            for key, value in self._parse_block(block, what):
                if out and key <= out[-1][0]:
                    raise self.fail(f"{what}: keys out of order ({key!r} after {out[-1][0]!r})")
                if key > separator:
                    raise self.fail(f"{what}: key {key!r} is past its index separator {separator!r}")
                out.append((key, value))
        return out

    def _footer(self) -> tuple[tuple[int, int], tuple[int, int]]:
        size = len(self.data)
        if size == 0:
            raise self.fail("file is empty; not a checkpoint index")
        if size < FOOTER_SIZE:
            raise self.fail(
                f"file is {size} bytes, shorter than the {FOOTER_SIZE}-byte SSTable footer (truncated?)"
            )
        magic = int.from_bytes(self.data[-8:], "little")
        if magic != TABLE_MAGIC:
            raise self.fail(
                f"bad SSTable magic number 0x{magic:016x} (expected 0x{TABLE_MAGIC:016x}): "
                "truncated, or not a TensorFlow checkpoint index"
            )
        footer = self.data[size - FOOTER_SIZE : size - 8]
        meta, pos = self._read_handle(footer, 0, "footer metaindex handle")
        index, pos = self._read_handle(footer, pos, "footer index handle")
        if any(footer[pos:]):
            raise self.fail("nonzero bytes in the SSTable footer padding")
        return meta, index

    def _read_handle(self, buf: bytes, pos: int, what: str) -> tuple[tuple[int, int], int]:
        try:
            offset, pos = read_varint(buf, pos, len(buf))
            size, pos = read_varint(buf, pos, len(buf))
        except WireFormatError as e:
            raise self.fail(f"{what}: {e}") from None
        return (offset, size), pos

    def _handle(self, buf: bytes, what: str, exact: bool) -> tuple[int, int]:
        handle, pos = self._read_handle(buf, 0, what)
        if exact and pos != len(buf):
            raise self.fail(f"{what}: {len(buf) - pos} stray bytes after the block handle")
        return handle

    def _block(self, handle: tuple[int, int], what: str, limit: int) -> bytes:
        """Contents of the block at ``handle``, after checking bounds, CRC and type."""
        offset, size = handle
        self.block_handles.append(handle)
        if offset + size + _TRAILER_SIZE > limit:
            raise self.fail(
                f"{what} at offset {offset} with size {size} runs past the block area "
                f"(ends at {limit}; truncated?)"
            )
        end = offset + size
        stored = int.from_bytes(self.data[end + 1 : end + 5], "little")
        computed = crc32c.mask(crc32c.value(self.data[offset : end + 1]))
        if stored != computed:
            raise self.fail(
                f"crc32c mismatch for {what} at offset {offset} "
                f"(stored 0x{stored:08x}, computed 0x{computed:08x})"
            )
        kind = self.data[end]
        if kind == _SNAPPY:
            return snappy.decompress(self.data[offset:end], _MAX_SNAPPY_EXPANSION * size + 64,
                                     f"{self.path}: {what}")
        if kind != _NO_COMPRESSION:
            name = _COMPRESSION_NAMES.get(kind, f"unknown type {kind}")
            raise UnsupportedFormatError(
                f"{self.path}: {what} is compressed ({name}); only uncompressed and Snappy-compressed "
                "checkpoint indexes are supported"
            )
        return self.data[offset:end]

    def _parse_block(self, block: bytes, what: str) -> list[tuple[bytes, bytes]]:
        size = len(block)
        if size < 4:
            raise self.fail(f"{what} is {size} bytes, too short for its restart count")
        num_restarts = int.from_bytes(block[-4:], "little")
        if num_restarts > (size - 4) // 4:
            raise self.fail(f"{what} claims {num_restarts} restart points, more than fit in {size} bytes")
        entries_end = size - 4 * (num_restarts + 1)
        restarts = [
            int.from_bytes(block[entries_end + 4 * i : entries_end + 4 * i + 4], "little")
            for i in range(num_restarts)
        ]

        entries: list[tuple[bytes, bytes]] = []
        full_key_at: set[int] = set()  # offsets of entries that share nothing
        pos = 0
        key = b""
        try:
            while pos < entries_end:
                start = pos
                shared, pos = read_varint(block, pos, entries_end, 32)
                non_shared, pos = read_varint(block, pos, entries_end, 32)
                value_len, pos = read_varint(block, pos, entries_end, 32)
                if shared > len(key):
                    raise self.fail(
                        f"{what}: entry at offset {start} shares {shared} bytes of a {len(key)}-byte key"
                    )
                if non_shared + value_len > entries_end - pos:
                    raise self.fail(f"{what}: entry at offset {start} runs past the end of the block")
                self.key_budget -= shared + non_shared
                if self.key_budget < 0:
                    raise self.fail(f"{what}: prefix-compressed keys expand implausibly far")
                key = key[:shared] + block[pos : pos + non_shared]
                pos += non_shared
                entries.append((key, block[pos : pos + value_len]))
                pos += value_len
                if shared == 0:
                    full_key_at.add(start)
        except WireFormatError as e:
            raise self.fail(f"{what}: {e}") from None

        # Restart points are where a reader may start decoding; they must be entries
        # that carry their whole key (an empty block has the single restart point 0).
        for r in restarts:
            if r not in full_key_at and not (r == 0 and not entries):
                raise self.fail(f"{what}: restart point {r} is not the start of a full-key entry")
        return entries
