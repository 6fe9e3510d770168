"""Tier 3b: the real ImageNet weights in ../shared, run by us and by the engines they came from.

* V2 0.5/96 TF-Hub export (TF.js graph): TensorFlow executes the exported graph itself.
* V1 0.25/160 float TFLite: LiteRT runs the file; Keras .h5: keras.applications.MobileNet runs it.
* V1 0.5/160 uint8 TFLite (quantization-aware trained): LiteRT runs the quantized model; we run
  its dequantized weights in float, so only the classes are compared.
"""

import numpy as np
import pytest

import mobilenet_np as mnp
from conftest import SHARED, shared_path
from weights_tools.convert import convert

tf = pytest.importorskip("tensorflow", reason="the parity extra (tensorflow-cpu) is not installed")
from peer_runners import keras_mobilenet_v1, run_tflite, run_tfjs_graph_in_tf  # noqa: E402

V2_TFJS = ("weights", "mobilenet_v2_050_96", "tfjs_graph_feature_vector")
V1_025_TFLITE = ("weights", "mobilenet_v1_025_160", "tflite_float", "mobilenet_v1_0.25_160.jevois.tflite")
V1_025_KERAS = ("weights", "mobilenet_v1_025_160", "keras_h5", "mobilenet_160_0_25.h5")
V1_050_QUANT = ("weights", "mobilenet_v1_050_160", "tflite_uint8_quant")
TOLERANCE = 1e-4
BACKENDS = ["numba", "numpy"]


def _photos():
    folder = SHARED / "images"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.fixture(scope="module")
def photos():
    if not _photos():
        pytest.skip(f"real photos not available in {SHARED / 'images'}")
    return _photos()


def _converted(tmp_path_factory, parts, name):
    out = tmp_path_factory.mktemp("real") / f"{name}.h5"
    convert(shared_path(*parts), out)
    return out


@pytest.fixture(scope="module")
def v2_file(tmp_path_factory):
    return _converted(tmp_path_factory, V2_TFJS, "v2_050_96")


@pytest.fixture(scope="module")
def v1_025_file(tmp_path_factory):
    return _converted(tmp_path_factory, V1_025_TFLITE, "v1_025_160")


def _batch(model, photos, seed, n_random=4):
    images = np.stack([model.preprocess(p, "hub") for p in photos])
    noise = np.random.default_rng(seed).random((n_random, *model.input_size, 3), dtype=np.float32)
    return np.concatenate([images, noise])


@pytest.mark.parametrize("backend", BACKENDS)
def test_v2_tfhub_features_match_the_graph_run_by_tensorflow(v2_file, photos, backend):
    model = mnp.load(v2_file, backend=backend)
    images = _batch(model, photos, seed=1)
    expected = run_tfjs_graph_in_tf(shared_path(*V2_TFJS), images)
    got = model(images)
    assert got.shape == (len(images), 1280)
    assert np.abs(got - expected).max() <= TOLERANCE
    assert expected.max() > 1.0        # real features, not a degenerate all-zero comparison


@pytest.mark.parametrize("backend", BACKENDS)
def test_v1_025_logits_match_litert(v1_025_file, photos, backend):
    model = mnp.load(v1_025_file, backend=backend)
    images = _batch(model, photos, seed=2)
    # The .tflite takes [-1, 1]; it has no hub_input conversion, so we apply x * 2 - 1 for it.
    expected = run_tflite(shared_path(*V1_025_TFLITE), images * np.float32(2) - np.float32(1),
                          tensor_name="MobilenetV1/Logits/SpatialSqueeze")
    got = model.logits(images)
    assert got.shape == (len(images), 1001)
    assert np.abs(got - expected).max() <= TOLERANCE
    for ours, theirs in zip(got[:len(photos)], expected[:len(photos)]):
        assert list(np.argsort(-ours)[:5]) == list(np.argsort(-theirs)[:5])


def test_v1_025_keras_h5_matches_keras(tmp_path, photos):
    h5 = shared_path(*V1_025_KERAS)
    out = tmp_path / "keras.h5"
    convert(h5, out)
    model = mnp.load(out)
    assert model.num_classes == 1000 and model.labels_offset == 0
    images = _batch(model, photos, seed=3)
    keras_model = keras_mobilenet_v1(0.25, 160, h5)
    expected = np.asarray(keras_model(images * np.float32(2) - np.float32(1), training=False))
    got = model.endpoints(images, ["Predictions"])["Predictions"]
    assert np.abs(got - expected).max() <= TOLERANCE
    for ours, theirs in zip(got[:len(photos)], expected[:len(photos)]):
        assert list(np.argsort(-ours)[:5]) == list(np.argsort(-theirs)[:5])


@pytest.mark.parametrize("copy", ["coral", "jevois"])
def test_v1_050_quantized_top1_is_in_our_top5(tmp_path, photos, copy):
    """LiteRT runs the uint8 model; we run its dequantized weights in float. Activations were
    quantized in the original, so the logits differ; the classes must still agree."""
    path = shared_path(*V1_050_QUANT, f"mobilenet_v1_0.5_160_quant.{copy}.tflite")
    out = tmp_path / "quant.h5"
    convert(path, out, dequantize=True)            # the float (version-1) file of its weights
    model = mnp.load(out)
    assert not model.quantized
    assert (model.arch.depth_multiplier, model.num_features, model.num_classes) == (0.5, 512, 1001)
    from PIL import Image
    uint8 = np.stack([np.asarray(Image.open(p).convert("RGB").resize((160, 160), Image.BILINEAR))
                      for p in photos])
    theirs = run_tflite(path, uint8)
    ours = model.logits(uint8)
    top1 = theirs.argmax(axis=1)
    top5 = np.argsort(-ours, axis=1)[:, :5]
    agree = float(np.mean(top1 == top5[:, 0]))
    print(f"{copy}: LiteRT uint8 top-1 equals our float top-1 on {agree:.0%} of {len(photos)} photos")
    assert all(t in row for t, row in zip(top1, top5)), list(zip(top1, top5))


def test_parity_command_on_the_quantized_tflite_and_its_v2_file(tmp_path, capsys):
    """``mobilenet-np parity`` compares a quantized .tflite's dequantized weights with TensorFlow (as
    before format version 2), and a version-2 file's the same way (``mnp.load(..., dequantize=True)``
    gives the float model of its integers): the same weights, so the same result."""
    from mobilenet_np import cli
    source = shared_path(*V1_050_QUANT, "mobilenet_v1_0.5_160_quant.coral.tflite")
    assert cli.main(["parity", str(source)]) == 0
    from_tflite = capsys.readouterr().out
    assert "30 of 30 endpoints within" in from_tflite, from_tflite
    v2 = tmp_path / "coral_v2.h5"
    convert(source, v2)
    assert cli.main(["parity", str(v2)]) == 0
    from_v2 = capsys.readouterr().out
    assert "30 of 30 endpoints within" in from_v2, from_v2
    table = [line for line in from_tflite.splitlines() if line.startswith(("Conv2d", "global_pool"))]
    assert table and table == [line for line in from_v2.splitlines() if line.startswith(("Conv2d", "global_pool"))]
