"""The API users of timm, Keras, TF-Hub and Hugging Face reach for (issue 14), each checked against
the existing API: model names and aliases, the data config, pooling, forward_features, feature
maps by output stride, endpoint aliases, in-memory inputs, and refusals of wrong inputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import mobilenet_np as mnp
from mobilenet_np import names, registry
from mobilenet_np.endpoint_names import scope_aliases
from mobilenet_np.errors import UnknownSourceError, WeightsError

# --- names ---------------------------------------------------------------------------------------

ALIASES = {
    "https://tfhub.dev/google/imagenet/mobilenet_v1_050_160/feature_vector/3": "mobilenet_v1_050_160",
    "google/imagenet/mobilenet_v2_050_96/classification/4": "mobilenet_v2_050_96",
    "https://tfhub.dev/google/imagenet/mobilenet_v2_050_96/feature_vector/1?tf-hub-format=compressed":
        "mobilenet_v2_050_96",
    "google/mobilenet-v2/tensorFlow2/050-96-feature-vector": "mobilenet_v2_050_96",
    "https://www.kaggle.com/models/google/mobilenet-v2/TensorFlow2/035-128-classification/2": "mobilenet_v2_035_128",
    "https://www.kaggle.com/models/google/mobilenet-v1/frameworks/TensorFlow1/variations/"
    "025-224-feature-vector/versions/1": "mobilenet_v1_025_224",
    "mobilenet_v1_0.5_160": "mobilenet_v1_050_160",
    "mobilenet_v2_1.4_224.tgz": "mobilenet_v2_140_224",
    "google/mobilenet_v2_1.0_224": "mobilenet_v2_100_224",
    "google/mobilenet_v1_0.75_192": "mobilenet_v1_075_192",
    "MobileNet_V2_050_96": "mobilenet_v2_050_96",
}


@pytest.mark.parametrize("alias", ALIASES)
def test_other_hubs_names_map_to_registry_entries(alias):
    assert names.canonical_name(alias) == ALIASES[alias]


@pytest.mark.parametrize("text", ["mobilenet_v2_140_96", "google/mobilenet-v2/tensorFlow2/tf2-preview-feature-vector",
                                  "mobilenet_v1_1.0_224_quant", "resnet_50", "google/imagenet/mobilenet_v3_large_100_224"])
def test_names_of_other_weights_are_not_aliases(text):
    assert names.canonical_name(text) is None


def test_load_takes_an_alias_as_its_registry_entry(tmp_path, monkeypatch, rng):
    """A TF-Hub handle loads the same cached file as the registry name (no download here)."""
    monkeypatch.setenv("MOBILENET_NP_HOME", str(tmp_path))
    model = mnp.build("mobilenet_v2", 0.5, 96, seed=2)
    model.save(tmp_path / "mobilenet_v2_050_96.h5")
    by_handle = mnp.load("https://tfhub.dev/google/imagenet/mobilenet_v2_050_96/feature_vector/1")
    x = rng.random((1, 96, 96, 3), dtype=np.float32)
    np.testing.assert_array_equal(by_handle(x), mnp.load("mobilenet_v2_050_96")(x))
    assert by_handle.input_size == (96, 96)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(UnknownSourceError, match="neither a weights file nor a registry name") as info:
        mnp.load("mobilenet_v2_050_69")
    message = str(info.value)
    assert "did you mean" in message and "mobilenet_v2_050_96" in message and "\n" not in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, WeightsError)


def test_list_models_filters_with_a_pattern():
    v2 = mnp.list_models("mobilenet_v2*")
    assert v2 == [n for n in registry.list_models() if n.startswith("mobilenet_v2")] and len(v2) == 22
    assert mnp.list_models("*_224") == [n for n in registry.list_models() if n.endswith("_224")]
    assert mnp.list_models() == registry.list_models()


# --- the model API -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v2():
    return mnp.build("mobilenet_v2", 0.5, 96, seed=4)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(14).random((2, 96, 96, 3), dtype=np.float32)


def test_data_config_says_how_to_preprocess(v2):
    config = v2.data_config
    assert config.input_size == (96, 96) and config.preset == "hub" and config.crop_fraction == 1.0
    assert config.input_range == (0.0, 1.0) and config.to_dict()["mean"] == (0.5, 0.5, 0.5)
    slim = mnp.MobileNet(v2.arch, v2.tensors, num_classes=1001, folded=False, input_size=(96, 96),
                         default_preset="slim").data_config
    assert slim.crop_fraction == 0.875 and "legacy" in slim.interpolation


def test_forward_features_is_the_last_endpoint(v2, images):
    last = v2.forward_features(images)
    assert last.shape == (2, 3, 3, 1280)
    np.testing.assert_array_equal(last, v2.endpoints(images, "layer_19")["layer_19"])
    np.testing.assert_allclose(last.mean(axis=(1, 2)), v2(images), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooling", ["max", None])
def test_pooling_like_keras(v2, images, pooling):
    model = mnp.MobileNet(v2.arch, v2.tensors, num_classes=1001, folded=False, input_size=(96, 96), pooling=pooling)
    last = v2.endpoints(images, "layer_19")["layer_19"]
    expected = last if pooling is None else np.max(last, axis=(1, 2))
    np.testing.assert_array_equal(model(images), expected)
    np.testing.assert_array_equal(model.logits(images), v2.logits(images))      # the classifier: always avg


def test_load_sets_pooling(tmp_path, v2, images):
    v2.save(tmp_path / "m.h5")
    model = mnp.load(tmp_path / "m.h5", pooling="max")
    assert model.pooling == "max" and model(images).shape == (2, 1280)
    with pytest.raises(ValueError, match="pooling"):
        mnp.load(tmp_path / "m.h5", pooling="mean")


@pytest.mark.parametrize("architecture, expected", [
    ("mobilenet_v1", ["Conv2d_3_pointwise", "Conv2d_5_pointwise", "Conv2d_11_pointwise", "Conv2d_13_pointwise"]),
    ("mobilenet_v2", ["layer_4", "layer_7", "layer_14", "layer_19"]),
])
def test_feature_maps_by_output_stride(architecture, expected, rng):
    model = mnp.build(architecture, 0.25 if architecture == "mobilenet_v1" else 0.35, 64, seed=1)
    x = rng.random((1, 64, 64, 3), dtype=np.float32)
    maps = model.feature_maps(x)
    assert model.feature_map_names() == expected
    assert [m.shape[1:3] for m in maps] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    ends = model.endpoints(x, expected)
    for name, got in zip(expected, maps):
        np.testing.assert_array_equal(got, ends[name])
    assert [m.shape for m in model.feature_maps(x, strides=(32, 8))] == [maps[3].shape, maps[1].shape]
    with pytest.raises(ValueError, match="output strides \\[64\\]"):
        model.feature_maps(x, strides=(64,))


def test_summary_scopes_are_endpoint_names(v2, images):
    aliases = scope_aliases(v2.arch)
    assert aliases["expanded_conv_3/project"] == "layer_5/output" and aliases["expanded_conv_3"] == "layer_5"
    assert aliases["Conv"] == "layer_1" and aliases["Conv_1"] == "layer_19"
    assert aliases["expanded_conv/depthwise"] == "layer_2/depthwise_output"
    for row in v2.summary_rows():      # every scope summary() shows names one of that layer's endpoints
        assert aliases.get(row["scope"], row["scope"]) in row["endpoints"]
    asked = ["expanded_conv_3/project", "layer_5/output", "expanded_conv_14/expand"]
    ends = v2.endpoints(images, asked)
    assert list(ends) == asked
    np.testing.assert_array_equal(ends["expanded_conv_3/project"], ends["layer_5/output"])
    np.testing.assert_array_equal(ends["expanded_conv_14/expand"],
                                  v2.endpoints(images, "layer_16/expansion_output")["layer_16/expansion_output"])
    with pytest.raises(KeyError, match="did you mean.*expanded_conv_3/project"):
        v2.endpoints(images, "expanded_conv_3/projct")


# --- inputs --------------------------------------------------------------------------------------


def _photo(rng, size=(70, 50)):
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_preprocess_takes_every_kind_of_image(v2, rng, tmp_path):
    img = _photo(rng)
    img.save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    expected = v2.preprocess(tmp_path / "a.png")
    assert expected.shape == (96, 96, 3) and expected.dtype == np.float32
    for same in (str(tmp_path / "a.png"), data, io.BytesIO(data), img, np.asarray(img)):
        np.testing.assert_array_equal(v2.preprocess(same), expected)
    batch = v2.preprocess([data, img, np.asarray(img)])
    assert batch.shape == (3, 96, 96, 3)
    np.testing.assert_array_equal(batch[2], expected)
    np.testing.assert_array_equal(v2.preprocess(np.stack([np.asarray(img)] * 2)), np.stack([expected] * 2))
    as_float = v2.preprocess(np.asarray(img) / 255.0)      # float arrays resized in float
    assert as_float.shape == (96, 96, 3) and np.abs(as_float - expected).max() < 0.02


def test_embed_takes_in_memory_images(v2, rng):
    img = _photo(rng)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    sources = [buf.getvalue(), img, np.asarray(img)]
    result = mnp.embed(sources, model=v2, progress=False)
    assert len(result.paths) == 3 and len(set(result.paths)) == 3 and not result.failures
    expected = v2(v2.preprocess(img)[None])[0]
    for row in result.features:
        np.testing.assert_allclose(row, expected, rtol=0, atol=1e-6)
    single = mnp.embed(np.asarray(img), model=v2, progress=False)
    assert single.features.shape == (1, 1280)
    bad = mnp.embed([b"not an image", img], model=v2, progress=False)
    assert len(bad.paths) == 1 and len(bad.failures) == 1


@pytest.mark.parametrize("wrong, word", [("photo.jpg", "files"), (["a.jpg", "b.jpg"], "files"),
                                         ("image", "PIL images"), ("images", "PIL images")])
def test_model_refuses_undecoded_input_and_points_to_preprocess(v2, rng, wrong, word):
    if wrong in ("image", "images"):
        wrong = _photo(rng) if wrong == "image" else [_photo(rng)]
    with pytest.raises(TypeError, match=f"{word} with model.preprocess"):
        v2(wrong)


def test_float_input_outside_0_1_is_refused_unless_asked(v2, images):
    with pytest.raises(ValueError, match="divide 0-255 images by 255, or pass them as uint8"):
        v2(images * 255)
    with pytest.raises(ValueError, match="\\(x \\+ 1\\) / 2"):
        v2.endpoints(images * 2 - 1, "layer_1")
    scaled = v2(images * 255, check_range=False)
    assert scaled.shape == (2, 1280) and np.isfinite(scaled).all()
    lenient = mnp.MobileNet(v2.arch, v2.tensors, num_classes=1001, folded=False, input_size=(96, 96),
                            check_range=False)
    np.testing.assert_array_equal(lenient(images * 255), scaled)
    # resampling overshoot within the slack, and uint8, are accepted
    v2(np.clip(images * 1.04 - 0.02, -1, 2).astype(np.float32))
    v2((images * 255).astype(np.uint8))


def test_two_folders_holding_the_same_name_stay_apart(v2, rng, tmp_path, monkeypatch):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        _photo(rng).save(tmp_path / folder / "x.jpg")
    monkeypatch.chdir(tmp_path)
    both = mnp.embed(["a", "b", "a/x.jpg"], model=v2, progress=False)      # a/x.jpg named twice: once
    assert both.paths == ["a/x.jpg", "b/x.jpg"]
    assert not np.array_equal(both.features[0], both.features[1])
    assert mnp.embed("a", model=v2, progress=False).paths == ["x.jpg"]      # one folder: relative to it
    absolute = mnp.embed([tmp_path / "a", tmp_path / "b"], model=v2, progress=False)
    assert absolute.paths == [f"{tmp_path}/a/x.jpg", f"{tmp_path}/b/x.jpg"]


def test_quantized_models_are_part_of_the_public_api(tmp_path, rng):
    """``mnp.QuantizedMobileNet`` is exported; ``quantized`` is False on float models and True on
    what ``mnp.load`` gives for a version-2 file; TensorFlow parity refuses the quantized one."""
    from mobilenet_np import calibrate, parity
    assert "QuantizedMobileNet" in mnp.__all__ and issubclass(mnp.QuantizedMobileNet, mnp.MobileNet)
    float_model = mnp.build("mobilenet_v1", 0.25, 64, num_classes=3, seed=6, backend="numpy")
    images = rng.random((3, 64, 64, 3), dtype=np.float32)
    float_path, int8_path = tmp_path / "float.h5", tmp_path / "int8.h5"
    float_model.save(float_path)
    calibrate.write_quantized(int8_path, calibrate.quantize_float_model(float_model, images, per_channel=True))
    loaded_float, loaded_int8 = mnp.load(str(float_path), backend="numpy"), mnp.load(str(int8_path), backend="numpy")
    assert loaded_float.quantized is False and not isinstance(loaded_float, mnp.QuantizedMobileNet)
    assert loaded_int8.quantized is True and isinstance(loaded_int8, mnp.QuantizedMobileNet)
    assert loaded_int8(images).shape == loaded_float(images).shape
    with pytest.raises(ValueError, match="int8: parity compares a float model with TensorFlow; this model is quantized"):
        parity.compare(loaded_int8, images)


def test_load_dequantize_of_a_v2_file_is_the_float_model_of_its_tflite(shared, tmp_path, rng):
    """``mnp.load(v2_file, dequantize=True)`` (ignored before) gives the float model of the stored
    integers: bit for bit what ``weights-tools convert --dequantize`` makes of the .tflite itself."""
    from weights_tools.convert import convert
    tflite = shared("weights", "mobilenet_v1_050_160", "tflite_uint8_quant", "mobilenet_v1_0.5_160_quant.coral.tflite")
    convert(str(tflite), str(tmp_path / "v2.h5"))
    convert(str(tflite), str(tmp_path / "v1.h5"), dequantize=True)
    kept, want = mnp.load(str(tmp_path / "v2.h5")), mnp.load(str(tmp_path / "v1.h5"))
    got = mnp.load(str(tmp_path / "v2.h5"), dequantize=True)
    assert kept.quantized and not got.quantized and type(got) is mnp.MobileNet
    assert set(got.tensors) == set(want.tensors)
    for name, tensor in want.tensors.items():
        np.testing.assert_array_equal(got.tensors[name], tensor, err_msg=name)
    x = rng.random((2, 160, 160, 3), dtype=np.float32)
    np.testing.assert_array_equal(got.logits(x), want.logits(x))
    assert got.labels_offset == want.labels_offset == 1
