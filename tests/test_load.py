"""``mnp.load``, the one constructor: every source the CLI takes, converted in memory.

Each source is checked against the same weights loaded another way (the converted weights
file), so the test shows the in-memory path gives the same model, not merely some model.
"""

from __future__ import annotations

import numpy as np
import pytest

import mobilenet_np as mnp
from mobilenet_np.errors import UnknownSourceError, WeightsError
from mobilenet_np.model import random_tensors
from weights_tools.convert import convert


def _same_model(direct, via_file, rng):
    assert (direct.arch, direct.num_classes, direct.input_size) == (via_file.arch, via_file.num_classes,
                                                                    via_file.input_size)
    images = rng.random((2, *direct.input_size, 3), dtype=np.float32)
    np.testing.assert_array_equal(direct(images), via_file(images))


@pytest.mark.parametrize("source", [
    ("mobilenet_v1_025_160", "tflite_float", "mobilenet_v1_0.25_160.jevois.tflite"),
    ("mobilenet_v2_050_96", "tfjs_graph_feature_vector"),
    ("mobilenet_v1_025_160", "keras_h5", "mobilenet_160_0_25.h5"),
], ids=["tflite", "tfjs-folder", "keras-h5"])
def test_load_takes_foreign_formats_directly(shared, tmp_path, rng, source):
    path = shared("weights", *source)
    converted = tmp_path / "converted.h5"
    convert(path, converted)
    _same_model(mnp.load(path), mnp.load(converted), rng)


def test_load_takes_a_checkpoint_directly(tmp_path, rng):
    tf_checkpoints = pytest.importorskip("tf_checkpoints")
    pytest.importorskip("tensorflow", reason="writing a real checkpoint needs TensorFlow (parity extra)")
    arch = mnp.build("mobilenet_v2", 0.35, 96, num_classes=0).arch
    prefix = tf_checkpoints.write_checkpoint(tmp_path / "model.ckpt", random_tensors(arch, 0, seed=3))
    converted = tmp_path / "converted.h5"
    convert(prefix, converted, input_size=96)
    direct = mnp.load(prefix)
    assert direct.arch == arch
    images = rng.random((2, 96, 96, 3), dtype=np.float32)
    np.testing.assert_array_equal(direct(images), mnp.load(converted)(images))


def test_unknown_source_is_one_clear_error():
    with pytest.raises(UnknownSourceError, match="neither a weights file nor a registry name") as info:
        mnp.load("mobilenet_v9_no_such")
    assert isinstance(info.value, (KeyError, WeightsError)) and "\n" not in str(info.value)
