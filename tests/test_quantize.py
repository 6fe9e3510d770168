"""Post-training quantization (`weights-tools quantize`): the math against hand-computed cases and
against the TFLite converter's choices, calibration, the command end to end, and bad inputs.

The int8 models run as ``QuantizedMobileNet`` (the integer kernels; backend "numpy" is the reference loop);
the bounds on their agreement with the float model come from benchmarks/results/quantize.md.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:            # benchmarks/ is a folder of the repo, not an installed package
    sys.path.insert(0, str(REPO))

import mobilenet_np as mnp
from benchmarks.quantize_report import (
    compare,
    converter_params,
    converter_tflite,
    int8_outputs,
    synthetic,
)
from mobilenet_np import calibrate
from mobilenet_np.kernels import reference as ref
from weights_tools import quantize as q

HAVE_TF = importlib.util.find_spec("tensorflow") is not None


# --- the scalar rules, by hand ------------------------------------------------------------------

@pytest.mark.parametrize("rmin, rmax, scale, zero_point", [
    (0.0, 6.0, 6.0 / 255, -128),          # a ReLU6 output: 0.0 is the lowest code
    (-1.0, 1.0, 2.0 / 255, -1),           # 0.0 sits at code -0.5, rounded away from zero
    (2.0, 4.0, 4.0 / 255, -128),          # widened to [0, 4]
    (-3.0, -1.0, 3.0 / 255, 127),         # widened to [-3, 0]
    (-0.5, 2.0, 2.5 / 255, -77),          # -128 + 0.5 / (2.5 / 255) = -77.0
    (-2.0, 0.5, 2.5 / 255, 76),           # 127 - 0.5 / (2.5 / 255) = 76.0
])
def test_activation_params_by_hand(rmin, rmax, scale, zero_point):
    s, zp = q.activation_params(rmin, rmax)
    assert s == np.float32(scale)
    assert zp == zero_point


def test_activation_params_keep_zero_exact_and_cover_the_range(rng):
    for _ in range(200):
        lo, hi = sorted(rng.normal(0, 3, 2))
        s, zp = q.activation_params(lo, hi)
        assert -128 <= zp <= 127
        # 0.0 is the code zp exactly; the codes' range covers [lo, hi] to within one step
        assert float(s) * (-128 - zp) <= min(lo, 0) + float(s)
        assert float(s) * (127 - zp) >= max(hi, 0) - float(s)


def test_activation_params_of_a_constant_zero_tensor_and_bad_ranges():
    assert q.activation_params(0.0, 0.0) == (np.float32(1.0), -128)
    for bad in ((1.0, 0.0), (np.nan, 1.0), (0.0, np.inf)):
        with pytest.raises(ValueError, match="activation range"):
            q.activation_params(*bad)


def test_weights_symmetric_narrow_range_by_hand():
    w = np.array([1.0, -2.0, 0.5, 0.0, 0.25, 0.0], np.float32).reshape(1, 1, 2, 3)   # HWIO, 3 outputs
    # channel 0: {1.0, 0.0} -> 1/127; channel 1: {-2.0, 0.25} -> 2/127; channel 2: {0.5, 0.0} -> 0.5/127
    scales = q.weight_scales(w, axis=3)
    np.testing.assert_array_equal(scales, np.float32([1 / 127, 2 / 127, 0.5 / 127]))
    np.testing.assert_array_equal(q.quantize_weights(w, scales, 3).reshape(-1), [127, -127, 127, 0, 16, 0])
    per_tensor = q.weight_scales(w, axis=None)
    np.testing.assert_array_equal(per_tensor, np.float32([2 / 127]))
    # 0.5 / (2/127) = 31.75 -> 32; 0.25 / (2/127) = 15.875 -> 16; halves round away from zero
    np.testing.assert_array_equal(q.quantize_weights(w, per_tensor, None).reshape(-1), [64, -127, 32, 0, 16, 0])
    np.testing.assert_array_equal(q.quantize_weights(np.float32([[0.5, -0.5, 1.5]]), np.float32([1.0, 1.0, 1.0]), 1),
                                  [[1, -1, 2]])


def test_dead_channels_are_widened_to_the_converters_narrowest_range():
    """A channel of |w| <= 5e-7 (real V2 0.5 has one of 2e-20, with a bias of 0.08) gets scale
    5e-7 / 127, as the converter gives it; max |w| / 127 would make the bias overflow int32."""
    w = np.zeros((3, 3, 4, 1), np.float32)
    w[..., 1, 0] = 0.3
    w[0, 0, 2, 0], w[0, 0, 3, 0] = 2e-20, 8e-7       # range 8e-7 <= 1e-6: widened to [-5e-7, 8e-7]
    scales = q.weight_scales(w, axis=2)
    np.testing.assert_array_equal(scales, np.float32([5e-7 / 127, 0.3 / 127, 5e-7 / 127, 8e-7 / 127]))
    assert not q.quantize_weights(w, scales, 2)[..., [0, 2], 0].any()
    bias, _ = q.quantize_bias(np.float32([0.08] * 4), np.float32(0.4), scales)   # s_in of real V2 0.5 there
    assert 0 < bias[2] < np.iinfo(np.int32).max


def test_bias_scale_is_input_scale_times_weight_scale():
    b, scales = q.quantize_bias(np.float32([0.3, -0.3, 1e6]), np.float32(0.1), np.float32([0.01, 0.01, 1e-9]))
    np.testing.assert_allclose(scales, [0.001, 0.001, 1e-10], rtol=1e-6)
    assert b.dtype == np.int32
    assert list(b[:2]) == [300, -300] and b[2] == np.iinfo(np.int32).max      # saturates


def test_fold_batchnorm_equals_batchnorm_after_the_conv(rng):
    x = rng.normal(0, 1, (2, 9, 9, 4)).astype(np.float32)
    gamma, beta, mean = (rng.normal(1, 0.2, 6), rng.normal(0, 0.3, 6), rng.normal(0, 0.3, 6))
    variance = rng.uniform(0.5, 2, 6)
    w = rng.normal(0, 0.3, (3, 3, 4, 6)).astype(np.float32)
    wf, bf = q.fold_batchnorm(w, gamma, beta, mean, variance, 1e-3, depthwise=False)
    expected = ref.batch_norm(ref.conv2d(x, w, 1, (1, 1, 1, 1), (9, 9)), gamma, beta, mean, variance, 1e-3)
    np.testing.assert_allclose(ref.conv2d(x, wf, 1, (1, 1, 1, 1), (9, 9)) + bf, expected, atol=2e-5)
    dw = rng.normal(0, 0.3, (3, 3, 6, 1)).astype(np.float32)
    x6 = rng.normal(0, 1, (1, 7, 7, 6)).astype(np.float32)
    wf, bf = q.fold_batchnorm(dw, gamma, beta, mean, variance, 1e-3, depthwise=True)
    expected = ref.batch_norm(ref.depthwise_conv2d(x6, dw, 1, (1, 1, 1, 1), (7, 7)), gamma, beta, mean, variance, 1e-3)
    np.testing.assert_allclose(ref.depthwise_conv2d(x6, wf, 1, (1, 1, 1, 1), (7, 7)) + bf, expected, atol=2e-5)


# --- calibration and the whole model ---------------------------------------------------------------

def test_activation_names_follow_the_v2_format():
    arch = mnp.build("mobilenet_v2", 0.35, 96, num_classes=0, backend="numpy").arch
    names = q.activation_names(arch, 0)
    assert names[:3] == ["input", "Conv", "expanded_conv/depthwise"]
    assert "expanded_conv_2/project" in names and "expanded_conv_2/add" in names
    assert names.index("expanded_conv_2/add") == names.index("expanded_conv_2/project") + 1
    assert "expanded_conv_1/add" not in names        # stride 2 and a new depth: no residual
    assert names[-1] == "global_pool"
    assert q.activation_names(arch, 1001)[-1] == "Logits"


def test_calibration_ranges_are_the_float_models_min_and_max(rng):
    model = mnp.build("mobilenet_v2", 0.35, 64, num_classes=5, seed=2, backend="numpy")
    images = rng.uniform(0, 1, (3, 64, 64, 3)).astype(np.float32)
    ranges = calibrate.calibration_ranges(model, images, batch=2)
    assert sorted(ranges) == sorted(q.activation_names(model.arch, 5))
    assert ranges["input"] == (float((images * 2 - 1).min()), float((images * 2 - 1).max()))
    ends = model.endpoints(images, names=["layer_1", "layer_4/output", "layer_4/depthwise_output"])
    assert ranges["Conv"] == (float(ends["layer_1"].min()), float(ends["layer_1"].max()))
    assert ranges["expanded_conv_2/add"] == (float(ends["layer_4/output"].min()), float(ends["layer_4/output"].max()))
    pooled = model(images)
    assert ranges["global_pool"] == (float(pooled.min()), float(pooled.max()))
    logits = model.logits(images)
    assert ranges["Logits"] == (float(logits.min()), float(logits.max()))
    # the projection before the add is the add's output minus the block input
    assert ranges["expanded_conv_2/project"] != ranges["expanded_conv_2/add"]


def test_a_bias_too_large_for_its_scale_raises_the_weight_scale():
    """|b| / (s_in * s_w) above 2^30 (real V2 0.5's first conv: |w| 2e-20, bias -2.0, s_in 2/255)
    raises s_w to |b| / (s_in * 2^30), as the converter does, so the bias is 2^30 steps."""
    scales = q.bias_safe_scales(np.float32([1e-7, 1e-9]), np.float32([0.5, -2.0]), np.float32(2 / 255))
    assert scales[0] == np.float32(1e-7)
    assert scales[1] == np.float32(2.0 / (np.float32(2 / 255) * 2.0 ** 30))
    bias, _ = q.quantize_bias(np.float32([0.5, -2.0]), np.float32(2 / 255), scales)
    assert abs(int(bias[1]) + 2 ** 30) <= 1


def test_residual_projections_cover_the_adds_range_or_only_their_own(rng):
    model = mnp.build("mobilenet_v2", 0.35, 64, num_classes=0, seed=2, backend="numpy")
    images = rng.uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    ranges = calibrate.calibration_ranges(model, images)
    converter_like = calibrate.quantize_float_model(model, images, True)
    own = calibrate.quantize_float_model(model, images, True, projection="own")
    (p_lo, p_hi), (a_lo, a_hi) = ranges["expanded_conv_2/project"], ranges["expanded_conv_2/add"]
    assert converter_like.activations["expanded_conv_2/project"].scale == q.activation_params(
        min(p_lo, a_lo), max(p_hi, a_hi))[0]
    assert own.activations["expanded_conv_2/project"].scale == q.activation_params(p_lo, p_hi)[0]
    for acts in (converter_like.activations, own.activations):
        assert acts["expanded_conv_2/add"].scale == q.activation_params(a_lo, a_hi)[0]
    # a projection without an add keeps its own range either way
    assert converter_like.activations["expanded_conv_1/project"] == own.activations["expanded_conv_1/project"]
    with pytest.raises(ValueError, match="projection"):
        calibrate.quantize_float_model(model, images, True, projection="sum")


@pytest.mark.parametrize("arch", ["mobilenet_v1", "mobilenet_v2"])
def test_the_int8_model_agrees_with_the_float_model(arch, rng):
    """Seeded weights, calibrated and evaluated on different smooth random images.  Bound: on
    these models per-channel int8 gives feature cosines of 0.99-0.999 (measured); 0.98 leaves room
    for the seed, yet a wrong scale, zero point or bias scale anywhere drops it far below."""
    size = 96
    model = mnp.build(arch, 0.5, size, num_classes=10, seed=4, backend="numpy")
    calib, evaluation = synthetic((size, size), n=8, seed=1), synthetic((size, size), n=6, seed=2)
    qm = calibrate.quantize_float_model(model, calib, per_channel=True)
    row = compare({"features": model(evaluation), "logits": model.logits(evaluation)},
                  int8_outputs(qm, evaluation, backend="numpy"))
    assert row["cos_min"] > 0.98, row
    assert row["logits_cos_min"] > 0.98, row


# --- against the TFLite converter -----------------------------------------------------------------

@pytest.mark.skipif(not HAVE_TF, reason="needs tensorflow (the parity extra)")
@pytest.mark.parametrize("per_channel", [True, False])
def test_same_choices_as_the_tflite_converter(per_channel, tmp_path):
    """The converter, given the same float weights and calibration images, picks the same zero
    points and the same int8 weights (BatchNorm folded and divided in float32, as it does); its
    activation scales differ only through its float run's min/max (TensorFlow's kernels, not ours:
    relative 1e-5 at most)."""
    model = mnp.build("mobilenet_v2", 0.35, 64, num_classes=7, seed=5, backend="numpy")
    calib = synthetic((64, 64), n=4, seed=3)
    qm = calibrate.quantize_float_model(model, calib, per_channel)
    path = tmp_path / "converter.tflite"
    path.write_bytes(converter_tflite(model, calib, per_channel))
    acts, weights, biases = converter_params(path, model.arch)
    assert len(acts) == len(q.activation_names(model.arch, 0))
    for name, (scale, zero_point) in acts.items():
        assert qm.activations[name].zero_point == zero_point, name
        assert abs(qm.activations[name].scale / scale - 1) < 1e-5, name
    for name, w in weights.items():
        np.testing.assert_array_equal(qm.tensors[name].values, w, err_msg=name)
    # int32 biases: within one step (the converter folds BatchNorm with its own float order, and
    # its input scales come from its own float run), and that on well under 1 % of them
    ours = np.concatenate([qm.tensors[n].values.astype(np.int64) for n in biases])
    theirs = np.concatenate([b.astype(np.int64) for b in biases.values()])
    assert np.abs(ours - theirs).max() <= 1 and np.mean(ours != theirs) < 0.01


# --- the command --------------------------------------------------------------------------------

def _write_images(folder, n, rng, size=40):
    folder.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size + 3, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


@pytest.fixture
def float_file(tmp_path):
    path = tmp_path / "float.h5"
    mnp.build("mobilenet_v1", 0.25, 64, num_classes=3, seed=6, backend="numpy").save(path)
    return path


def test_bad_inputs_give_one_clear_line(float_file, tmp_path, capsys, rng):
    out = tmp_path / "q.h5"
    cases = [
        ([str(float_file), str(out), "--calibration", str(tmp_path / "nowhere")], "calibration folder does not exist"),
        ([str(float_file), str(out), "--calibration", str(float_file)], "must be a folder of images"),
        ([str(float_file), str(out), "--calibration", str(_write_images(tmp_path / "empty", 0, rng))],
         "no image files"),
        ([str(tmp_path / "missing.h5"), str(out), "--calibration", str(tmp_path / "empty")], "missing.h5"),
    ]
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    cases.append(([str(tmp_path / "junk.h5"), str(out), "--calibration", str(tmp_path / "empty")], "junk.h5"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cases.append(([str(float_file), str(out), "--calibration", str(broken)], "a.png"))
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(b"TFL3 not a weights file")
    cases.append(([str(tflite), str(out), "--calibration", str(broken)], "model.tflite: not a mobilenet-np weights "
                                                                         "file; quantize reads a float one"))
    for argv, message in cases:
        assert calibrate.main(["quantize", *argv]) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("weights-tools: error: ") and message in err[-1], (argv, err)
        assert "Traceback" not in "\n".join(err)
        assert not out.exists()
    # an output in a missing folder is refused before the calibration runs (exit 2: not the input's fault)
    images = _write_images(tmp_path / "calib", 1, rng)
    assert calibrate.main(["quantize", str(float_file), str(tmp_path / "no" / "q.h5"), "--calibration",
                           str(images)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"weights-tools: error: {tmp_path / 'no' / 'q.h5'}: folder {tmp_path / 'no'} does not exist"]


def test_ctrl_c_leaves_no_output_and_no_traceback(float_file, tmp_path, capsys, rng, monkeypatch):
    images = _write_images(tmp_path / "calib", 1, rng)
    out = tmp_path / "q.h5"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(calibrate, "calibration_ranges", interrupted)
    assert calibrate.main(["quantize", str(float_file), str(out), "--calibration", str(images)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "weights-tools: error: interrupted; no output was written" and "Traceback" not in "\n".join(err)
    assert sorted(tmp_path.iterdir()) == sorted([float_file, images])       # no output, no temporary file


def test_per_tensor_weights_warn_about_depthwise_convs(float_file, tmp_path, capsys, rng):
    images = _write_images(tmp_path / "calib", 1, rng)
    for flags, warned in (([], True), (["--per-channel"], False)):
        assert calibrate.main(["quantize", str(float_file), str(tmp_path / "q.h5"), "--calibration", str(images),
                               *flags]) == 0
        err = capsys.readouterr().err
        assert (calibrate.PER_TENSOR_WARNING in err) is warned, (flags, err)
        assert "add --per-channel" in calibrate.PER_TENSOR_WARNING


def test_python_m_weights_tools_quantize_points_to_the_command(capsys):
    """weights_tools may not import the forward pass, so its own entry point names the one that has quantize."""
    from weights_tools import cli
    assert cli.main(["quantize", "in.h5", "out.h5", "--calibration", "images"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "python -m mobilenet_np.calibrate quantize" in err[0], err


def test_the_command_end_to_end(float_file, tmp_path, capsys, rng):
    """quantize writes a version-2 file that reads back, loads as a quantized model, equals the
    in-memory quantization of the same images, records its provenance, and tracks the float model."""
    from mobilenet_np import weights_file
    from mobilenet_np.preprocess import preprocess
    images = _write_images(tmp_path / "calib", 4, rng)
    out = tmp_path / "q.h5"
    assert calibrate.main(["quantize", str(float_file), str(out), "--calibration", str(images), "--per-channel"]) == 0
    captured = capsys.readouterr()
    assert "calibrating" in captured.err and "4 image(s)" in captured.err
    assert f"wrote {out}" in captured.out
    qw = weights_file.read(out)
    assert qw.attrs["format_version"] == 2 and qw.attrs["quantization"] == "int8-per-channel"
    assert qw.attrs["calibration"]["images"] == 4 and qw.attrs["calibration"]["per_channel"] is True
    assert qw.attrs["calibration"]["files"] == [f"im{i}.png" for i in range(4)]
    assert qw.attrs["source_files"][0]["sha256"] == weights_file.file_sha256(float_file)
    float_model = mnp.load(str(float_file))       # the backend the command calibrates with (numba)
    batch = np.stack([preprocess(str(images / f"im{i}.png"), (64, 64), "hub", draft=False) for i in range(4)])
    expected = calibrate.quantize_float_model(float_model, batch, per_channel=True)
    for name, t in expected.tensors.items():
        np.testing.assert_array_equal(qw.tensors[name].values, t.values, err_msg=name)
        np.testing.assert_array_equal(qw.tensors[name].scale, t.scale, err_msg=name)
    assert qw.activations == expected.activations
    quantized = mnp.load(str(out), backend="numpy")
    assert quantized.quantized
    cos = compare({"features": float_model(batch), "logits": float_model.logits(batch)},
                  {"features": quantized(batch), "logits": quantized.logits(batch)})
    assert cos["cos_min"] > 0.98 and cos["logits_cos_min"] > 0.98, cos
    # per-tensor by default; an existing output is replaced whole
    assert calibrate.main(["quantize", str(float_file), str(out), "--calibration", str(images)]) == 0
    assert weights_file.read(out).tensors["MobilenetV1/Conv2d_1_depthwise/depthwise_weights"].scale.shape == (1,)
    # a quantized file is not quantized again
    assert calibrate.main(["quantize", str(out), str(tmp_path / "qq.h5"), "--calibration", str(images)]) == 1
    assert "already quantized" in capsys.readouterr().err


# --- real weights -------------------------------------------------------------------------------

def test_real_v1_025_classifier_agrees_with_its_float_model(shared, tmp_path):
    """Real V1 0.25/160 (the float jevois .tflite), per-channel, calibrated on seeded synthetic
    images only, evaluated on the 9 photos of ../shared/images.  Measured in this setup: feature
    cosine min 0.950, top-1 agreement 7 of 9, float top-1 within the int8 top 5 on 8 of 9 (per-tensor
    weights: cosine 0.23, 0 of 9, 0 of 9).  A 0.25-wide classifier's top-1 margins are small, so
    the bounds leave room (cosine 0.9, top-1 at least half, top 5 at least 7 of 9); a broken
    scale, zero point or bias anywhere drops all three to about what per-tensor weights give."""
    from benchmarks.quantize_report import views
    from weights_tools.convert import convert
    source = shared("weights", "mobilenet_v1_025_160", "tflite_float", "mobilenet_v1_0.25_160.jevois.tflite")
    h5 = tmp_path / "v1_025_160.h5"
    convert(str(source), str(h5))
    model = mnp.load(str(h5))
    qm = calibrate.quantize_float_model(model, synthetic((160, 160)), per_channel=True)
    photos = views(sorted(p for p in shared("images").iterdir() if p.is_file()), (160, 160))[0::3]
    row = compare({"features": model(photos), "logits": model.logits(photos)}, int8_outputs(qm, photos))
    assert row["cos_min"] > 0.9, row
    assert row["in_top5"] >= 7 / 9, row
    assert row["top1"] >= 0.5, row


def test_the_console_script_has_quantize():
    """pyproject's weights-tools entry point is the parser with quantize added (weights_tools
    itself may not import the forward pass that calibration runs)."""
    import importlib
    import tomllib
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["weights-tools"]
    module, _, function = target.partition(":")
    assert getattr(importlib.import_module(module), function) is calibrate.main
    commands = next(a for a in calibrate.build_parser()._actions if a.dest == "command").choices
    assert {"inspect", "convert", "verify", "quantize"} <= set(commands)


def test_convert_of_a_weights_file_says_there_is_nothing_to_convert(float_file, tmp_path, capsys, rng):
    """Before, a mobilenet-np file given to convert was read as a Keras .h5 ("no model_weights group")."""
    from weights_tools import cli
    int8 = tmp_path / "int8.h5"
    assert calibrate.main(["quantize", str(float_file), str(int8), "--calibration",
                           str(_write_images(tmp_path / "calib", 1, rng)), "--per-channel"]) == 0
    capsys.readouterr()
    for source, flags in ((float_file, []), (int8, ["--dequantize"])):
        assert cli.main(["convert", str(source), str(tmp_path / "out.h5"), *flags]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"weights-tools: error: {source}: already a mobilenet-np weights file, nothing to convert "
                       "(weights-tools verify checks it; mnp.load(FILE, dequantize=True).save(OUT) makes a float "
                       "file of a quantized one)"]
        assert not (tmp_path / "out.h5").exists()
