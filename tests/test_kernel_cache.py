"""The kernel cache and the compile message, each in fresh processes with their own cache folder
(``MOBILENET_NP_HOME``).  Only ``test_cold_then_warm_then_corrupted`` compiles a forward pass
from nothing (tens of seconds); the others compile the input row, which takes a second or two."""

import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba", reason="Numba is not installed")

REPO = Path(__file__).resolve().parents[1]
MESSAGE = "mobilenet-np: compiling kernels for this CPU"

# Features of a small V2 at batch 3 on one thread and at batch 1 on two (the serial and the
# parallel path), saved as .npy, after ``warmup()`` if asked; prints how many compiles the
# calls themselves needed.
FEATURES = """
import sys, numpy as np, mobilenet_np as mnp
from mobilenet_np.forward import engine
from mobilenet_np.kernels import plan
if sys.argv[2] == "warmup":
    engine.warmup()
model = mnp.build("mobilenet_v2", 0.35, 64, seed=5)
x = np.random.default_rng(0).random((3, 64, 64, 3), dtype=np.float32)
before = {f: sum(f.stats.cache_misses.values()) for f in (plan.run_plan, plan.pointwise_tiles, plan.depthwise_rows,
                                                          plan.stem_tasks, plan.input_rows)}
np.save(sys.argv[1], np.concatenate([model(x, threads=1), model(x[:1], threads=2)]))
print("compiled", sum(sum(f.stats.cache_misses.values()) - n for f, n in before.items()))
"""

# The input row (a small kernel) for row counts typed int64 and int32: two signatures in one
# cache index.  Quiet: it is an entry point, whose compile is announced.
INPUT_ROW = """
import numpy as np
from mobilenet_np.kernels import jit, plan, reference
from mobilenet_np.kernels.rows import plan_row
jit.quiet()
x = np.random.default_rng(1).random((2, 5, 6, 3), dtype=np.float32)
op = plan_row("input", in_hw=(5, 6), in_c=3, out_hw=(7, 8), out_c=3, pad_top=1, pad_left=1)
expected = np.pad(reference.hub_input(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
for rows in (14, np.int32(14)):
    out = np.full(expected.size, np.nan, np.float32)
    plan.input_rows(op, 0, rows, x.reshape(-1), out, 2)
    np.testing.assert_array_equal(out.reshape(expected.shape), expected)
print("hits", sum(plan.input_rows.stats.cache_hits.values()))
"""


def _run(code, home, *args, pythonpath=REPO, extra_env=None, check=True):
    env = {key: value for key, value in os.environ.items()
           if key not in ("MOBILENET_NP_QUIET", "MOBILENET_NP_JIT_CACHE", "XDG_CACHE_HOME")}
    env.update({"MOBILENET_NP_HOME": str(home), "PYTHONPATH": str(pythonpath), "NUMBA_NUM_THREADS": "2"},
               **(extra_env or {}))
    cwd = next(p for p in home.parents if p.is_dir())
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=1800)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _cache_files(home):
    return sorted((home / "kernels").rglob("*.nb[ic]"))


def test_cold_then_warm_then_corrupted(tmp_path):
    """A cold process says it compiles (once) and ``warmup()`` fills the cache; a warm one is
    silent, compiles nothing and gives the same features bit for bit; a truncated index and
    an empty data file are removed with a warning and rebuilt, and the features are still the
    same."""
    home = tmp_path / "home"
    cold = _run(FEATURES, home, tmp_path / "cold.npy", "warmup")
    assert cold.stderr.count(MESSAGE) == 1 and "compiled 0" in cold.stdout, cold.stderr
    files = _cache_files(home)
    assert any(f.name.startswith("plan.run_plan") for f in files)

    warm = _run(FEATURES, home, tmp_path / "warm.npy", "-")
    assert MESSAGE not in warm.stderr and "cache entry" not in warm.stderr, warm.stderr
    assert "compiled 0" in warm.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "warm.npy"), np.load(tmp_path / "cold.npy"))

    index = next(f for f in files if f.name.startswith("plan.run_plan") and f.suffix == ".nbi")
    index.write_bytes(index.read_bytes()[:7])
    data = next(f for f in files if f.name.startswith("stem.stem_tasks") and f.suffix == ".nbc")
    data.write_bytes(b"")
    fixed = _run(FEATURES, home, tmp_path / "fixed.npy", "-")
    assert "kernel cache entry" in fixed.stderr and "removed, compiling again" in fixed.stderr, fixed.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "fixed.npy"), np.load(tmp_path / "cold.npy"))
    again = _run(FEATURES, home, tmp_path / "again.npy", "-")
    assert "cache entry" not in again.stderr and MESSAGE not in again.stderr, again.stderr


def test_read_only_package_writes_nothing_beside_it(tmp_path):
    """A package folder that is not writable works, and the cache goes to the user cache
    folder: nothing is written into the package (as root, which chmod does not stop, this
    still shows that nothing is even tried there)."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "mobilenet_np", site / "mobilenet_np", ignore=shutil.ignore_patterns("__pycache__"))
    before = sorted(p.relative_to(site) for p in site.rglob("*"))
    os.system(f"chmod -R a-w {site}")
    try:
        home = tmp_path / "home"
        result = _run(INPUT_ROW, home, pythonpath=site, extra_env={"PYTHONDONTWRITEBYTECODE": "1"})
        assert "hits 0" in result.stdout
        assert sorted(p.relative_to(site) for p in site.rglob("*")) == before
        assert any(f.name.startswith("plan.input_rows") for f in _cache_files(home))
        warm = _run(INPUT_ROW, home, pythonpath=site, extra_env={"PYTHONDONTWRITEBYTECODE": "1"})
        assert "hits 2" in warm.stdout, warm.stdout
    finally:
        os.system(f"chmod -R u+w {site}")


def test_unusable_cache_folder_falls_back_to_no_cache(tmp_path):
    """A cache folder that cannot be created (here: below a file) gives one warning; import
    and the kernels still work."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    result = _run(INPUT_ROW, blocker / "home")
    assert "is not writable" in result.stderr and "compiling without a cache" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "hits 0" in result.stdout


def test_two_cold_processes_at_once(tmp_path):
    """Two processes compiling into one empty cache both succeed, and a third finds both
    signatures in it."""
    home = tmp_path / "home"
    env = {**os.environ, "MOBILENET_NP_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("MOBILENET_NP_JIT_CACHE", None)
    procs = [subprocess.Popen([sys.executable, "-c", INPUT_ROW], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    assert "hits 2" in _run(INPUT_ROW, home).stdout


def test_compile_message_once_and_quiet(caplog):
    """The announcer logs one line for the first entry point that compiles in a process, none
    for later ones or for other kernels, and nothing once ``quiet()`` is on."""
    from mobilenet_np.kernels import jit, plan

    def start(announcer, dispatcher):
        announcer.on_start(type("Event", (), {"data": {"dispatcher": dispatcher}}))

    with caplog.at_level(logging.INFO, logger="mobilenet_np.compile"):
        announcer = jit._Announcer()
        start(announcer, plan._operand)        # a helper, not an entry point
        assert caplog.records == []
        start(announcer, plan.run_plan)
        start(announcer, plan.pointwise_tiles)
        where = f"cached in {jit._FOLDER}" if jit._FOLDER else "not cached"
        assert [r.getMessage() for r in caplog.records] == [
            f"{MESSAGE} (once, about {jit.COMPILE_SECONDS} s; {where})"]
        caplog.clear()
        jit.quiet()
        try:
            start(jit._Announcer(), plan.run_plan)
        finally:
            jit.quiet(False)
        assert caplog.records == []


def test_compile_message_for_the_integer_kernels(caplog):
    """A quantized model's first call compiles integer kernels only: any of them starts the one
    line, with the integer estimate (before, those compiles were silent)."""
    from mobilenet_np.kernels import integer_depthwise, integer_gemm, jit

    def start(announcer, dispatcher):
        announcer.on_start(type("Event", (), {"data": {"dispatcher": dispatcher}}))

    with caplog.at_level(logging.INFO, logger="mobilenet_np.compile"):
        announcer = jit._Announcer()
        start(announcer, integer_gemm.gemm_tasks)
        start(announcer, integer_depthwise.depthwise_rows)
        where = f"cached in {jit._FOLDER}" if jit._FOLDER else "not cached"
        assert [r.getMessage() for r in caplog.records] == [
            f"{MESSAGE} (once, about {jit.INTEGER_COMPILE_SECONDS} s; {where})"]


@pytest.mark.parametrize("env, expected", [
    ({"MOBILENET_NP_HOME": "/m", "XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/m/kernels"),
    ({"XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/x/mobilenet-np/kernels"),
    ({"HOME": "/h"}, "/h/.cache/mobilenet-np/kernels"),
])
def test_cache_folder_follows_the_environment(monkeypatch, env, expected):
    from mobilenet_np.kernels import cache
    for key in ("MOBILENET_NP_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cache.root() == Path(expected)


# Quantized models other than the warm-up's (V1, not V2; per-channel int8 and per-tensor uint8;
# another size and batch), with random weights: they must find every integer kernel cached.
QUANTIZED = """
import numpy as np
from mobilenet_np import spec
from mobilenet_np.quantized_model import QuantizedMobileNet, _as_uint8
from weights_tools import quantize as q
rng = np.random.default_rng(3)
arch = spec.build("mobilenet_v1", 0.25)
tensors = {n: rng.normal(0, 0.1, s).astype(np.float32) for n, s in arch.variables(5, folded=True).items()}
ranges = {n: (-2.0, 6.0) for n in q.activation_names(arch, 5)}
attrs = {"architecture": arch.name, "depth_multiplier": 0.25, "default_input_size": [48, 40], "num_classes": 5,
         "batchnorm_folded": True}
models = [q.quantize_model(arch, tensors, attrs, ranges, per_channel=True),
          _as_uint8(q.quantize_model(arch, tensors, attrs, ranges, per_channel=False))]
x = rng.random((2, 48, 40, 3), dtype=np.float32)
for qw in models:
    model = QuantizedMobileNet(qw, input_size=(48, 40))
    print(qw.attrs["quantization"], model.logits(x).shape)
import sys
from numba.core.dispatcher import Dispatcher
kernels = {id(f): f for name, m in list(sys.modules.items()) if name.startswith("mobilenet_np.kernels.integer")
           for f in vars(m).values() if isinstance(f, Dispatcher)}
print("integer kernels run", sum(bool(f.signatures) for f in kernels.values()),
      "compiled", sum(sum(f.stats.cache_misses.values()) for f in kernels.values()))
print("int8 forms", sum("int8" in str(sig).replace("uint8", "") for f in kernels.values() for sig in f.signatures))
"""


def test_warm_up_covers_the_integer_kernels(tmp_path):
    """``warm_up_integer_kernels`` (run by ``mobilenet-np warmup``) leaves nothing for an int8 or a
    uint8 model to compile, and the int8 model runs the kernels' uint8 forms (its activations
    as uint8 + 128, ``forward/quantized_engine.py``): no int8 form is compiled or loaded."""
    home = tmp_path / "home"
    _run("from mobilenet_np.quantized_model import warm_up_integer_kernels; warm_up_integer_kernels()", home)
    assert any("integer" in f.name for f in _cache_files(home))
    after = _run(QUANTIZED, home)
    assert "int8-per-channel (2, 5)" in after.stdout and "uint8-per-tensor (2, 5)" in after.stdout, after.stdout
    ran, compiled = (int(n) for n in after.stdout.split("integer kernels run ")[1].split("\n")[0].split(" compiled "))
    assert ran >= 3 and compiled == 0, after.stdout
    assert "int8 forms 0" in after.stdout, after.stdout


def test_folders_unused_for_30_days_are_pruned(tmp_path):
    """Each edit or version of the kernels gets its own digest folder; importing the package
    removes the ones no process has used for 30 days and keeps recent ones and other files."""
    kernels = tmp_path / "home" / "kernels"
    old, recent, other = kernels / "0123456789abcdef", kernels / "fedcba9876543210", kernels / "notes"
    for folder in (old, recent, other):
        folder.mkdir(parents=True)
        (folder / "x.nbi").write_bytes(b"x")
    (old / ".used").touch()
    long_ago = time.time() - 31 * 86400
    os.utime(old / ".used", (long_ago, long_ago))
    os.utime(other, (long_ago, long_ago))
    _run("import mobilenet_np.kernels.jit", tmp_path / "home")
    assert not old.exists()
    assert recent.exists() and other.exists()
    assert sum(1 for p in kernels.iterdir() if (p / ".used").exists()) == 1     # the current folder
