"""The converter end to end: sources to weights files, recognition, refusals, and the CLI."""

import numpy as np
import pytest

import mobilenet_np as mnp
from mobilenet_np import spec, weights_file
from mobilenet_np.errors import ArchitectureError, WeightsError
from mobilenet_np.model import random_tensors
from weights_tools.cli import main as weights_tools_main
from weights_tools.convert import convert, detect, open_source

tf = pytest.importorskip("tensorflow", reason="tests write checkpoints with TensorFlow (parity extra)")
from tf_checkpoints import write_checkpoint  # noqa: E402


def _checkpoint(tmp_path, tensors, name="mobilenet_v1_0.5_160.ckpt"):
    return write_checkpoint(str(tmp_path / name), tensors)


@pytest.mark.parametrize("name, multiplier", [("mobilenet_v1", 0.75), ("mobilenet_v2", 1.4), ("mobilenet_v2", 0.6)])
def test_detects_any_width(name, multiplier):
    arch = spec.build(name, multiplier)
    found = detect(random_tensors(arch, num_classes=0), "x")
    assert (found.architecture, found.num_classes, found.folded) == (name, 0, False)
    # An unpublished width may be recognised as another multiplier with identical shapes.
    assert spec.build(name, found.depth_multiplier).variables() == arch.variables()
    if multiplier in spec.PUBLISHED_MULTIPLIERS[name]:
        assert found.depth_multiplier == multiplier


def test_checkpoint_missing_a_tensor_writes_nothing(tmp_path):
    tensors = random_tensors(spec.mobilenet_v1(0.5), 1001)
    del tensors["MobilenetV1/Conv2d_7_depthwise/BatchNorm/gamma"]
    prefix = _checkpoint(tmp_path, tensors)
    out = tmp_path / "out.h5"
    with pytest.raises(ArchitectureError, match="Conv2d_7_depthwise/BatchNorm/gamma"):
        convert(prefix, out, weights="raw")
    assert not out.exists() and not list(tmp_path.glob(".out.h5*"))


def test_checkpoint_with_a_wrong_shape_writes_nothing(tmp_path):
    tensors = random_tensors(spec.mobilenet_v2(0.5), 0)
    tensors["MobilenetV2/expanded_conv_5/project/weights"] = np.zeros((1, 1, 96, 17), np.float32)
    prefix = _checkpoint(tmp_path, tensors, "mobilenet_v2_0.5_96.ckpt")
    out = tmp_path / "out.h5"
    with pytest.raises(ArchitectureError, match=r"expanded_conv_5/project/weights has shape \[1, 1, 96, 17\]"):
        convert(prefix, out)
    assert not out.exists()


def test_unknown_model_tensor_is_refused(tmp_path):
    tensors = random_tensors(spec.mobilenet_v1(0.5), 0)
    tensors["MobilenetV1/Conv2d_14_pointwise/weights"] = np.zeros((1, 1, 512, 512), np.float32)
    with pytest.raises(ArchitectureError, match="unknown tensor.*Conv2d_14_pointwise"):
        detect(tensors, "ckpt")


def test_ema_choice_and_ignored_names(tmp_path):
    arch = spec.mobilenet_v2(0.35)
    raw = random_tensors(arch, 1001, seed=1)
    ema = random_tensors(arch, 1001, seed=2)
    tensors = {**raw, **{k + "/ExponentialMovingAverage": v for k, v in ema.items()
                         if not k.endswith("moving_mean")},
               "global_step": np.array(7, np.int64),
               "MobilenetV2/Conv/weights/RMSProp": raw["MobilenetV2/Conv/weights"]}
    prefix = _checkpoint(tmp_path, tensors, "mobilenet_v2_0.35_128.ckpt")
    src = open_source(prefix, "ema")
    assert src.ignored["global_step"].startswith("optimizer state")
    assert "MobilenetV2/Conv/weights/RMSProp" in src.ignored
    np.testing.assert_array_equal(src.tensors["MobilenetV2/Conv/weights"], ema["MobilenetV2/Conv/weights"])
    # moving_mean has no shadow in this checkpoint: raw is used, and the file says so.
    np.testing.assert_array_equal(src.tensors["MobilenetV2/Conv/BatchNorm/moving_mean"],
                                  raw["MobilenetV2/Conv/BatchNorm/moving_mean"])
    assert any("no EMA shadow" in n for n in src.notes)
    out = tmp_path / "m.h5"
    convert(prefix, out, weights="ema")
    wf = weights_file.read(out)
    assert wf.attrs["default_input_size"] == [128, 128]      # from the TF-Slim file name
    assert wf.attrs["weights_choice"] == "ema"
    assert [f["name"] for f in wf.attrs["source_files"]] == ["mobilenet_v2_0.35_128.ckpt.index",
                                                              "mobilenet_v2_0.35_128.ckpt.data-00000-of-00001"]
    assert all(len(f["sha256"]) == 64 for f in wf.attrs["source_files"])


def test_cli_convert_verify_inspect(tmp_path, capsys):
    prefix = _checkpoint(tmp_path, random_tensors(spec.mobilenet_v1(0.5), 1001))
    out = tmp_path / "v1.h5"
    assert weights_tools_main(["convert", prefix, str(out), "--weights", "raw"]) == 0
    assert "mobilenet_v1 depth multiplier 0.5, 1001 classes" in capsys.readouterr().out
    assert weights_tools_main(["verify", str(out)]) == 0
    assert "format version 1, 137 tensors" in capsys.readouterr().out
    assert weights_tools_main(["inspect", prefix]) == 0
    text = capsys.readouterr().out
    assert "MobilenetV1/Conv2d_13_pointwise/weights" in text and "detected: mobilenet_v1" in text
    model = mnp.load(out)
    assert model.input_size == (160, 160) and model.num_classes == 1001


@pytest.mark.parametrize("args, message", [
    (["convert", "/nonexistent/model.ckpt", "x.h5"], "/nonexistent/model.ckpt"),
    (["verify", "/nonexistent.h5"], "no such weights file"),
])
def test_cli_failures_are_one_line(tmp_path, capsys, args, message):
    args = [a if a != "x.h5" else str(tmp_path / "x.h5") for a in args]
    assert weights_tools_main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("weights-tools: error:") and message in err and "\n" not in err
    assert not (tmp_path / "x.h5").exists()


def test_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello")
    with pytest.raises(WeightsError, match="notes.txt"):
        convert(str(bogus), tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()


def test_tfjs_v2_real_weights_convert_exactly(tmp_path, shared):
    model_dir = shared("weights", "mobilenet_v2_050_96", "tfjs_graph_feature_vector")
    out = tmp_path / "v2.h5"
    found = convert(model_dir, out)
    assert found.describe() == "mobilenet_v2 depth multiplier 0.5, no classifier, BatchNorm folded"
    src = open_source(model_dir)
    wf = weights_file.read(out)
    assert set(wf.tensors) == set(src.tensors)
    for name, value in src.tensors.items():
        np.testing.assert_array_equal(wf.tensors[name], value)


def _flip_one_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_or_missing_shard_writes_nothing(tmp_path):
    from mobilenet_np.errors import CorruptFileError, MissingFileError
    prefix = _checkpoint(tmp_path, random_tensors(spec.mobilenet_v2(0.35), 0), "mobilenet_v2_0.35_96.ckpt")
    shard = tmp_path / "mobilenet_v2_0.35_96.ckpt.data-00000-of-00001"
    out = tmp_path / "o.h5"
    _flip_one_byte(shard, shard.stat().st_size // 2)
    with pytest.raises(CorruptFileError, match="crc32c mismatch"):
        convert(prefix, out)
    assert not out.exists() and not list(tmp_path.glob(".o.h5*"))
    shard.unlink()
    with pytest.raises(MissingFileError, match="data-00000-of-00001"):
        convert(prefix, out)
    assert not out.exists()


def test_parity_command_reports_every_endpoint(tmp_path, capsys):
    from mobilenet_np.cli import main
    path = tmp_path / "m.h5"
    mnp.build("mobilenet_v2", 0.35, 64, num_classes=1001, seed=4).save(path)
    assert main(["parity", str(path), "--tolerance", "1e-4"]) == 0
    out = capsys.readouterr().out
    assert "layer_7/depthwise_output" in out and "global_pool" in out and "Logits" in out
    assert "72 of 72 endpoints within 0.0001" in out      # 69 layer endpoints + pool, Logits, Predictions


def test_weights_tools_cli_help_version_and_an_unwritable_output(tmp_path, capsys, shared):
    """Clean help, a version, a "did you mean", and an output that cannot be written named as
    itself (not a temporary file) with exit status 2, apart from unusable inputs (1)."""
    with pytest.raises(SystemExit) as info:
        weights_tools_main(["--version"])
    assert info.value.code == 0 and "mobilenet-np" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        weights_tools_main(["convrt", "a", "b"])
    assert info.value.code == 2 and "did you mean 'convert'" in capsys.readouterr().err
    source = shared("weights", "mobilenet_v1_025_160", "tflite_float", "mobilenet_v1_0.25_160.jevois.tflite")
    assert weights_tools_main(["convert", str(source), str(tmp_path / "nodir" / "x.h5")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nodir' / 'x.h5'}: folder" in err and ".tmp" not in err and err.count("\n") == 1
