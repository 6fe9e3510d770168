"""Snappy-compressed checkpoint indexes (issue 13): the decoder on its own, and the real
Google-written test checkpoint in ../shared/checkpoints whose index blocks are compressed."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobilenet_np.errors import CorruptFileError
from weights_tools import crc32c, sstable
from weights_tools.snappy import decompress
from weights_tools.tensor_bundle import CheckpointReader

HALF_PLUS_TWO = ("checkpoints", "tf_serving_half_plus_two_cpu")
# The values its SOURCES.md gives (a = 0.5, b = 2.0, c = 3.0, and the copies a2, c2).
DOCUMENTED = {"a": 0.5, "a2": 0.5, "b": 2.0, "c": 3.0, "c2": 3.0}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def literals_only(data: bytes) -> bytes:
    """The simplest valid Snappy encoding: the length, then literals of up to 60 bytes."""
    out = bytearray(_varint(len(data)))
    for i in range(0, len(data), 60):
        chunk = data[i:i + 60]
        out += bytes([(len(chunk) - 1) << 2]) + chunk
    return bytes(out)


@pytest.mark.parametrize("encoded, decoded", [
    (b"\x00", b""),
    (b"\x03\x08abc", b"abc"),
    (b"\x0a\x04ab\x11\x02", b"ababababab"),              # copy-1: length 8, offset 2 (overlapping)
    (b"\x08\x0cabcd\x0e\x04\x00", b"abcdabcd"),           # copy-2: length 4, offset 4
    (b"\x06\x08xyz\x0b\x03\x00\x00\x00", b"xyzxyz"),      # copy-4: length 3, offset 3
    (b"\x41\xf0\x40" + b"q" * 65, b"q" * 65),             # literal length in one extra byte
])
def test_decodes_every_element_kind(encoded, decoded):
    assert decompress(encoded, 1 << 10, "x") == decoded


@pytest.mark.parametrize("encoded, problem", [
    (b"", "uncompressed length"),
    (b"\xff\xff\xff\xff\xff\xff", "uncompressed length"),
    (b"\x80\x80\x80\x80\x08", "more than the"),              # 2 GiB declared: refused before allocating
    (b"\x05\x08abc", "3 bytes decoded, 5 declared"),
    (b"\x03\x10abc", "literal"),                               # literal of 5 bytes, 3 present
    (b"\x04\x04ab\x01", "copy runs past the end"),
    (b"\x06\x08abc\x09\x00", "copy from offset 0"),
    (b"\x06\x08abc\x09\x07", "copy from offset 7"),
    (b"\x04\x08abc\x11\x01", "past the declared length"),
    (b"\x03\xf4", "literal length runs past"),
])
def test_malformed_input_is_a_corrupt_file_error(encoded, problem):
    with pytest.raises(CorruptFileError, match=f"idx: malformed Snappy data: .*{problem}"):
        decompress(encoded, 1 << 20, "idx")


@settings(derandomize=True, max_examples=400, deadline=None, database=None)
@given(st.binary(max_size=200), st.integers(0, 1 << 12))
def test_any_input_decodes_within_bounds_or_is_refused(data, max_length):
    try:
        out = decompress(data, max_length, "x")
    except CorruptFileError:
        return
    assert len(out) <= max_length


@settings(derandomize=True, max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=500))
def test_literal_encoding_round_trips(data):
    assert decompress(literals_only(data), len(data), "x") == data


def test_real_checkpoint_with_snappy_index_blocks(shared):
    data = shared(*HALF_PLUS_TWO, "variables", "variables.index").read_bytes()
    parser = sstable._TableParser(data, "variables.index")
    parser.entries()
    kinds = {data[offset + size] for offset, size in parser.block_handles}
    assert 1 in kinds                                      # the file really has Snappy blocks
    reader = CheckpointReader(shared(*HALF_PLUS_TWO))
    assert {k: float(reader.get_tensor(k)) for k in reader.keys()} == DOCUMENTED
    assert all(reader.get_tensor(k).dtype == np.float32 and reader.shape(k) == () for k in reader.keys())


def test_real_checkpoint_matches_tensorflow(shared):
    tf = pytest.importorskip("tensorflow", reason="TensorFlow's own reader is the reference (parity extra)")
    prefix = str(shared(*HALF_PLUS_TWO, "variables", "variables.index"))[:-len(".index")]
    theirs = tf.train.load_checkpoint(prefix)
    ours = CheckpointReader(prefix)
    names = [n for n in theirs.get_variable_to_shape_map() if n in DOCUMENTED]
    assert sorted(names) == sorted(ours.keys())
    for name in names:
        np.testing.assert_array_equal(ours.get_tensor(name), theirs.get_tensor(name))


def test_damaged_snappy_index_block_is_refused(shared, tmp_path):
    """A compressed block whose CRC still matches but whose Snappy stream is broken: the CRC is
    recomputed after the damage, so only the decoder can catch it."""
    src = shared(*HALF_PLUS_TWO, "variables")
    data = bytearray((src / "variables.index").read_bytes())
    parser = sstable._TableParser(bytes(data), "x")
    parser.entries()
    offset, size = next((o, s) for o, s in parser.block_handles if data[o + s] == 1)
    data[offset] = 0x7F                                   # declared length: now wrong
    data[offset + size + 1:offset + size + 5] = crc32c.mask(crc32c.value(bytes(data[offset:offset + size + 1]))).to_bytes(4, "little")
    (tmp_path / "v.index").write_bytes(bytes(data))
    (tmp_path / "v.data-00000-of-00001").write_bytes((src / "variables.data-00000-of-00001").read_bytes())
    with pytest.raises(CorruptFileError, match="v.index: .*block.*malformed Snappy data"):
        CheckpointReader(str(tmp_path / "v"))
