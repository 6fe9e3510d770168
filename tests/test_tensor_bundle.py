"""Tests for the TensorFlow-free checkpoint reader in ``weights_tools.tensor_bundle``.

Reference checkpoints are written by TensorFlow itself (``tests/tf_checkpoints.py``) and
every tensor is compared bit for bit with what ``tf.train.load_checkpoint`` returns.
Formats TensorFlow will not write (big-endian, compressed, too-new, partitioned, odd
protobuf encodings) are crafted here with a small pure-Python SSTable writer.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobilenet_np.errors import CorruptFileError, MissingFileError, UnsupportedFormatError, WeightsError
from weights_tools import crc32c, protowire, sstable, tensor_bundle
from weights_tools.tensor_bundle import CheckpointReader, file_sha256

from mutations import BYTE_OPS, mutate  # tests/mutations.py

import tf_checkpoints  # tests/tf_checkpoints.py; imports TensorFlow only when called

SLIM_VARS = [
    ("MobilenetV1/Conv2d_0/weights", (3, 3, 3, 8)),
    ("MobilenetV1/Conv2d_0/BatchNorm/gamma", (8,)),
    ("MobilenetV1/Conv2d_0/BatchNorm/beta", (8,)),
    ("MobilenetV1/Conv2d_0/BatchNorm/moving_mean", (8,)),
    ("MobilenetV1/Conv2d_0/BatchNorm/moving_variance", (8,)),
    ("MobilenetV1/Conv2d_1_depthwise/depthwise_weights", (3, 3, 8, 1)),
    ("MobilenetV1/Conv2d_1_depthwise/BatchNorm/beta", (8,)),
    ("MobilenetV1/Conv2d_1_pointwise/weights", (1, 1, 8, 16)),
    ("MobilenetV1/Logits/Conv2d_1c_1x1/weights", (1, 1, 16, 11)),
    ("MobilenetV1/Logits/Conv2d_1c_1x1/biases", (11,)),
]


# --- fixtures ---------------------------------------------------------------------


# ``rng`` (function scope, seeded) comes from conftest.py; module-scoped fixtures need their own.
@pytest.fixture(scope="module")
def module_rng():
    return np.random.default_rng(7)


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def _dtype_tensors(rng) -> dict[str, np.ndarray]:
    import ml_dtypes

    return {
        "f32": rng.standard_normal((2, 3)).astype(np.float32),
        "f64": rng.standard_normal((4,)),
        "i32": rng.integers(-(2**31), 2**31, (5,), dtype=np.int32),
        "i64_scalar": np.array(-(2**62) + 12345, dtype=np.int64),
        "u8": rng.integers(0, 256, (3, 3), dtype=np.uint8),
        "i8": rng.integers(-128, 128, (7,), dtype=np.int8),
        "i16": rng.integers(-(2**15), 2**15, (2, 2), dtype=np.int16),
        "u16": rng.integers(0, 2**16, (3,), dtype=np.uint16),
        "u32": rng.integers(0, 2**32, (3,), dtype=np.uint32),
        "u64": rng.integers(0, 2**63, (3,), dtype=np.uint64) * np.uint64(2),
        "bool": rng.integers(0, 2, (9,)).astype(bool),
        "f16": rng.standard_normal((3, 2)).astype(np.float16),
        "bf16": rng.standard_normal((4,)).astype(ml_dtypes.bfloat16),
        "c64": (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64),
        "c128": rng.standard_normal(2) + 1j * rng.standard_normal(2),
        "nan_inf": np.array([np.nan, -np.inf, np.inf, -0.0], dtype=np.float32),
    }


def _edge_tensors(rng) -> dict[str, np.ndarray]:
    return {
        "empty": np.zeros((0,), dtype=np.float32),
        "empty_3d": np.zeros((2, 0, 3), dtype=np.int64),
        "scalar": np.array(3.25, dtype=np.float32),
        "scalar_bool": np.array(True),
        "string_scalar": np.array(b"MobilenetV1", dtype=object),
        "strings": np.array([[b"", b"a"], [b"\x00\xff" * 40, "ünïcode".encode()]], dtype=object),
        "strings_empty": np.zeros((0, 2), dtype=object),
        "large": rng.standard_normal((1000, 1100)).astype(np.float32),  # 4.4 MB: vectorised CRC path
    }


def _many_tensors(rng) -> dict[str, np.ndarray]:
    # TensorFlow's table writer uses 256 KiB blocks (LevelDB's default is 4 KiB), so
    # several data blocks need a big index: long names, sharing a prefix in pairs.
    out = {}
    for i in range(300):
        block, part = divmod(i, 2)
        name = (
            f"MobilenetV2/expanded_conv_{block:03d}/"
            + "depthwise_and_pointwise_projection_" * 120
            + f"BatchNorm/part_{part}/ExponentialMovingAverage"
        )
        out[name] = rng.standard_normal((i % 5 + 1,)).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def ckpts(tf, tmp_path_factory, module_rng) -> dict[str, str]:
    """Reference checkpoints written by TensorFlow, once per module; name -> prefix."""
    root = tmp_path_factory.mktemp("ckpts")
    write = tf_checkpoints.write_checkpoint
    out = {
        "slim": write(root / "slim" / "model.ckpt-1000", tf_checkpoints.slim_like_tensors(module_rng, SLIM_VARS)),
        "sharded": write(
            root / "sharded" / "model.ckpt", tf_checkpoints.slim_like_tensors(module_rng, SLIM_VARS), num_shards=3
        ),
        "dtypes": write(root / "dtypes" / "ckpt", _dtype_tensors(module_rng)),
        "edge": write(root / "edge" / "ckpt", _edge_tensors(module_rng)),
        "many": write(root / "many" / "ckpt", _many_tensors(module_rng)),
        "hub": write(root / "hub" / "variables" / "variables", {"module/w": np.arange(6, dtype=np.float32)}),
    }
    tf_checkpoints.write_checkpoint_state(root / "slim", "model.ckpt-1000")
    tf2_vars = {"kernel": module_rng.standard_normal((3, 3, 3, 4)).astype(np.float32), "step": np.int64(5)}
    out["tf2_object"] = tf_checkpoints.write_object_checkpoint(root / "tf2" / "ckpt-1", tf2_vars)
    saved_model = tf_checkpoints.write_saved_model(root / "saved_model", tf2_vars)
    out["saved_model"] = os.path.join(saved_model, "variables", "variables")
    return out


@pytest.fixture(scope="module")
def reference(ckpts) -> dict[str, dict[str, np.ndarray]]:
    return {kind: tf_checkpoints.load_with_tensorflow(prefix) for kind, prefix in ckpts.items()}


def _copy_checkpoint(prefix: str, dest_dir) -> str:
    """Copy every file of checkpoint ``prefix`` into ``dest_dir``; return the new prefix."""
    src_dir, base = os.path.split(prefix)
    os.makedirs(dest_dir, exist_ok=True)
    for fname in os.listdir(src_dir):
        if fname.startswith(base + "."):
            shutil.copy(os.path.join(src_dir, fname), os.path.join(dest_dir, fname))
    return os.path.join(os.fspath(dest_dir), base)


def _assert_same(ours: np.ndarray, theirs) -> None:
    """Same dtype, shape and bits (TensorFlow returns scalars as NumPy scalars or bytes)."""
    assert isinstance(ours, np.ndarray)
    theirs = np.array(theirs, dtype=object) if isinstance(theirs, bytes) else np.asarray(theirs)
    assert ours.dtype == theirs.dtype
    assert ours.shape == theirs.shape
    if ours.dtype == object:
        assert ours.tolist() == theirs.tolist()
    else:
        assert ours.tobytes() == theirs.tobytes()


def _one_line_naming(exc: BaseException, path: str) -> str:
    msg = str(exc)
    assert "\n" not in msg
    assert os.path.basename(path) in msg, msg
    return msg


# --- CRC-32C ----------------------------------------------------------------------


def _crc32c_bitwise(data: bytes) -> int:
    """Independent, slow reference: one bit at a time."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc32c_known_vectors():
    # RFC 3720 (iSCSI) appendix B.4 test vectors, plus the customary "123456789".
    assert crc32c.value(b"123456789") == 0xE3069283
    assert crc32c.value(bytes(32)) == 0x8A9136AA
    assert crc32c.value(b"\xff" * 32) == 0x62A8AB43
    assert crc32c.value(bytes(range(32))) == 0x46DD794E
    assert crc32c.value(bytes(range(31, -1, -1))) == 0x113FDB5C
    assert crc32c.value(b"") == 0


@pytest.mark.parametrize("n", [1, 7, 8, 255, 4095, 4096, 4097, 8191, 20011, 65536])
def test_crc32c_matches_bitwise_reference(rng, n):
    data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    expected = _crc32c_bitwise(data)
    assert crc32c.value(data) == expected
    assert crc32c.value(bytearray(data)) == expected
    assert crc32c.value(np.frombuffer(data, dtype=np.uint8)) == expected
    cut = n // 3
    assert crc32c.extend(crc32c.value(data[:cut]), data[cut:]) == expected


def test_crc32c_large_input_consistent_and_fast(rng):
    data = rng.integers(0, 256, 10_000_000, dtype=np.uint8).tobytes()
    crc32c.value(data[:100_000])  # warm the operator caches
    start = time.perf_counter()
    whole = crc32c.value(data)
    elapsed = time.perf_counter() - start
    # Same value whichever way the input is cut (each piece takes a different lane layout).
    pieces = 0
    for cut in (0, 1, 4096, 3_333_333, 9_999_999):
        assert crc32c.extend(crc32c.value(data[:cut]), data[cut:]) == whole
        pieces += 1
    assert pieces == 5
    assert elapsed < 1.0, f"10 MB took {elapsed:.2f} s"


def test_crc32c_mask_roundtrip(rng):
    assert crc32c.mask(0) == 0xA282EAD8
    for value in rng.integers(0, 2**32, 50, dtype=np.uint64).tolist() + [0, 0xFFFFFFFF]:
        masked = crc32c.mask(value)
        assert 0 <= masked <= 0xFFFFFFFF
        assert crc32c.unmask(masked) == value
        assert masked == ((((value >> 15) | (value << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# --- protobuf wire format ----------------------------------------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32/int64 values travel as 10-byte two's complement
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _f_varint(field: int, n: int) -> bytes:
    return _tag(field, 0) + _varint(n)


def _f_len(field: int, payload: bytes) -> bytes:
    return _tag(field, 2) + _varint(len(payload)) + payload


def _f_fixed32(field: int, n: int) -> bytes:
    return _tag(field, 5) + n.to_bytes(4, "little")


def test_varints():
    for n in [0, 1, 127, 128, 300, 2**32 - 1, 2**63, 2**64 - 1]:
        encoded = _varint(n)
        assert protowire.read_varint(encoded, 0, len(encoded)) == (n, len(encoded))
    assert protowire.as_int32(protowire.read_varint(_varint(-5), 0, 10)[0]) == -5
    assert protowire.as_int64(protowire.read_varint(_varint(-(2**40)), 0, 10)[0]) == -(2**40)
    with pytest.raises(CorruptFileError, match="longer than 10 bytes"):
        protowire.read_varint(b"\x80" * 10 + b"\x01", 0, 11)
    with pytest.raises(CorruptFileError, match="64 bits"):
        protowire.read_varint(b"\xff" * 9 + b"\x7f", 0, 10)
    with pytest.raises(CorruptFileError, match="longer than 5 bytes"):
        protowire.read_varint(b"\xff" * 5 + b"\x01", 0, 6, max_bits=32)
    with pytest.raises(CorruptFileError, match="past the end"):
        protowire.read_varint(b"\x80\x80", 0, 2)


def test_iter_fields_skips_groups_and_rejects_garbage():
    group = _tag(9, 3) + _f_varint(1, 5) + _tag(10, 3) + _tag(10, 4) + _tag(9, 4)
    msg = _f_varint(1, 7) + group + _tag(2, 1) + (2**64 - 1).to_bytes(8, "little") + _f_len(3, b"xyz")
    assert list(protowire.iter_fields(msg)) == [(1, 0, 7), (2, 1, 2**64 - 1), (3, 2, b"xyz")]
    with pytest.raises(CorruptFileError, match="closes another group"):
        list(protowire.iter_fields(_tag(9, 3) + _tag(8, 4)))
    with pytest.raises(CorruptFileError, match="invalid wire type 6"):
        list(protowire.iter_fields(_tag(1, 6)))
    with pytest.raises(CorruptFileError, match="claims 5 bytes"):
        list(protowire.iter_fields(_tag(1, 2) + b"\x05ab"))
    with pytest.raises(CorruptFileError, match="field number 0"):
        list(protowire.iter_fields(b"\x00\x00"))


# --- reading TensorFlow-written checkpoints ---------------------------------------


@pytest.mark.parametrize("kind", ["slim", "sharded", "dtypes", "edge", "many", "hub", "tf2_object", "saved_model"])
def test_every_tensor_matches_tensorflow(tf, ckpts, reference, kind):
    reader = CheckpointReader(ckpts[kind])
    expected = reference[kind]
    tf_reader = tf.train.load_checkpoint(ckpts[kind])
    assert set(reader.keys()) == set(tf_reader.get_variable_to_shape_map())
    assert reader.keys() == sorted(expected, key=lambda name: name.encode())
    tf_dtypes = tf_reader.get_variable_to_dtype_map()
    for name in reader.keys():
        array = reader.get_tensor(name)
        _assert_same(array, expected[name])
        assert reader.shape(name) == tuple(tf_reader.get_variable_to_shape_map()[name])
        assert reader.dtype(name) == array.dtype == np.dtype(tf_dtypes[name].as_numpy_dtype)
    assert [name for name, _ in reader.items()] == reader.keys()


def test_slim_checkpoint_contents(ckpts, reference):
    reader = CheckpointReader(ckpts["slim"])
    names = set(reader.keys())
    for name, shape in SLIM_VARS:
        for suffix in ("", "/ExponentialMovingAverage", "/RMSProp", "/RMSProp_1"):
            assert name + suffix in names
            assert reader.shape(name + suffix) == shape
            assert reader.dtype(name + suffix) == np.float32
    assert "global_step" in reader and reader.shape("global_step") == ()
    assert reader.get_tensor("global_step") == reference["slim"]["global_step"]
    assert len(reader) == 4 * len(SLIM_VARS) + 1


def test_sharded_checkpoint_uses_all_shards(ckpts):
    reader = CheckpointReader(ckpts["sharded"])
    assert [os.path.basename(p) for p in reader.data_paths] == [
        f"model.ckpt.data-0000{k}-of-00003" for k in range(3)
    ]
    assert {reader._entries[name].shard_id for name in reader.keys()} == {0, 1, 2}


def test_many_tensors_span_several_blocks_and_restarts(ckpts):
    reader = CheckpointReader(ckpts["many"])
    assert len(reader.keys()) == 300
    with open(reader.index_path, "rb") as f:
        data = f.read()
    parser = sstable._TableParser(data, reader.index_path)
    assert len(parser.entries()) == 301  # the header plus 300 tensors
    data_blocks = parser.block_handles[2:]  # metaindex and index blocks come first
    assert len(data_blocks) >= 3
    restarts = [int.from_bytes(data[o + s - 4 : o + s], "little") for o, s in data_blocks]
    assert max(restarts) > 1


def test_returned_arrays_are_fresh_and_writable(ckpts):
    reader = CheckpointReader(ckpts["slim"])
    name = "MobilenetV1/Conv2d_0/weights"
    first = reader.get_tensor(name)
    assert first.flags.writeable and first.flags.c_contiguous and first.dtype.isnative
    original = first.copy()
    first[...] = 0
    np.testing.assert_array_equal(reader.get_tensor(name), original)


def test_unknown_tensor_name_is_keyerror(ckpts):
    reader = CheckpointReader(ckpts["slim"])
    for call in (reader.get_tensor, reader.shape, reader.dtype):
        with pytest.raises(KeyError, match="MobilenetV1/NoSuchLayer"):
            call("MobilenetV1/NoSuchLayer")
    assert "MobilenetV1/NoSuchLayer" not in reader


# --- path forms ---------------------------------------------------------------------


def test_path_forms(ckpts, tmp_path, tf):
    prefix = ckpts["slim"]
    slim_dir = os.path.dirname(prefix)
    expected = CheckpointReader(prefix).keys()
    absolute_state_dir = tmp_path / "elsewhere"
    absolute_state_dir.mkdir()
    tf_checkpoints.write_checkpoint_state(absolute_state_dir, prefix)  # absolute path inside
    forms = [
        prefix,
        prefix + ".index",
        prefix + ".data-00000-of-00001",
        slim_dir,  # `checkpoint` file with a relative path
        absolute_state_dir,
    ]
    from pathlib import Path

    forms.append(Path(prefix))
    for form in forms:
        reader = CheckpointReader(form)
        assert reader.prefix == prefix, form
        assert reader.index_path == prefix + ".index"
        assert reader.data_paths == [prefix + ".data-00000-of-00001"]
        assert reader.keys() == expected

    hub_dir = os.path.dirname(os.path.dirname(ckpts["hub"]))
    reader = CheckpointReader(hub_dir)
    assert reader.prefix == os.path.join(hub_dir, "variables", "variables")
    np.testing.assert_array_equal(reader.get_tensor("module/w"), np.arange(6, dtype=np.float32))

    saved_model_dir = os.path.dirname(os.path.dirname(ckpts["saved_model"]))
    reader = CheckpointReader(saved_model_dir)
    assert reader.prefix == ckpts["saved_model"]
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" in reader.keys()  # a DT_STRING scalar in every TF2 checkpoint
    assert reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH").dtype == object


def test_bad_paths(tmp_path):
    with pytest.raises(MissingFileError) as e:
        CheckpointReader(tmp_path / "nothing" / "model.ckpt")
    _one_line_naming(e.value, "model.ckpt.index")

    with pytest.raises(UnsupportedFormatError) as e:
        CheckpointReader(tmp_path)
    _one_line_naming(e.value, os.fspath(tmp_path))

    (tmp_path / "saved_model.pb").write_bytes(b"\x08\x01")
    with pytest.raises(MissingFileError) as e:
        CheckpointReader(tmp_path)
    assert "variables.index" in _one_line_naming(e.value, "variables.index")

    junk = tmp_path / "weights.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(UnsupportedFormatError) as e:
        CheckpointReader(junk)
    _one_line_naming(e.value, "weights.h5")

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-5"\n')
    with pytest.raises(MissingFileError) as e:
        CheckpointReader(state_dir)
    assert "checkpoint" in _one_line_naming(e.value, "model.ckpt-5.index")

    (state_dir / "checkpoint").write_text("all_model_checkpoint_paths: 'x'\n")
    with pytest.raises(UnsupportedFormatError) as e:
        CheckpointReader(state_dir)
    _one_line_naming(e.value, "checkpoint")


def test_checkpoint_state_with_escaped_path(ckpts, tmp_path, tf):
    odd_dir = tmp_path / 'we"ird dïr\\ü'
    prefix = _copy_checkpoint(ckpts["hub"], odd_dir)
    tf_checkpoints.write_checkpoint_state(tmp_path, prefix)  # TensorFlow's own escaping
    assert b"\\" in (tmp_path / "checkpoint").read_bytes()
    assert CheckpointReader(tmp_path).prefix == prefix
    # Hand-written: raw UTF-8, and a relative path with escapes.
    (odd_dir / "checkpoint").write_bytes(b'model_checkpoint_path: "variables"\n')
    assert CheckpointReader(odd_dir).prefix == os.path.join(odd_dir, "variables")
    (tmp_path / "checkpoint").write_bytes(
        b'# comment\nmodel_checkpoint_path: "we\\"ird d\xc3\xafr\\\\\\303\\274/variables"\n'
    )
    assert CheckpointReader(tmp_path).prefix == prefix


def test_file_sha256(tmp_path, rng):
    import hashlib

    data = rng.integers(0, 256, 3 * (1 << 20) + 17, dtype=np.uint8).tobytes()
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(path, chunk_size=1000) == hashlib.sha256(data).hexdigest()
    with pytest.raises(MissingFileError) as e:
        file_sha256(tmp_path / "absent.bin")
    _one_line_naming(e.value, "absent.bin")


# --- damaged TensorFlow-written checkpoints --------------------------------------


@pytest.fixture
def slim_copy(ckpts, tmp_path) -> str:
    return _copy_checkpoint(ckpts["slim"], tmp_path / "copy")


def _flip(path: str, position: int) -> None:
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ 0x5A]))


def _read_everything(prefix: str) -> None:
    reader = CheckpointReader(prefix)
    for _ in reader.items():
        pass


@pytest.mark.parametrize("cut", [0, 1, 10, 47, 48, -48, -47, -9, -1, "half"])
def test_truncated_index(slim_copy, cut):
    index = slim_copy + ".index"
    with open(index, "rb") as f:
        data = f.read()
    keep = len(data) // 2 if cut == "half" else cut % len(data)
    with open(index, "wb") as f:
        f.write(data[:keep])
    with pytest.raises(CorruptFileError) as e:
        CheckpointReader(slim_copy)
    msg = _one_line_naming(e.value, index)
    if keep == 0:
        assert "empty" in msg


def test_flipped_byte_in_index(slim_copy):
    index = slim_copy + ".index"
    with open(index, "rb") as f:
        data = f.read()
    parser = sstable._TableParser(data, index)
    parser.entries()
    meta, index_block, first_data = parser.block_handles[:3]
    size = len(data)
    positions = {
        "first data block": first_data[0] + 3,
        "first data block trailer crc": first_data[0] + first_data[1] + 2,
        "compression byte": first_data[0] + first_data[1],
        "metaindex block": meta[0],
        "index block": index_block[0] + index_block[1] - 5,
        "footer handle": size - 48,
        "footer index handle": size - 46,
        "footer padding": size - 12,
        "magic": size - 3,
    }
    for where, position in positions.items():
        with open(index, "wb") as f:
            f.write(data)
        _flip(index, position)
        with pytest.raises(CorruptFileError) as e:
            _read_everything(slim_copy)
        _one_line_naming(e.value, index)
    with open(index, "wb") as f:
        f.write(data)
    _read_everything(slim_copy)  # and the restored file is fine again


def test_flipped_byte_in_data_shard(slim_copy, ckpts, reference):
    shard = slim_copy + ".data-00000-of-00001"
    name = "MobilenetV1/Conv2d_1_pointwise/weights"
    entry = CheckpointReader(slim_copy)._entries[name]
    _flip(shard, entry.offset + entry.size // 2)
    reader = CheckpointReader(slim_copy)
    with pytest.raises(CorruptFileError) as e:
        reader.get_tensor(name)
    msg = _one_line_naming(e.value, shard)
    assert "crc32c mismatch" in msg and repr(name) in msg
    for other in reader.keys():  # everything else still reads
        if other != name:
            _assert_same(reader.get_tensor(other), reference["slim"][other])


def test_missing_shard(ckpts, tmp_path):
    prefix = _copy_checkpoint(ckpts["sharded"], tmp_path / "copy")
    missing = prefix + ".data-00001-of-00003"
    os.remove(missing)
    with pytest.raises(MissingFileError) as e:
        CheckpointReader(prefix)
    assert missing in _one_line_naming(e.value, missing)
    assert isinstance(e.value, FileNotFoundError)


def test_missing_index(ckpts, tmp_path):
    prefix = _copy_checkpoint(ckpts["slim"], tmp_path / "copy")
    os.remove(prefix + ".index")
    with pytest.raises(MissingFileError) as e:
        CheckpointReader(prefix)
    _one_line_naming(e.value, os.path.basename(prefix) + ".index")


def test_shard_shorter_than_entry(slim_copy, reference):
    shard = slim_copy + ".data-00000-of-00001"
    reader = CheckpointReader(slim_copy)
    cut = os.path.getsize(shard) // 2
    os.truncate(shard, cut)
    failed = 0
    for name in reader.keys():
        entry = reader._entries[name]
        if entry.offset + entry.size <= cut:
            _assert_same(reader.get_tensor(name), reference["slim"][name])
            continue
        with pytest.raises(CorruptFileError) as e:
            reader.get_tensor(name)
        assert repr(name) in _one_line_naming(e.value, shard)
        failed += 1
    assert failed >= 1


@pytest.mark.parametrize("content", [b"", b"hello world\n", "random"])
def test_index_that_is_not_a_checkpoint(tmp_path, rng, content):
    if content == "random":
        content = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    (tmp_path / "model.ckpt.index").write_bytes(content)
    (tmp_path / "model.ckpt.data-00000-of-00001").write_bytes(b"")
    with pytest.raises(CorruptFileError) as e:
        CheckpointReader(tmp_path / "model.ckpt")
    _one_line_naming(e.value, "model.ckpt.index")


# --- crafted indexes: what TensorFlow will not write -------------------------------


def _block(entries: list[tuple[bytes, bytes]], restart_interval: int = 4) -> bytes:
    out = bytearray()
    restarts = []
    prev = b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval:
            while shared < min(len(prev), len(key)) and prev[shared] == key[shared]:
                shared += 1
        else:
            restarts.append(len(out))
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        prev = key
    for r in restarts or [0]:
        out += r.to_bytes(4, "little")
    out += len(restarts or [0]).to_bytes(4, "little")
    return bytes(out)


def _table(entries: list[tuple[bytes, bytes]], per_block: int = 3, compression: int = 0) -> bytes:
    out = bytearray()

    def put(contents: bytes, kind: int = 0) -> bytes:
        offset = len(out)
        trailer = bytes([kind])
        out.extend(contents + trailer + crc32c.mask(crc32c.value(contents + trailer)).to_bytes(4, "little"))
        return _varint(offset) + _varint(len(contents))

    index = []
    for start in range(0, len(entries), per_block):
        chunk = entries[start : start + per_block]
        index.append((chunk[-1][0], put(_block(chunk), compression)))
    footer = put(_block([])) + put(_block(index))
    return bytes(out) + footer + bytes(40 - len(footer)) + sstable.TABLE_MAGIC.to_bytes(8, "little")


def _header(num_shards=1, endianness=0, producer=1, min_consumer=0, bad=(), packed=True, extra=b"") -> bytes:
    version = _f_varint(1, producer) + _f_varint(2, min_consumer)
    if bad and packed:
        version += _f_len(3, b"".join(_varint(b) for b in bad))
    else:
        version += b"".join(_f_varint(3, b) for b in bad)
    return _f_varint(1, num_shards) + _f_varint(2, endianness) + _f_len(3, version) + extra


def _entry(dtype: int, shape, offset: int, raw: bytes, shard=0, extra=b"") -> bytes:
    dims = b"".join(_f_len(2, _f_varint(1, d)) for d in shape)
    return (
        _f_varint(1, dtype)
        + _f_len(2, dims)
        + (_f_varint(3, shard) if shard else b"")
        + (_f_varint(4, offset) if offset else b"")
        + _f_varint(5, len(raw))
        + _f_fixed32(6, crc32c.mask(crc32c.value(raw)))
        + extra
    )


def _write_crafted(prefix, tensors: dict[str, np.ndarray], header: bytes | None = None, **table_kw) -> str:
    """A checkpoint TensorFlow could have written for ``tensors`` (float/int arrays only)."""
    codes = {np.dtype(np.float32): 1, np.dtype(np.int32): 3, np.dtype(np.int64): 9}
    data = bytearray()
    entries = [(b"", _header() if header is None else header)]
    for name in sorted(tensors, key=str.encode):
        array = np.asarray(tensors[name])
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        entries.append((name.encode(), _entry(codes[array.dtype], array.shape, len(data), raw)))
        data += raw
    return _write_index(prefix, entries, bytes(data), **table_kw)


def _write_index(prefix, entries, data: bytes = b"", num_shards: int = 1, **table_kw) -> str:
    prefix = os.fspath(prefix)
    with open(prefix + ".index", "wb") as f:
        f.write(_table(entries, **table_kw))
    for k in range(num_shards):
        with open(f"{prefix}.data-{k:05d}-of-{num_shards:05d}", "wb") as f:
            f.write(data if k == 0 else b"")
    return prefix


def test_crafted_checkpoint_reads_without_tensorflow(tmp_path, rng):
    tensors = {
        "a/weights": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "a/biases": rng.standard_normal((4,)).astype(np.float32),
        "b/count": np.array(17, dtype=np.int64),
        "c/ints": rng.integers(-100, 100, (5,), dtype=np.int32),
        "d/empty": np.zeros((0, 3), dtype=np.float32),
    }
    reader = CheckpointReader(_write_crafted(tmp_path / "m", tensors))
    assert reader.keys() == sorted(tensors)
    for name, array in tensors.items():
        _assert_same(reader.get_tensor(name), array)


def test_unknown_fields_are_skipped(tmp_path):
    raw = np.arange(4, dtype=np.float32).tobytes()
    group = _tag(20, 3) + _f_varint(1, 1) + _tag(21, 3) + _tag(21, 4) + _tag(20, 4)
    noise = _f_varint(15, 2**63) + _tag(16, 1) + bytes(8) + _f_len(17, b"\xff" * 9) + group + _f_fixed32(19, 7)
    entries = [
        (b"", _header(extra=noise)),
        (b"w", _entry(1, [2, 2], 0, raw, extra=noise + _f_varint(1, 1))),  # a repeated field: last wins
    ]
    reader = CheckpointReader(_write_index(tmp_path / "m", entries, raw))
    np.testing.assert_array_equal(reader.get_tensor("w"), np.arange(4, dtype=np.float32).reshape(2, 2))


@pytest.mark.parametrize(
    "header, fragment",
    [
        (_header(endianness=1), "big-endian"),
        (_header(endianness=7), "endianness"),
        (_header(min_consumer=2), "version"),
        (_header(bad=[0, 1], packed=True), "version"),
        (_header(bad=[1], packed=False), "version"),
    ],
)
def test_unsupported_headers(tmp_path, header, fragment):
    prefix = _write_crafted(tmp_path / "m", {"w": np.zeros(2, np.float32)}, header=header)
    with pytest.raises(UnsupportedFormatError, match=fragment) as e:
        CheckpointReader(prefix)
    _one_line_naming(e.value, "m.index")


def test_accepted_header_versions(tmp_path):
    for header in (_header(producer=1, bad=[2, 3]), _header(producer=5, min_consumer=1)):
        prefix = _write_crafted(tmp_path / "m", {"w": np.ones(2, np.float32)}, header=header)
        np.testing.assert_array_equal(CheckpointReader(prefix).get_tensor("w"), np.ones(2, np.float32))


def test_zstd_compressed_table_is_unsupported(tmp_path):
    prefix = _write_crafted(tmp_path / "m", {"w": np.zeros(2, np.float32)}, compression=2)
    with pytest.raises(UnsupportedFormatError, match="zstd") as e:
        CheckpointReader(prefix)
    _one_line_naming(e.value, "m.index")


def test_table_without_bundle_header(tmp_path):
    raw = bytes(8)
    prefix = _write_index(tmp_path / "m", [(b"w", _entry(1, [2], 0, raw))], raw)
    with pytest.raises(UnsupportedFormatError, match="BundleHeaderProto") as e:
        CheckpointReader(prefix)
    _one_line_naming(e.value, "m.index")


def test_partitioned_variable_is_listed_but_refused(tmp_path):
    raw = np.arange(3, dtype=np.float32).tobytes()
    slice_proto = _f_len(1, b"")  # TensorSliceProto.extent: one full dimension
    entries = [
        (b"", _header()),
        (b"\x00\x01part-slice-key", _entry(1, [3], 0, raw)),  # encoded slice names sort first
        (b"part", _f_varint(1, 1) + _f_len(2, _f_len(2, _f_varint(1, 6))) + _f_len(7, slice_proto)),
        (b"plain", _entry(1, [3], 0, raw)),
    ]
    reader = CheckpointReader(_write_index(tmp_path / "m", entries, raw))
    assert reader.keys() == ["part", "plain"]
    assert reader.shape("part") == (6,)
    with pytest.raises(UnsupportedFormatError, match="partitioned") as e:
        reader.get_tensor("part")
    assert "'part'" in _one_line_naming(e.value, "m.index")
    np.testing.assert_array_equal(reader.get_tensor("plain"), np.arange(3, dtype=np.float32))


@pytest.mark.parametrize("dtype_code, label", [(21, "DT_VARIANT"), (20, "DT_RESOURCE"), (99, "unknown")])
def test_unsupported_dtype(tmp_path, dtype_code, label):
    raw = bytes(8)
    entries = [(b"", _header()), (b"odd", _entry(dtype_code, [2], 0, raw)), (b"w", _entry(1, [2], 0, raw))]
    reader = CheckpointReader(_write_index(tmp_path / "m", entries, raw))
    assert reader.keys() == ["odd", "w"] and reader.shape("odd") == (2,)
    for call in (reader.dtype, reader.get_tensor):
        with pytest.raises(UnsupportedFormatError, match=label) as e:
            call("odd")
        assert "'odd'" in _one_line_naming(e.value, "m.index")
    assert reader.get_tensor("w").tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "entries, fragment",
    [
        ([(b"", _header()), (b"w", _f_varint(1, 1) + b"\x28" + b"\xff" * 11)], "longer than 10 bytes"),
        ([(b"", _header()), (b"w", _entry(1, [3], 0, bytes(8)))], "needs 12"),
        ([(b"", _header()), (b"w", _entry(1, [-2], 0, b""))], "invalid shape"),
        ([(b"", _header()), (b"w", _entry(1, [2], 0, bytes(8), extra=_f_varint(4, -8)))], "negative"),
        ([(b"", _header()), (b"w", _entry(1, [2], 0, bytes(8), shard=3))], "shard 3"),
        ([(b"", _header()), (b"w", _entry(1, [2], 0, bytes(8), extra=_f_len(1, b"x")))], "wire type"),
        ([(b"", _header()), (b"\xff\xfe", _entry(1, [2], 0, bytes(8)))], "not UTF-8"),
        ([(b"", _header(num_shards=10**6)), (b"w", _entry(1, [2], 0, bytes(8)))], "1000000 data shards"),
        ([(b"", _header(num_shards=0)), (b"w", _entry(1, [2], 0, bytes(8)))], "0 data shards"),
        ([(b"", _header()), (b"b", _entry(1, [2], 0, bytes(8))), (b"a", _entry(1, [2], 0, bytes(8)))], "order|separator"),
        ([(b"", _header()), (b"a", _entry(1, [2], 0, bytes(8))), (b"a", _entry(1, [2], 0, bytes(8)))], "order"),
    ],
)
def test_corrupt_crafted_entries(tmp_path, entries, fragment):
    prefix = _write_index(tmp_path / "m", entries, bytes(8))
    with pytest.raises(CorruptFileError, match=fragment) as e:
        CheckpointReader(prefix)
    _one_line_naming(e.value, "m.index")


def test_corrupt_block_structure(tmp_path):
    good = _block([(b"", _header()), (b"w", _entry(1, [2], 0, bytes(8)))])

    def table_with(block: bytes) -> str:
        out = bytearray()
        for contents in (block, _block([])):
            out += contents + b"\x00" + crc32c.mask(crc32c.value(contents + b"\x00")).to_bytes(4, "little")
        index = _block([(b"w", _varint(0) + _varint(len(block)))])
        meta_at = len(block) + 5
        index_at = len(out)
        out += index + b"\x00" + crc32c.mask(crc32c.value(index + b"\x00")).to_bytes(4, "little")
        footer = _varint(meta_at) + _varint(len(_block([]))) + _varint(index_at) + _varint(len(index))
        out += footer + bytes(40 - len(footer)) + sstable.TABLE_MAGIC.to_bytes(8, "little")
        (tmp_path / "m.index").write_bytes(bytes(out))
        (tmp_path / "m.data-00000-of-00001").write_bytes(bytes(8))
        return os.fspath(tmp_path / "m")

    CheckpointReader(table_with(good))  # the frame itself is sound
    too_many_restarts = good[:-4] + (10**6).to_bytes(4, "little")
    bad_restart = good[:-8] + (3).to_bytes(4, "little") + good[-4:]
    overlong_entry = b"\x00\x05\x50w" + good[4:]
    over_shared = b"\x03" + good[1:]
    for block, fragment in [
        (too_many_restarts, "restart points"),
        (bad_restart, "restart point 3"),
        (overlong_entry, "runs past the end"),
        (over_shared, "shares 3 bytes"),
        (b"\x01", "too short"),
    ]:
        with pytest.raises(CorruptFileError, match=fragment) as e:
            CheckpointReader(table_with(block))
        _one_line_naming(e.value, "m.index")


# --- property tests: arbitrary damage only ever raises WeightsError -----------------


@pytest.fixture(scope="module")
def fuzz_base(ckpts, tmp_path_factory, module_rng, tf):
    """A TF-written 2-shard checkpoint with strings, empty tensors and several dtypes."""
    tensors = {**_dtype_tensors(module_rng), **{k: v for k, v in _edge_tensors(module_rng).items() if k != "large"}}
    for i in range(60):
        tensors[f"MobilenetV1/Conv2d_{i}_pointwise/BatchNorm/moving_variance"] = module_rng.standard_normal(
            (i % 4 + 1,)
        ).astype(np.float32)
    root = tmp_path_factory.mktemp("fuzz")
    prefix = tf_checkpoints.write_checkpoint(root / "base" / "model.ckpt", tensors, num_shards=2)
    work = _copy_checkpoint(prefix, root / "work")
    with open(prefix + ".index", "rb") as f:
        index = f.read()
    parser = sstable._TableParser(index, prefix + ".index")
    parser.entries()
    assert len(parser.block_handles) >= 3  # metaindex, index and data blocks
    return {"prefix": prefix, "work": work, "index": index, "blocks": parser.block_handles}


def _exercise(prefix: str) -> int:
    """Open, list and read everything; return how many tensors read fine.

    Only WeightsError may escape (and must name a file in one line); every read goes
    through ``_read_exact``, which here refuses requests larger than the file holds.
    """
    real_read_exact = tensor_bundle._read_exact

    def checked_read_exact(f, n, path, what):
        remaining = os.fstat(f.fileno()).st_size - f.tell()
        assert 0 <= n <= remaining, f"asked to read {n} bytes of {what} with {remaining} left in {path}"
        return real_read_exact(f, n, path, what)

    ok = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tensor_bundle, "_read_exact", checked_read_exact)
        try:
            reader = CheckpointReader(prefix)
            for name in reader.keys():
                reader.shape(name)
                try:
                    reader.dtype(name)
                    reader.get_tensor(name)
                    ok += 1
                except WeightsError as e:
                    _one_line_naming(e, "model.ckpt")
        except WeightsError as e:
            _one_line_naming(e, "model.ckpt")
    return ok


_FUZZ_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_FUZZ_SETTINGS
@given(ops=BYTE_OPS)
def test_mutated_index_only_raises_weights_errors(fuzz_base, ops):
    mutated = mutate(fuzz_base["index"], ops)
    with open(fuzz_base["work"] + ".index", "wb") as f:
        f.write(mutated)
    ok = _exercise(fuzz_base["work"])
    if mutated == fuzz_base["index"]:
        assert ok > 0


@_FUZZ_SETTINGS
@given(block=st.integers(0, 100), at=st.integers(min_value=0, max_value=1 << 16), patch=st.binary(min_size=1, max_size=6))
def test_mutated_blocks_with_fixed_crc_only_raise_weights_errors(fuzz_base, block, at, patch):
    """Damage inside one block with its CRC recomputed, so the parsers behind it run."""
    buf = bytearray(fuzz_base["index"])
    offset, size = fuzz_base["blocks"][block % len(fuzz_base["blocks"])]
    if size:
        start = offset + at % size
        end = min(start + len(patch), offset + size)
        buf[start:end] = patch[: end - start]
    trailer = offset + size
    buf[trailer + 1 : trailer + 5] = crc32c.mask(crc32c.value(bytes(buf[offset : trailer + 1]))).to_bytes(4, "little")
    with open(fuzz_base["work"] + ".index", "wb") as f:
        f.write(bytes(buf))
    _exercise(fuzz_base["work"])


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(shard=st.integers(0, 1), ops=BYTE_OPS)
def test_mutated_data_shards_only_raise_weights_errors(fuzz_base, shard, ops):
    with open(fuzz_base["work"] + ".index", "wb") as f:
        f.write(fuzz_base["index"])
    name = f".data-{shard:05d}-of-00002"
    with open(fuzz_base["prefix"] + name, "rb") as f:
        original = f.read()
    mutated = mutate(original, ops)
    try:
        with open(fuzz_base["work"] + name, "wb") as f:
            f.write(mutated)
        ok = _exercise(fuzz_base["work"])
        if mutated == original:
            assert ok > 0
    finally:
        with open(fuzz_base["work"] + name, "wb") as f:
            f.write(original)


def test_fuzz_base_reads_cleanly(fuzz_base, tf):
    with open(fuzz_base["work"] + ".index", "wb") as f:
        f.write(fuzz_base["index"])
    reference = tf_checkpoints.load_with_tensorflow(fuzz_base["prefix"])
    assert _exercise(fuzz_base["work"]) == len(reference)
    reader = CheckpointReader(fuzz_base["work"])
    for name, array in reader.items():
        _assert_same(array, reference[name])
