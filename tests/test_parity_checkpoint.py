"""Tier 3a: checkpoints written by TensorFlow itself, converted without TensorFlow, run by us,
compared at every endpoint with TensorFlow's own kernels (tests/tf_reference.py)."""

import numpy as np
import pytest

import mobilenet_np as mnp
from mobilenet_np import spec
from mobilenet_np.parity import tf_endpoints
from mobilenet_np.model import random_tensors

tf = pytest.importorskip("tensorflow", reason="the parity extra (tensorflow-cpu) is not installed")

from tf_checkpoints import write_checkpoint  # noqa: E402
from weights_tools.convert import convert  # noqa: E402

EMA = "/ExponentialMovingAverage"
MODELS = [("mobilenet_v1", 0.5), ("mobilenet_v1", 0.25), ("mobilenet_v2", 0.5), ("mobilenet_v2", 0.35)]
SIZES = [(160, 160), (96, 96), (224, 224), (33, 33), (131, 97)]
TOLERANCE = 1e-4          # endpoint values lie in [0, 6] (or a few units for linear projections)


def slim_checkpoint_tensors(arch, seed):
    """Raw values, distinct EMA shadows, RMSProp slots and global_step, as TF-Slim saves them."""
    raw = random_tensors(arch, num_classes=1001, seed=seed)
    ema = random_tensors(arch, num_classes=1001, seed=seed + 1)
    out = dict(raw)
    for name in raw:
        out[name + EMA] = ema[name]
        out[name + "/RMSProp"] = np.abs(ema[name]) * 0.01
        out[name + "/RMSProp_1"] = ema[name] * 0.001
    out["global_step"] = np.array(123456, np.int64)
    return out, raw, ema


@pytest.fixture(scope="module", params=MODELS, ids=lambda m: f"{m[0]}_{m[1]}")
def converted(request, tmp_path_factory):
    name, multiplier = request.param
    arch = spec.build(name, multiplier)
    tmp = tmp_path_factory.mktemp(f"{name}_{multiplier}")
    tensors, raw, ema = slim_checkpoint_tensors(arch, seed=int(multiplier * 100))
    prefix = write_checkpoint(str(tmp / f"{name}_{multiplier}_224.ckpt"), tensors,
                              num_shards=2 if name == "mobilenet_v2" else 1)
    out = tmp / "model.h5"
    found = convert(prefix, out, weights="ema")
    assert (found.architecture, found.depth_multiplier, found.num_classes) == (name, multiplier, 1001)
    return arch, prefix, out, raw, ema


def test_conversion_preserves_every_tensor(converted, tmp_path):
    import h5py
    arch, prefix, out, raw, ema = converted
    reader = tf.train.load_checkpoint(prefix)
    with h5py.File(out, "r") as f:
        assert f.attrs["weights_choice"] == "ema"
        for name in arch.variables(1001):
            np.testing.assert_array_equal(f[name][()], reader.get_tensor(name + EMA))
    raw_out = tmp_path / "raw.h5"
    convert(prefix, raw_out, weights="raw")
    with h5py.File(raw_out, "r") as f:
        assert f.attrs["weights_choice"] == "raw"
        for name in arch.variables(1001):
            np.testing.assert_array_equal(f[name][()], reader.get_tensor(name))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_every_endpoint_matches_tensorflow(converted, size, backend, rng):
    arch, prefix, out, raw, ema = converted
    model = mnp.load(out, backend=backend)
    images = rng.random((2, *size, 3), dtype=np.float32)
    expected = tf_endpoints(arch, ema, images, num_classes=1001)
    got = model.endpoints(images)
    assert set(got) == set(expected)
    worst = max((float(np.abs(got[n] - expected[n]).max()), n) for n in expected)
    assert worst[0] <= TOLERANCE, f"largest difference {worst[0]:.2e} at endpoint {worst[1]}"
    np.testing.assert_allclose(model(images), expected["global_pool"][:, 0, 0], atol=TOLERANCE, rtol=0)
