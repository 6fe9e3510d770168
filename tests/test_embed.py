"""Embedding many files: inputs, the decoding pipeline, the journal, and the embed / classify
commands run as subprocesses (exit status, outputs, resuming after SIGKILL)."""

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import ExifTags, Image

import mobilenet_np as mnp
from mobilenet_np import errors, inputs, labels, pipeline
from mobilenet_np import journal as jn
from mobilenet_np.errors import ImageError

from conftest import png_claiming as _png_claiming

REPO = Path(__file__).resolve().parents[1]
NUM_GOOD = 200
FEATURE_TOLERANCE = 1e-6

# (extension, Pillow format, mode): every decoder path the embed command meets in practice.
KINDS = [
    ("jpg", "JPEG", "RGB"), ("JPG", "JPEG", "L"), ("jpeg", "JPEG", "CMYK"),
    ("png", "PNG", "RGB"), ("png", "PNG", "RGBA"), ("png", "PNG", "P"), ("png", "PNG", "I;16"),
    ("bmp", "BMP", "RGB"), ("bmp", "BMP", "P"), ("gif", "GIF", "P"),
    ("webp", "WEBP", "RGB"), ("webp", "WEBP", "RGBA"),
    ("tiff", "TIFF", "CMYK"), ("tif", "TIFF", "I;16"), ("tiff", "TIFF", "L"),
]


def _jpeg_bytes(rng):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


# name -> (how to make it, a word its failure reason must contain)
BROKEN = {
    "bomb.png": (lambda p, rng: p.write_bytes(_png_claiming(100_000, 100_000)), "decompression bomb"),
    "empty.jpg": (lambda p, rng: p.write_bytes(b""), "empty"),
    "text.jpg": (lambda p, rng: p.write_text("not a JPEG\n"), "not an image"),
    "truncated.jpg": (lambda p, rng: p.write_bytes(_jpeg_bytes(rng)[:700]), "truncated"),
    "x.jpg": (lambda p, rng: p.mkdir(), "directory"),
}


def _smooth_image(rng, mode):
    width, height = int(rng.integers(20, 301)), int(rng.integers(20, 201))
    coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    rgb = coarse.resize((width, height), Image.Resampling.BILINEAR)
    if mode == "RGBA":
        rgba = np.dstack([np.asarray(rgb), rng.integers(0, 256, (height, width), dtype=np.uint8)])
        return Image.fromarray(rgba, "RGBA")
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
    if mode == "P":
        return rgb.quantize(64)
    return rgb.convert(mode)


def _write_image(rng, folder, index):
    ext, fmt, mode = KINDS[index % len(KINDS)]
    name = f"img_{index:03d}.{ext}"
    img = _smooth_image(rng, mode)
    kwargs = {}
    if fmt == "JPEG" and index % 4 == 0:  # some JPEGs stored sideways, upright by EXIF
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = 1 + index // 4 % 8
        kwargs["exif"] = exif
    img.save(folder / name, fmt, **kwargs)
    return name


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A folder of NUM_GOOD images of mixed formats and modes, the broken files, a sub-folder
    (only seen with --recursive), a non-image file, and a random-weight V2 0.5/96 model file."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("embed")
    folder = root / "photos"
    folder.mkdir()
    good = [_write_image(rng, folder, i) for i in range(NUM_GOOD)]
    for name, (make, _) in BROKEN.items():
        make(folder / name, rng)
    (folder / "notes.md").write_text("not an image extension: ignored\n")
    (folder / "sub").mkdir()
    nested = ["sub/" + _write_image(rng, folder / "sub", i) for i in range(3)]
    model_path = root / "model.h5"
    mnp.build("mobilenet_v2", depth_multiplier=0.5, input_size=96, seed=0).save(model_path)
    return {"root": root, "folder": folder, "good": sorted(good), "nested": nested, "model": model_path}


@pytest.fixture(scope="module")
def model(data):
    return mnp.load(data["model"])


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "mobilenet_np", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def read_h5(path):
    with h5py.File(path, "r") as f:
        return {"features": f["features"][:], "paths": list(f["paths"].asstr()[:]),
                "failed_paths": list(f["failed_paths"].asstr()[:]),
                "failed_errors": list(f["failed_errors"].asstr()[:]), "attrs": dict(f.attrs)}


@pytest.fixture(scope="module")
def reference(data):
    """One uninterrupted ``embed`` run to .h5 over the folder."""
    result = run_cli("embed", "photos", "--model", data["model"], "--output", "ref.h5", "--batch-size", 16,
                     cwd=data["root"])
    return result, read_h5(data["root"] / "ref.h5")


# --- the embed command --------------------------------------------------------------------------


def test_every_good_image_embedded_once_and_every_broken_one_listed(data, reference):
    result, out = reference
    assert result.returncode == errors.EXIT_PARTIAL, result.stderr
    assert out["paths"] == data["good"]  # input order, each once, nothing from sub/ or notes.md
    assert out["failed_paths"] == sorted(BROKEN)
    for name, reason in zip(out["failed_paths"], out["failed_errors"]):
        assert BROKEN[name][1] in reason.lower()
    assert out["features"].shape == (NUM_GOOD, 1280) and out["features"].dtype == np.float32
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"{NUM_GOOD} embedded, {len(BROKEN)} failed, ") and summary.endswith(" images/s")


def test_provenance_attributes(data, reference, model):
    attrs = reference[1]["attrs"]
    assert attrs["model"] == model.name and attrs["weights_sha256"] == model.weights_sha256
    assert attrs["preset"] == "hub" and attrs["package_version"] == mnp.__version__


def test_rows_equal_the_model_on_each_image(data, reference, model):
    out = reference[1]
    for path, row in zip(out["paths"], out["features"]):
        expected = model(model.preprocess(data["folder"] / path)[None])[0]
        np.testing.assert_allclose(row, expected, rtol=0, atol=FEATURE_TOLERANCE, err_msg=path)


def test_npy_output_with_paths_and_failures_beside(data, reference):
    result = run_cli("embed", "photos", "--model", data["model"], "-o", "out.npy", "--quiet", cwd=data["root"])
    assert result.returncode == errors.EXIT_PARTIAL, result.stderr
    assert "skipped" not in result.stderr  # --quiet
    ref = reference[1]
    np.testing.assert_allclose(np.load(data["root"] / "out.npy"), ref["features"], rtol=0, atol=FEATURE_TOLERANCE)
    assert (data["root"] / "out.paths.txt").read_text().splitlines() == ref["paths"]
    failed = [line.split("\t") for line in (data["root"] / "out.failed.txt").read_text().splitlines()]
    assert failed == [list(pair) for pair in zip(ref["failed_paths"], ref["failed_errors"])]
    assert not list(data["root"].glob("*.tmp")) and not list(data["root"].glob(".*.tmp"))


def test_on_error_fail_stops_at_the_first_bad_file(data):
    result = run_cli("embed", "photos", "--model", data["model"], "-o", "fail.h5", "--on-error", "fail",
                     cwd=data["root"])
    assert result.returncode == errors.EXIT_FAILURE
    assert "bomb.png" in result.stderr and "empty.jpg" not in result.stderr  # first in input order
    assert not (data["root"] / "fail.h5").exists()
    assert not list(data["root"].glob(".fail.h5.*"))


def test_sigkill_then_resume_gives_the_uninterrupted_file(data, reference):
    args = ["embed", "photos", "--model", data["model"], "-o", "killed.h5", "--quiet", "--batch-size", 2]
    journal = data["root"] / "killed.h5.journal"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "mobilenet_np", *map(str, args)], cwd=data["root"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill after a few batches (each record holds 2 x 1280 float32 = 10 kB).
        deadline = time.monotonic() + 120
        while not (journal.exists() and journal.stat().st_size > 60_000) and process.poll() is None:
            assert time.monotonic() < deadline, "the journal never grew"
            time.sleep(0.005)
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert not (data["root"] / "killed.h5").exists()
    done_before = journal.stat().st_size
    result = run_cli(*args, "--resume", cwd=data["root"])
    assert result.returncode == errors.EXIT_PARTIAL, result.stderr
    assert not journal.exists() and done_before > 0
    resumed, ref = read_h5(data["root"] / "killed.h5"), reference[1]
    assert resumed["paths"] == ref["paths"] and resumed["failed_paths"] == ref["failed_paths"]
    np.testing.assert_allclose(resumed["features"], ref["features"], rtol=0, atol=FEATURE_TOLERANCE)


def test_resume_of_a_different_command_is_refused(data, model, tmp_path):
    items = inputs.collect_inputs([data["folder"] / "img_000.jpg"])
    jn.Journal(str(tmp_path / "j"), jn.run_identity(model, "hub", items), 1280, resume=False).close()
    with pytest.raises(ValueError, match="different run"):
        jn.Journal(str(tmp_path / "j"), jn.run_identity(model, "slim", items), 1280, resume=True)


def test_bad_arguments_exit_2(data):
    for args in (["--batch-size", "0", "-o", "a.h5"], ["-o", "a.csv"], ["-o", "no/such/folder/a.h5"]):
        result = run_cli("embed", "photos", "--model", data["model"], *args, cwd=data["root"])
        assert result.returncode == errors.EXIT_FAILURE, args
    assert "exit status" in run_cli("embed", "--help", cwd=data["root"]).stdout


def test_nothing_embedded_exits_2_without_output(data):
    result = run_cli("embed", "photos/empty.jpg", "photos/text.jpg", "--model", data["model"], "-o", "none.h5",
                     cwd=data["root"])
    assert result.returncode == errors.EXIT_FAILURE and "nothing embedded" in result.stderr
    assert not (data["root"] / "none.h5").exists() and not (data["root"] / "none.h5.journal").exists()


# --- the journal --------------------------------------------------------------------------------


def _batch(rng, n, name):
    return pipeline.EmbedResult([f"{name}{i}" for i in range(n)], rng.random((n, 3), dtype=np.float32),
                          [(f"{name}-bad", "broken")])


@pytest.mark.parametrize("damage", ["cut", "garbage", "flipped", "zeros"])
def test_journal_drops_a_torn_last_record(tmp_path, rng, damage):
    path, identity = str(tmp_path / "j"), {"run": 1}
    journal = jn.Journal(path, identity, 3, resume=False)
    batches = [_batch(rng, n, f"b{k}") for k, n in enumerate([2, 3, 1])]
    for batch in batches:
        journal.append(batch)
    journal.close()
    data = bytearray(Path(path).read_bytes())
    last_record = len(jn._encode_batch(batches[-1])) + jn._RECORD.size
    if damage == "cut":
        data = data[:-5]
    elif damage == "garbage":
        data += b"\x07" * 11
    elif damage == "flipped":
        data[-3] ^= 0xFF
    else:  # a crash that left the last record's blocks zero-filled
        data[-last_record:] = bytes(last_record)
    Path(path).write_bytes(data)
    resumed = jn.Journal(path, identity, 3, resume=True)
    kept = batches if damage == "garbage" else batches[:-1]
    assert resumed.resumed and resumed.items_done == sum(len(b.paths) + 1 for b in kept)
    if damage != "garbage":
        resumed.append(batches[-1])
    stored = list(resumed.batches())
    assert [b.paths for b in stored] == [b.paths for b in batches]
    np.testing.assert_array_equal(np.concatenate([b.features for b in stored]),
                                  np.concatenate([b.features for b in batches]))
    assert resumed.failures == [f for b in batches for f in b.failures]


def test_unusable_journal_starts_over(tmp_path):
    path = tmp_path / "j"
    path.write_bytes(b"something else entirely")
    journal = jn.Journal(str(path), {"run": 1}, 3, resume=True)
    assert not journal.resumed and journal.items_done == 0 and list(journal.batches()) == []


# --- inputs and the pipeline --------------------------------------------------------------------


def test_collect_inputs_folders_lists_and_files(data, tmp_path):
    folder = data["folder"]
    flat = [item.path for item in inputs.collect_inputs(folder)]
    assert flat == sorted(data["good"] + list(BROKEN))  # x.jpg (a folder) is an input that fails
    deep = [item.path for item in inputs.collect_inputs([folder], recursive=True)]
    assert deep == sorted(data["good"] + [n for n in BROKEN if n != "x.jpg"] + data["nested"])
    listing = tmp_path / "list.lst"
    listing.write_text(f"{folder}/img_001.JPG\n\n  ../elsewhere/missing.png \n")
    items = inputs.collect_inputs([listing, folder / "img_002.jpeg"])
    assert items == [inputs.Item(f"{folder}/img_001.JPG", f"{folder}/img_001.JPG"),
                     inputs.Item(str(tmp_path / "../elsewhere/missing.png"), str(tmp_path / "../elsewhere/missing.png")),
                     inputs.Item(str(folder / "img_002.jpeg"), str(folder / "img_002.jpeg"))]


def test_library_embed_matches_the_command(data, reference, model):
    result = pipeline.embed(data["folder"], model, batch_size=64, progress=False)
    ref = reference[1]
    assert result.paths == ref["paths"] and [p for p, _ in result.failures] == ref["failed_paths"]
    np.testing.assert_allclose(result.features, ref["features"], rtol=0, atol=FEATURE_TOLERANCE)
    with pytest.raises(ImageError, match="bomb.png"):
        pipeline.embed(data["folder"], model, on_error="fail", progress=False)


class CountingModel:
    """A stand-in model that records how far decoding runs ahead of inference."""

    input_size, num_features, default_preset = (4, 4), 2, "hub"

    def __init__(self):
        self.decoded, self.consumed, self.most_ahead = 0, 0, 0
        self._lock = threading.Lock()

    def preprocess(self, src, preset=None):
        if src.endswith("bad"):
            raise ImageError(str(src), "broken")
        with self._lock:  # decoding runs in several threads
            self.decoded += 1
        return np.full((4, 4, 3), float(src.split("_")[1]), np.float32)

    def __call__(self, batch, threads=None):
        self.consumed += len(batch)
        self.most_ahead = max(self.most_ahead, self.decoded - self.consumed)
        return np.repeat(batch[:, 0, 0, :1], 2, axis=1)


def test_pipeline_keeps_order_and_bounded_prefetch():
    model, batch_size = CountingModel(), 5
    names = [f"img_{i}" + ("_bad" if i % 7 == 3 else "") for i in range(60)]
    batches = list(pipeline.iter_embed(names, model, batch_size=batch_size, progress=False, workers=3))
    assert [len(b.paths) + len(b.failures) for b in batches] == [batch_size] * 12
    result = pipeline.concatenate(batches, 2)
    assert result.paths == [n for n in names if not n.endswith("bad")]
    assert result.failures == [(n, "broken") for n in names if n.endswith("bad")]
    np.testing.assert_array_equal(result.features[:, 0], [float(p.split("_")[1]) for p in result.paths])
    assert model.most_ahead <= (pipeline.PREFETCH_BATCHES + 1) * batch_size


# --- classify -----------------------------------------------------------------------------------


def test_classify_prints_top_k_labels(data, model, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("background\n" + "".join(f"class {i}\n" for i in range(1, 1001)))
    files = ["photos/img_000.jpg", "photos/img_003.png", "photos/empty.jpg"]
    result = run_cli("classify", *files, "--model", data["model"], "--top", 3, "--labels", labels, cwd=data["root"])
    assert result.returncode == errors.EXIT_PARTIAL, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == files[:2]
    for line, path in zip(lines, files):
        logits = model.logits(model.preprocess(data["root"] / path)[None])[0].astype(np.float64)
        probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        top = np.argsort(-probabilities)[:3]
        assert line.split("\t")[1:] == [f"class {i} ({probabilities[i]:.4f})" for i in top]
    plain = run_cli("classify", files[0], "--model", data["model"], "--top", 2, cwd=data["root"])
    assert plain.returncode == errors.EXIT_OK      # the packaged ImageNet names by default
    assert plain.stdout.split("\t")[1].rsplit(" (", 1)[0] in mnp.labels.class_names(1001, 1)


def test_class_names_and_top_k(tmp_path):
    assert labels.class_names(3, 1) == ["0", "1", "2"]
    thousand = tmp_path / "1000.txt"
    thousand.write_text("".join(f"c{i}\n" for i in range(1000)))
    assert labels.class_names(1001, 1, thousand)[:2] == ["background", "c0"]
    assert labels.class_names(999, 0, thousand)[0] == "c1"
    with pytest.raises(ValueError, match="1000 labels"):
        labels.class_names(10, 0, thousand)
    order, probabilities = labels.top_k(np.array([[1000.0, 0.0, 1000.0, -5.0]], np.float32), 3)
    np.testing.assert_array_equal(order, [[0, 2, 1]])
    np.testing.assert_allclose(probabilities, [[0.5, 0.5, 0.0]], atol=1e-300)


def test_top_level_embed_accepts_a_weights_file_and_stays_callable(tmp_path, rng):
    model = mnp.build("mobilenet_v2", 0.35, 32, num_classes=0, seed=5)
    weights = tmp_path / "m.h5"
    model.save(weights)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    first = mnp.embed([str(folder)], model=str(weights), batch_size=2)
    again = mnp.embed([str(folder)], model=model, batch_size=2)      # still the function
    assert first.paths == ["0.png", "1.png", "2.png"] and not first.failures
    np.testing.assert_array_equal(first.features, again.features)
    np.testing.assert_array_equal(first.features[1], model(model.preprocess(folder / "1.png")[None])[0])
    assert sum(len(b.paths) for b in mnp.iter_embed([str(folder)], model=model, batch_size=2)) == 3
