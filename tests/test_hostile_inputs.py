"""Issue 13, images and outputs: what a real disk and a careless (or hostile) folder do to ``embed``
and ``classify``.  Each test builds its files itself; commands run as subprocesses, with timeouts,
so that a hang fails the test instead of stalling the suite."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import mobilenet_np as mnp
from mobilenet_np import errors, inputs, pipeline
from mobilenet_np import journal as jn
from mobilenet_np.errors import ImageError
from mobilenet_np.journal import OutputBusyError, OutputLock

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd, env=None, timeout=120):
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "mobilenet_np", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Eight PNGs and a small random-weight V2 0.35/96 model with a classifier."""
    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(3)
    photos = root / "photos"
    photos.mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    mnp.build("mobilenet_v2", 0.35, 96, num_classes=1001, seed=5).save(root / "m.h5")
    return root


def test_a_fifo_named_like_an_image_is_skipped_not_opened(small, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ok.png").write_bytes((small / "photos" / "p0.png").read_bytes())
    os.mkfifo(folder / "pipe.jpg")                  # opening it for reading would block forever
    with pytest.raises(ImageError, match="FIFO"):
        mnp.load(small / "m.h5").preprocess(folder / "pipe.jpg")
    result = run_cli("embed", folder, "--model", small / "m.h5", "-o", tmp_path / "out.h5", cwd=tmp_path, timeout=60)
    assert result.returncode == errors.EXIT_PARTIAL, result.stderr
    assert b"pipe.jpg: is a FIFO (named pipe), not an image file" in result.stderr
    with h5py.File(tmp_path / "out.h5") as f:
        assert list(f["paths"].asstr()) == ["ok.png"] and list(f["failed_paths"].asstr()) == ["pipe.jpg"]


def test_a_line_break_in_a_name_refuses_an_npy_output_before_any_work(small, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "two\nlines.png").write_bytes((small / "photos" / "p0.png").read_bytes())
    result = run_cli("embed", folder, "--model", small / "m.h5", "-o", tmp_path / "out.npy", cwd=tmp_path)
    assert result.returncode == errors.EXIT_FAILURE
    assert b"line break" in result.stderr and b"Traceback" not in result.stderr
    assert not list(tmp_path.glob("out*"))
    ok = run_cli("embed", folder, "--model", small / "m.h5", "-o", tmp_path / "out.h5", cwd=tmp_path)
    assert ok.returncode == errors.EXIT_OK, ok.stderr          # an .h5 output holds any path
    with h5py.File(tmp_path / "out.h5") as f:
        assert list(f["paths"].asstr()) == ["two\nlines.png"]


def test_classify_prints_undecodable_file_names_to_a_strict_utf8_stdout(small, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in (b"caf\xe9.png", b"plain.png"):                   # Latin-1 bytes: not UTF-8
        (folder / os.fsdecode(name)).write_bytes((small / "photos" / "p1.png").read_bytes())
    result = run_cli("classify", folder, "--model", small / "m.h5", "--top", "1", cwd=tmp_path,
                     env={"PYTHONIOENCODING": "utf-8:strict"})
    assert result.returncode == errors.EXIT_OK, result.stderr
    lines = result.stdout.decode("utf-8").splitlines()
    assert [line.split("\t")[0] for line in lines] == ["caf\\xe9.png", "plain.png"]


def test_an_output_path_that_is_a_folder_fails_before_any_work(small, tmp_path):
    (tmp_path / "out.h5").mkdir()
    started = time.perf_counter()
    result = run_cli("embed", small / "photos", "--model", small / "m.h5", "-o", tmp_path / "out.h5", cwd=tmp_path)
    assert result.returncode == errors.EXIT_FAILURE and b"is a folder" in result.stderr
    assert not (tmp_path / "out.h5.journal").exists()
    assert time.perf_counter() - started < 60          # a bound on hanging, not a speed measurement


def test_a_second_run_on_the_same_output_refuses_at_once_and_names_the_first(small, tmp_path):
    output = tmp_path / "out.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mobilenet_np.journal import OutputLock\n"
                               f"with OutputLock({str(output)!r}):\n print('locked', flush=True); time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (tmp_path / "out.h5.journal").write_bytes(b"the first run's journal")
        result = run_cli("embed", small / "photos", "--model", small / "m.h5", "-o", output, cwd=tmp_path)
        assert result.returncode == errors.EXIT_FAILURE
        assert f"process {holder.pid}".encode() in result.stderr
        assert (tmp_path / "out.h5.journal").read_bytes() == b"the first run's journal"     # untouched
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(str(output)):                          # the kernel freed the killed holder's lock
        with pytest.raises(OutputBusyError):
            with OutputLock(str(output)):
                pass
    assert not (tmp_path / "out.h5.lock").exists()


def test_resume_takes_the_same_weights_under_another_file_name(small, tmp_path):
    copy = tmp_path / "renamed-copy.h5"
    copy.write_bytes((small / "m.h5").read_bytes())
    first = run_cli("embed", small / "photos", "--model", small / "m.h5", "-o", tmp_path / "a.h5", cwd=tmp_path)
    assert first.returncode == errors.EXIT_OK, first.stderr
    # The journal a run of the original file leaves when it is killed after its first batch ...
    model = mnp.load(small / "m.h5")
    items = inputs.collect_inputs([small / "photos"])
    journal = jn.Journal(str(tmp_path / "b.h5.journal"), jn.run_identity(model, "hub", items), model.num_features,
                         resume=False)
    journal.append(next(pipeline.run_batches(items, model, model, model.num_features, batch_size=4)))
    journal.close()
    # ... is resumed by the same weights under another name
    resumed = run_cli("embed", small / "photos", "--model", copy, "-o", tmp_path / "b.h5", "--resume",
                      "--batch-size", 4, cwd=tmp_path)
    assert resumed.returncode == errors.EXIT_OK, resumed.stderr
    assert b"resuming after 4 of 8 inputs" in resumed.stderr
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        np.testing.assert_array_equal(a["features"][:], b["features"][:])


def test_files_that_are_not_images_and_unreadable_folders_are_reported(small, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    (folder / "locked").mkdir(parents=True)
    (folder / "ok.png").write_bytes((small / "photos" / "p0.png").read_bytes())
    (folder / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic")
    (folder / "drawing.svg").write_text("<svg/>")
    (folder / ".DS_Store").write_bytes(b"\0")
    real_scandir = os.scandir

    def scandir(path="."):           # root reads a mode-000 folder, so deny this one by hand
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    skipped = []
    items = inputs.collect_inputs([folder], recursive=True, skipped=skipped)
    assert [i.path for i in items] == ["ok.png"]
    reasons = {Path(p).name: r for p, r in skipped}
    assert reasons == {"photo.heic": "not an image type Pillow reads (.heic)",
                       "drawing.svg": "not an image type Pillow reads (.svg)",
                       "locked": "folder not read: permission denied"}
    monkeypatch.undo()
    result = run_cli("embed", folder, "--model", small / "m.h5", "-o", tmp_path / "out.h5", cwd=tmp_path)
    assert result.returncode == errors.EXIT_OK, result.stderr
    assert b"skipped " + str(folder / "photo.heic").encode() + b": not an image type" in result.stderr
    assert b"2 passed over (not images)" in result.stderr


def _jpeg_with_corrupt_exif(rng) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    exif = b"Exif\0\0II*\0\x08\0\0\0\xff\xff\0\0\0\0"          # an IFD claiming 65535 entries
    return jpeg[:2] + b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif + jpeg[2:]


def test_decoding_warnings_name_the_file_and_obey_quiet(small, tmp_path, rng):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bad-exif.jpg").write_bytes(_jpeg_with_corrupt_exif(rng))
    loud = run_cli("embed", folder, "--model", small / "m.h5", "-o", tmp_path / "a.h5", cwd=tmp_path)
    assert loud.returncode == errors.EXIT_OK, loud.stderr
    assert b"warning: bad-exif.jpg: Corrupt EXIF data" in loud.stderr
    quiet = run_cli("embed", folder, "--model", small / "m.h5", "-o", tmp_path / "b.h5", "-q", cwd=tmp_path)
    assert quiet.returncode == errors.EXIT_OK and b"EXIF" not in quiet.stderr


def test_file_warnings_routes_each_threads_warning_to_its_file():
    notes = []

    class Warns:
        def preprocess(self, src, preset=None):
            warnings.warn(f"odd pixels in {src}")
            return np.zeros((32, 32, 3), np.float32)

        def __call__(self, images, threads=None):
            return np.zeros((len(images), 2), np.float32)

    items = [inputs.Item(f"f{i}.jpg", f"src{i}") for i in range(6)]
    with pipeline.file_warnings(notes.append):
        list(pipeline.run_batches(items, Warns(), Warns(), 2, batch_size=2, workers=3))
    assert sorted(notes) == sorted(f"warning: f{i}.jpg: odd pixels in src{i}" for i in range(6))
    with warnings.catch_warnings(record=True) as seen, pipeline.file_warnings(None):
        list(pipeline.run_batches(items, Warns(), Warns(), 2, batch_size=2, workers=3))
    assert seen == []


def _mount_small_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("suffix", [".h5", ".npy"])
def test_a_full_disk_at_the_final_write_is_a_clear_error_and_keeps_the_journal(small, tmp_path, suffix):
    rng = np.random.default_rng(9)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(200):          # the journal (~1 MB of 1280-d rows) fits, the output beside it does not
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    disk = tmp_path / "disk"
    if not _mount_small_tmpfs(disk, "1600k"):
        pytest.skip("cannot mount a small tmpfs here (needs root; CI runs as root)")
    try:
        output = disk / f"out{suffix}"
        full = run_cli("embed", folder, "--model", small / "m.h5", "-o", output, "-q", cwd=tmp_path)
        assert full.returncode == errors.EXIT_FAILURE, full.stderr
        stderr = full.stderr.decode()
        assert "Traceback" not in stderr and str(output) in stderr and "--resume" in stderr, stderr
        assert (disk / f"out{suffix}.journal").exists() and not output.exists()
        assert not [p for p in disk.iterdir() if p.name.endswith(".tmp")]
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        resumed = run_cli("embed", folder, "--model", small / "m.h5", "-o", output, "-q", "--resume", cwd=tmp_path)
        assert resumed.returncode == errors.EXIT_OK, resumed.stderr
        assert output.exists() and not (disk / f"out{suffix}.journal").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)
