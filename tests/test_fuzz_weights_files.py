"""Derandomized fuzzing of every reader and of the weights-file loader (issue 13).

Each test mutates a real file (../shared) or one generated here, reads it the way ``convert``
and ``mnp.load`` do, and asserts that only the project's own errors come out, naming the file
in one line, and that the read stays bounded: its peak traced memory is a small multiple of
the file's size, so no damaged length or shape sized an allocation.  Where the format carries
checksums (TF checkpoints), a read that succeeds must also give the original values.
This file: weights files (the loader behind verify and mnp.load) and Keras .h5.
"""

import shutil

import numpy as np
import pytest
from generated_sources import write_keras_h5, write_weights_file
from hypothesis import given
from mutations import ATTR_OPS, BYTE_OPS, convertible, fuzz, mutate, mutate_h5_attrs, read_bounded

import mobilenet_np as mnp
from mobilenet_np import weights_file


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    rng = np.random.default_rng(20261201)
    base = tmp_path_factory.mktemp("originals")
    return {"weights": write_weights_file(base / "w.h5", rng), "keras": write_keras_h5(base / "k.h5", rng)}


# --- weights files and Keras .h5 -----------------------------------------------------------

@pytest.mark.parametrize("kind", ["weights", "keras"])
@fuzz(200)
@given(ops=BYTE_OPS)
def test_hdf5_byte_mutations(originals, tmp_path, kind, ops):
    data = originals[kind].read_bytes()
    path = tmp_path / f"mutated_{kind}.h5"
    path.write_bytes(mutate(data, ops))
    read_bounded(weights_file.read if kind == "weights" else convertible, path, len(data))


# Keras reads are the slower ones (one h5py object per layer): fewer examples, same rules.
@pytest.mark.parametrize("kind, examples", [("weights", 150), ("keras", 60)])
def test_hdf5_attribute_mutations(originals, tmp_path, kind, examples):
    @fuzz(examples)
    @given(ops=ATTR_OPS)
    def check(ops):
        path = tmp_path / f"mutated_{kind}.h5"
        shutil.copyfile(originals[kind], path)
        mutate_h5_attrs(path, ops)
        read = read_bounded(weights_file.read if kind == "weights" else convertible, path, path.stat().st_size)
        if kind == "weights" and read is not None:
            mnp.load(str(path), backend="numpy")    # what verify accepts, load accepts (issue 13)

    check()


# --- version-2 (quantized) weights files ----------------------------------------------------

@pytest.fixture(scope="module")
def quantized_original(tmp_path_factory):
    from conftest import shared_path
    from weights_tools.convert import convert
    out = tmp_path_factory.mktemp("quantized") / "q.h5"
    convert(shared_path("weights", "mobilenet_v1_050_160", "tflite_uint8_quant",
                        "mobilenet_v1_0.5_160_quant.jevois.tflite"), out)
    return out


@fuzz(100)
@given(ops=BYTE_OPS)
def test_quantized_weights_file_byte_mutations(quantized_original, tmp_path, ops):
    data = quantized_original.read_bytes()
    path = tmp_path / "mutated_quantized.h5"
    path.write_bytes(mutate(data, ops))
    read_bounded(weights_file.read, path, len(data))


def test_quantized_weights_file_attribute_mutations(quantized_original, tmp_path):
    @fuzz(100)
    @given(ops=ATTR_OPS)
    def check(ops):
        path = tmp_path / "mutated_quantized.h5"
        shutil.copyfile(quantized_original, path)
        mutate_h5_attrs(path, ops)
        if read_bounded(weights_file.read, path, path.stat().st_size) is not None:
            mnp.load(str(path), backend="numpy")    # what verify accepts, load accepts

    check()
