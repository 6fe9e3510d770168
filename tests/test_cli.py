"""The command line as a new user meets it (issue 14): help, --version, "did you mean", one-line
errors naming the flag and the file, missing extras, the embed output formats (.parquet, .npz,
float16, L2) checked against the .h5 of the same run, and classify's names and --output."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import mobilenet_np as mnp
from mobilenet_np import cli, errors, labels

REPO = Path(__file__).resolve().parents[1]


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def run(capsys, *argv):
    """``mobilenet-np argv`` in this process: (exit status, stdout, stderr)."""
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two folders a/ and b/ that both hold x.png (and a/y.png), and a random V2 0.35/32 model."""
    rng = np.random.default_rng(41)
    root = tmp_path_factory.mktemp("cli")
    for name in ("a/x.png", "a/y.png", "b/x.png"):
        (root / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(root / name)
    mnp.build("mobilenet_v2", 0.35, 32, seed=6).save(root / "m.h5")
    return root


# --- help, version, suggestions, errors ----------------------------------------------------------


def _commands():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def test_every_command_and_option_has_clean_help():
    parser, commands = _commands()
    for name, command in [("", parser), *commands.items()]:
        assert command.description and command.description.rstrip().endswith((".", ")")), name
        texts = [command.description] + [a.help for a in command._actions]
        for action in command._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        assert not any("``" in t for t in texts if t), f"{name}: RST markup in the help"
        command.format_help()          # renders without error


def test_version(capsys):
    status, out, _ = run(capsys, "--version")
    assert status == 0 and out.strip() == f"mobilenet-np {mnp.__version__}"


@pytest.mark.parametrize("argv, hint", [
    (["embedd"], "did you mean 'embed'?"),
    (["embed", "x.png", "--modle", "m.h5", "-o", "a.h5"], "'--modle': did you mean '--model'?"),
    (["embed", "x.png", "--model", "m.h5", "-o", "a.h5", "--normalise", "l2"], "did you mean '--normalize'?"),
    (["classify", "x.png", "--model", "m.h5", "--lables", "l.txt"], "did you mean '--labels'?"),
    (["embed", "x.png", "--model", "m.h5", "-o", "a.h5", "--preset", "hubb"], "did you mean 'hub'?"),
    (["--verison"], "did you mean '--version'?"),
])
def test_mistyped_commands_and_options_get_a_suggestion(capsys, argv, hint):
    status, _, err = run(capsys, *argv)
    assert status == 2 and hint in err.splitlines()[-1]


def test_mistyped_model_name_gets_a_suggestion(capsys, data, monkeypatch):
    monkeypatch.chdir(data)
    status, _, err = run(capsys, "classify", "a", "--model", "mobilenet_v1_050_106")
    assert status == errors.EXIT_FAILURE and len(err.splitlines()) == 1
    assert err.startswith("mobilenet-np: error: --model: ") and "did you mean mobilenet_v1_050_160" in err


def test_missing_labels_file_is_one_line_naming_flag_and_file(capsys, data, monkeypatch):
    monkeypatch.chdir(data)
    status, _, err = run(capsys, "classify", "a", "--model", "m.h5", "--labels", "nosuch.txt")
    assert status == errors.EXIT_FAILURE
    assert err == "mobilenet-np: error: --labels nosuch.txt: no such file\n"


@pytest.mark.parametrize("module, argv, extra", [
    ("tensorflow", ["parity", "m.h5"], "parity"),
    ("pyarrow", ["embed", "a", "--model", "m.h5", "-o", "out.parquet"], "dask"),
])
def test_missing_extra_is_one_line_naming_it(capsys, data, monkeypatch, module, argv, extra):
    monkeypatch.chdir(data)
    monkeypatch.setitem(sys.modules, module, None)      # as if not installed
    status, _, err = run(capsys, *argv)
    assert status == errors.EXIT_FAILURE and len(err.splitlines()) == 1
    assert f"needs {module}, which is not installed: pip install 'mobilenet-np[{extra}]'" in err
    assert not (data / "out.parquet").exists()


def test_list_filters_by_pattern(capsys):
    status, out, _ = run(capsys, "list", "mobilenet_v2_1*")
    rows = [line.split()[0] for line in out.splitlines()[1:]]
    assert status == 0 and rows == mnp.list_models("mobilenet_v2_1*") and len(rows) == 7
    status, _, err = run(capsys, "list", "resnet*")
    assert status == errors.EXIT_FAILURE and "no registry name matches 'resnet*'" in err


def test_bad_numbers_say_what_is_expected(capsys):
    status, _, err = run(capsys, "embed", "a", "--model", "m.h5", "-o", "a.h5", "--batch-size", "ten")
    assert status == 2
    assert "--batch-size: expected a whole number >= 1, got 'ten'" in err


# --- embed outputs --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(data):
    """The .h5 of embedding both folders: the rows every other format is checked against."""
    before = os.getcwd()
    os.chdir(data)
    try:
        assert cli.main(["embed", "a", "b", "--model", "m.h5", "-o", "ref.h5", "--quiet"]) == 0
    finally:
        os.chdir(before)
    with h5py.File(data / "ref.h5", "r") as f:
        return list(f["paths"].asstr()[:]), f["features"][:]


def test_two_folders_holding_x_are_stored_apart(reference):
    assert reference[0] == ["a/x.png", "a/y.png", "b/x.png"]


def test_parquet_output_has_the_dask_schema(capsys, data, monkeypatch, reference):
    pa = pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (dask extra)")
    import pyarrow.parquet as pq
    monkeypatch.chdir(data)
    status, _, err = run(capsys, "embed", "a", "b", "--model", "m.h5", "-o", "out.parquet", "--quiet")
    assert status == 0, err
    table = pq.read_table(data / "out.parquet")
    assert table.schema.field("path").type == pa.string()
    assert table.schema.field("features").type == pa.list_(pa.float32(), 1280)
    assert table.column("path").to_pylist() == reference[0]
    np.testing.assert_array_equal(np.array(table.column("features").to_pylist(), np.float32), reference[1])
    meta = json.loads(table.schema.metadata[b"mobilenet_np"])
    assert meta["failures"] == [] and meta["attrs"]["model"] == "m"
    if _has("pyarrow"):           # the very schema of a Dask part file (dataset.py needs only pyarrow)
        from mobilenet_np import dataset
        dataset.write_partition(str(data), 0, mnp.embed(["a"], model=data / "m.h5", progress=False), {}, 1280)
        assert pq.read_schema(data / "part-00000.parquet").remove_metadata() == table.schema.remove_metadata()
    pd = pytest.importorskip("pandas", reason="reading with pandas needs pandas")
    frame = pd.read_parquet(data / "out.parquet")
    assert list(frame["path"]) == reference[0] and np.stack(frame["features"]).shape == (3, 1280)


def test_npz_float16_and_l2(capsys, data, monkeypatch, reference):
    monkeypatch.chdir(data)
    status, _, err = run(capsys, "embed", "a", "b", "--model", "m.h5", "-o", "out.npz", "--dtype", "float16",
                         "--normalize", "l2", "--quiet")
    assert status == 0, err
    with np.load(data / "out.npz") as f:          # no pickle needed
        assert list(f["paths"]) == reference[0] and f["features"].dtype == np.float16
        unit = reference[1] / np.linalg.norm(reference[1], axis=1, keepdims=True)
        np.testing.assert_array_equal(f["features"], unit.astype(np.float16))
        assert json.loads(str(f["attrs"]))["normalize"] == "l2" and len(f["failed_paths"]) == 0


@pytest.mark.parametrize("suffix", [".parquet", ".npz"])
def test_failures_are_kept_in_single_file_outputs(capsys, data, monkeypatch, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (dask extra)")
    monkeypatch.chdir(data)
    status, _, _ = run(capsys, "embed", "a", "nosuch.png", "--model", "m.h5", "-o", f"partial{suffix}", "-q")
    assert status == errors.EXIT_PARTIAL
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        table = pq.read_table(data / "partial.parquet")
        failures = json.loads(table.schema.metadata[b"mobilenet_np"])["failures"]
        paths = table.column("path").to_pylist()
    else:
        with np.load(data / "partial.npz") as f:
            failures = [list(pair) for pair in zip(f["failed_paths"], f["failed_errors"])]
            paths = list(f["paths"])
    assert paths == ["a/x.png", "a/y.png"] and failures == [["nosuch.png", "no such file"]]


def test_float16_h5(capsys, data, monkeypatch, reference):
    monkeypatch.chdir(data)
    status, _, _ = run(capsys, "embed", "a", "b", "--model", "m.h5", "-o", "half.h5", "--dtype", "float16", "-q")
    with h5py.File(data / "half.h5", "r") as f:
        assert status == 0 and f["features"].dtype == np.float16 and f.attrs["dtype"] == "float16"
        np.testing.assert_array_equal(f["features"][:], reference[1].astype(np.float16))


# --- classify -------------------------------------------------------------------------------------


def _expected_top(data, path, k):
    model = mnp.load(data / "m.h5")
    return labels.top_k(model.logits(model.preprocess(data / path)[None]), k)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_classify_output_file(capsys, data, monkeypatch, suffix):
    monkeypatch.chdir(data)
    status, out, err = run(capsys, "classify", "a", "b", "--model", "m.h5", "--top", 2, "-o", f"top{suffix}", "-q")
    assert status == 0 and out == "", err
    names = labels.class_names(1001, 1)
    text = (data / f"top{suffix}").read_text()
    if suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        assert [r["path"] for r in rows] == ["a/x.png", "a/x.png", "a/y.png", "a/y.png", "b/x.png", "b/x.png"]
        got = rows[4:6]
    else:
        records = [json.loads(line) for line in text.splitlines()]
        assert [r["path"] for r in records] == ["a/x.png", "a/y.png", "b/x.png"]
        got = records[2]["top"]
    order, probabilities = _expected_top(data, "b/x.png", 2)
    assert [int(r["class"]) for r in got] == list(order[0])
    assert [r["label"] for r in got] == [names[i] for i in order[0]]
    np.testing.assert_allclose([float(r["probability"]) for r in got], probabilities[0], atol=1e-6)


def test_classify_prints_imagenet_names_by_default_and_keras_heads_keep_their_offset(capsys, data, monkeypatch):
    monkeypatch.chdir(data)
    status, out, _ = run(capsys, "classify", "b/x.png", "--model", "m.h5", "--top", 1, "-q")
    order, _ = _expected_top(data, "b/x.png", 1)
    names = labels.class_names(1001, 1)
    assert status == 0 and out.split("\t")[1].startswith(names[order[0, 0]] + " (")
    assert labels.class_names(1000, 0)[0] == names[1] == "tench, Tinca tinca"


@pytest.mark.parametrize("weights", [("tflite_float", "mobilenet_v1_0.25_160.jevois.tflite"),
                                     ("keras_h5", "mobilenet_160_0_25.h5")], ids=["1001-classes", "keras-1000"])
def test_real_weights_name_the_parrot(capsys, shared, weights):
    """The real V1 0.25/160 weights, as a 1001-class TFLite file and as a 1000-class Keras file
    (labels offset 0): both name the parrot with the packaged labels."""
    model = shared("weights", "mobilenet_v1_025_160", *weights)
    status, out, err = run(capsys, "classify", shared("images", "coral_parrot.jpg"), "--model", model, "--top", 1, "-q")
    assert status == 0, err
    assert out.split("\t")[1].startswith("macaw (")


def test_help_in_a_subprocess_is_clean():
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "mobilenet_np", "--help"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "``" not in result.stdout and "--version" in result.stdout


@pytest.mark.parametrize("child_status", [0, 3])
def test_warmup_compiles_the_integer_kernels_in_a_second_process(monkeypatch, capsys, child_status):
    """With two cores the integer kernels go to a child; should it fail, this process compiles
    them and says so (the compiles themselves replaced by recorders: the test above runs them)."""
    from mobilenet_np.forward import tiered
    from mobilenet_np.kernels import jit
    from mobilenet_np import quantized_model

    if jit._FOLDER is None:
        pytest.skip("no usable kernel cache folder: warmup compiles everything in one process")
    done = []
    monkeypatch.setattr(cli, "_cores", lambda: 2)
    monkeypatch.setattr(tiered, "fill_cache", lambda: done.append("float"))
    monkeypatch.setattr(quantized_model, "warm_up_integer_kernels", lambda: done.append("integer here"))
    started = []

    def child(code, stderr):
        started.append(code)
        return subprocess.Popen([sys.executable, "-c", f"import sys; sys.stderr.write('boom'); sys.exit({child_status})"],
                                stderr=stderr)

    monkeypatch.setattr(tiered, "child_process", child)
    assert cli.main(["warmup"]) == 0
    assert len(started) == 1 and "warm_up_integer_kernels" in started[0]
    assert f"compile_layer_kernels as c; c({cli.CHILD_KERNELS})" in started[0]
    err = capsys.readouterr().err
    if child_status == 0:
        assert done == ["float"] and "failed" not in err
    else:
        assert done == ["float", "integer here"]
        assert "second process failed (exit status 3: boom); compiling its kernels here" in err


def test_warmup_fills_the_kernel_cache_and_quiet_silences_it():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MOBILENET_NP_QUIET", None)
    loud = subprocess.run([sys.executable, "-m", "mobilenet_np", "warmup"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert loud.returncode == 0, loud.stderr
    assert loud.stdout.startswith("kernels ready in ") and "cache:" in loud.stdout
    # every entry point is now cached: a second run compiles nothing, and -q prints nothing
    quiet = subprocess.run([sys.executable, "-m", "mobilenet_np", "warmup", "-q"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=900)
    assert quiet.returncode == 0 and quiet.stdout == "" and "compiling" not in quiet.stderr, quiet.stderr
