"""Derandomized fuzzing of every reader and of the weights-file loader (issue 13).

Each test mutates a real file (../shared) or one generated here, reads it the way ``convert``
and ``mnp.load`` do, and asserts that only the project's own errors come out, naming the file
in one line, and that the read stays bounded: its peak traced memory is a small multiple of
the file's size, so no damaged length or shape sized an allocation.  Where the format carries
checksums (TF checkpoints), a read that succeeds must also give the original values.
TF.js, TFLite (float and uint8) and TF checkpoints here; weights files and Keras .h5 in
test_fuzz_weights_files.py.
"""

import shutil

import numpy as np
import pytest
from generated_sources import write_tfjs
from hypothesis import given
from hypothesis import strategies as st
from mutations import BYTE_OPS, JSON_OPS, convertible, fuzz, mutate, mutate_json, read_bounded


TFLITE_FLOAT = ("weights", "mobilenet_v1_025_160", "tflite_float", "mobilenet_v1_0.25_160.jevois.tflite")
TFLITE_UINT8 = ("weights", "mobilenet_v1_050_160", "tflite_uint8_quant", "mobilenet_v1_0.5_160_quant.jevois.tflite")


@pytest.fixture(scope="module")
def tfjs_original(tmp_path_factory):
    return write_tfjs(tmp_path_factory.mktemp("original") / "tfjs", np.random.default_rng(20261201))


# --- TF.js ------------------------------------------------------------------------------------

@pytest.fixture
def tfjs_copy(tfjs_original, tmp_path):
    folder = tmp_path / "tfjs"
    shutil.copytree(tfjs_original.parent, folder)
    return folder / "model.json"


def _tfjs_size(model_json):
    return sum(p.stat().st_size for p in model_json.parent.iterdir())


@fuzz(250)
@given(ops=JSON_OPS)
def test_tfjs_json_value_mutations(tfjs_copy, ops):
    tfjs_copy.write_text(mutate_json(tfjs_copy.read_text(), ops))
    read_bounded(convertible, tfjs_copy, _tfjs_size(tfjs_copy))


@fuzz(150)
@given(ops=BYTE_OPS, target=st.sampled_from(["model.json", "group1-shard1of1.bin"]))
def test_tfjs_byte_mutations(tfjs_copy, ops, target):
    path = tfjs_copy.parent / target
    path.write_bytes(mutate(path.read_bytes(), ops))
    read_bounded(convertible, tfjs_copy, _tfjs_size(tfjs_copy))


# --- TFLite, float and uint8 (real files) ------------------------------------------------------

@pytest.mark.parametrize("parts", [TFLITE_FLOAT, TFLITE_UINT8], ids=["float", "uint8"])
@fuzz(150)
@given(ops=BYTE_OPS, near_end=st.booleans())
def test_tflite_mutations_through_convert(shared, tmp_path, parts, ops, near_end):
    data = shared(*parts).read_bytes()
    if near_end:                      # the converters put the tables (names, shapes) at the end
        ops = [(op[0], len(data) - 1 - op[1] % 16384, *op[2:]) for op in ops]
    path = tmp_path / "mutated.tflite"
    path.write_bytes(mutate(data, ops))
    read_bounded(convertible, path, len(data))


# --- TF checkpoints (a MobileNet written by TensorFlow) -----------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pytest.importorskip("tensorflow", reason="TensorFlow writes the checkpoint (parity extra)")
    from generated_sources import SMALL, random_tensors
    from tf_checkpoints import write_checkpoint

    from mobilenet_np import spec

    tensors = random_tensors(spec.build(*SMALL), np.random.default_rng(7))
    prefix = write_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "m.ckpt"), tensors)
    return prefix, tensors


@fuzz(150)
@given(ops=BYTE_OPS, target=st.sampled_from([".index", ".data-00000-of-00001"]))
def test_checkpoint_mutations_through_convert(checkpoint, tmp_path, ops, target):
    prefix, tensors = checkpoint
    work = str(tmp_path / "m.ckpt")
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copyfile(prefix + suffix, work + suffix)
    data = open(prefix + target, "rb").read()
    with open(work + target, "wb") as f:
        f.write(mutate(data, ops))
    got = read_bounded(convertible, tmp_path / "m.ckpt", len(data) + 65536)
    if got is not None:               # CRC-protected: success means the original values
        assert sorted(got) == sorted(tensors)
        for name, value in got.items():
            np.testing.assert_array_equal(value, tensors[name])
