"""Tiered start (``forward/tiered.py``), in fresh processes with an empty cache folder each.

Only ``test_cold_process_answers_then_switches`` waits for a whole background compile (tens of
seconds, minutes on a busy machine); it checks everything that needs one in that one run.
The others stop the parent long before the child finishes, which also shows the child dies
with it."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba", reason="Numba is not installed")

REPO = Path(__file__).resolve().parents[1]
BACKGROUND = "compiling kernels for this CPU in the background"
COMPILE_WAIT_S = 1500

# One cold process: answer, wait for the switch, answer again; the features of each phase as
# .npy, the rest as one JSON line.
COLD = """
import json, sys, numpy as np, mobilenet_np as mnp
from mobilenet_np.kernels import plan
out = sys.argv[1]
model = mnp.build("mobilenet_v2", 0.35, 64, seed=5)
x = np.random.default_rng(0).random((3, 64, 64, 3), dtype=np.float32)
info = {"first_tier": model.backend.tier, "child": model.backend._job.proc.pid}     # .tier starts the job
np.save(out + "/first.npy", np.concatenate([model(x, threads=1), model(x[:1], threads=2)]))
np.save(out + "/logits_first.npy", model.logits(x[:1]))
info["switched"] = model.backend.wait(timeout=float(sys.argv[2]))
info["tier"] = model.backend.tier
entry = (plan.run_plan, plan.pointwise_tiles, plan.depthwise_rows, plan.stem_tasks, plan.input_rows)
before = sum(sum(f.stats.cache_misses.values()) for f in entry)
np.save(out + "/fast.npy", np.concatenate([model(x, threads=1), model(x[:1], threads=2)]))
np.save(out + "/logits_fast.npy", model.logits(x[:1]))
info["compiled"] = sum(sum(f.stats.cache_misses.values()) for f in entry) - before
np.save(out + "/reference.npy", mnp.build("mobilenet_v2", 0.35, 64, seed=5, backend="numpy")(x))
print(json.dumps(info))
"""

# A warm process: its first answer, its backend, its later features.
WARM = """
import json, sys, numpy as np, mobilenet_np as mnp
from mobilenet_np.kernels import plan
model = mnp.build("mobilenet_v2", 0.35, 64, seed=5)
x = np.random.default_rng(0).random((3, 64, 64, 3), dtype=np.float32)
np.save(sys.argv[1] + "/warm_first.npy", model(x, threads=1))
info = {"backend": type(model.backend).__name__}
entry = (plan.run_plan, plan.pointwise_tiles, plan.depthwise_rows, plan.stem_tasks, plan.input_rows)
np.save(sys.argv[1] + "/warm.npy", np.concatenate([model(x, threads=1), model(x[:1], threads=2)]))
info["compiled"] = sum(sum(f.stats.cache_misses.values()) for f in entry)
print(json.dumps(info))
"""

# A short cold process: the backend it gets, one call (unless "nocall"), and its child.
SHORT = """
import json, sys, time, numpy as np, mobilenet_np as mnp
kwargs = {"tiered": False} if "option-off" in sys.argv else {}
model = mnp.build("mobilenet_v2", 0.35, 64, seed=5, **kwargs)
info = {"backend": type(model.backend).__name__}
if "nocall" not in sys.argv:
    model(np.zeros((1, 64, 64, 3), np.float32))
    info["tier"] = model.backend.tier
job = getattr(model.backend, "_job", None)
info["child"] = job.proc.pid if job else None
print(json.dumps(info), flush=True)
if "sleep" in sys.argv:
    time.sleep(120)
"""


def _env(home, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MOBILENET_NP_QUIET", "MOBILENET_NP_JIT_CACHE", "MOBILENET_NP_TIERED", "XDG_CACHE_HOME")}
    env.update({"MOBILENET_NP_HOME": str(home), "PYTHONPATH": str(REPO), "NUMBA_NUM_THREADS": "2"}, **extra)
    return env


def _run(code, home, *args, timeout=600, **extra):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=_env(home, **extra),
                            cwd=home.parent, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result, json.loads(result.stdout.strip().splitlines()[-1])


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _close(a, b):
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a, b, atol=2e-5 * scale, rtol=1e-4)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to see the child")
def test_cold_process_answers_then_switches(tmp_path):
    """With an empty cache: the message says what happens; the first calls answer from the
    NumPy path (the reference's very features); the engine takes over once the child has
    filled the cache, loading it without compiling anything in the process; both phases agree
    within the engine's tolerance; the child is gone.  A later process starts no child, says
    nothing, loads the kernels in the background and then gives the same features bit for bit."""
    home = tmp_path / "home"
    cold, info = _run(COLD, home, tmp_path, COMPILE_WAIT_S, timeout=COMPILE_WAIT_S + 300)
    assert cold.stderr.count(BACKGROUND) == 1 and "NumPy path meanwhile" in cold.stderr, cold.stderr
    assert info["first_tier"] == "numpy" and info["switched"] and info["tier"] == "numba", info
    assert info["compiled"] == 0, info
    first, fast, reference = (np.load(tmp_path / f"{n}.npy") for n in ("first", "fast", "reference"))
    np.testing.assert_array_equal(first[:3], reference)
    _close(fast, first)
    _close(np.load(tmp_path / "logits_fast.npy"), np.load(tmp_path / "logits_first.npy"))
    assert not _alive(info["child"])
    assert len(list((home / "kernels").glob("*/ready-*"))) == 1

    warm, info = _run(WARM, home, tmp_path)
    assert info == {"backend": "NumbaBackend", "compiled": 0}, info        # no tiering when warm
    assert "compiling" not in warm.stderr, warm.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "warm_first.npy"), fast[:3])   # the engine's bytes from the first call
    np.testing.assert_array_equal(np.load(tmp_path / "warm.npy"), fast)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to see the child")
def test_short_cold_process_leaves_no_child(tmp_path):
    """A process that exits while its child still compiles takes the child with it."""
    result, info = _run(SHORT, tmp_path / "home", timeout=300)
    assert info["backend"] == "TieredBackend" and info["tier"] == "numpy", info
    assert result.stderr.count(BACKGROUND) == 1, result.stderr
    assert _gone_within(info["child"], 2)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to see the child")
def test_killed_parent_leaves_no_child(tmp_path):
    """SIGKILL gives the parent no chance to clean up: the child notices and exits."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SHORT), "sleep"],
                            env=_env(tmp_path / "home"), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        assert _alive(info["child"])
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert _gone_within(info["child"], 5)
    finally:
        proc.kill()
        proc.wait()


def test_quiet_silences_the_message(tmp_path):
    result, info = _run(SHORT, tmp_path / "home", MOBILENET_NP_QUIET="1")
    assert info["backend"] == "TieredBackend" and info["child"] and result.stderr == "", result.stderr


def test_a_model_never_called_starts_nothing(tmp_path):
    """Loading alone (``mobilenet-np summary``, inspecting a model) compiles nothing."""
    result, info = _run(SHORT, tmp_path / "home", "nocall")
    assert info == {"backend": "TieredBackend", "child": None} and result.stderr == "", result.stderr


@pytest.mark.parametrize("how", ["env", "option"])
def test_opt_out_gives_the_engine(tmp_path, how):
    """``MOBILENET_NP_TIERED=0`` or ``tiered=False``: the compiled engine (compiled in the
    process on the first call), no child."""
    extra = {"MOBILENET_NP_TIERED": "0"} if how == "env" else {}
    result, info = _run(SHORT, tmp_path / "home", "nocall", *(["option-off"] if how == "option" else []), **extra)
    assert info == {"backend": "NumbaBackend", "child": None}
    assert BACKGROUND not in result.stderr, result.stderr


@pytest.mark.parametrize("quiet", [False, True])
def test_cli_embed_cold(tmp_path, quiet):
    """``mobilenet-np embed`` with an empty cache writes its features from the NumPy path at
    once; the message appears unless ``--quiet``."""
    from PIL import Image

    import mobilenet_np as mnp
    weights = tmp_path / "m.h5"
    mnp.build("mobilenet_v2", 0.35, 64, seed=5, backend="numpy").save(weights)
    pixels = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = tmp_path / "out.npy"
    args = [sys.executable, "-m", "mobilenet_np", "embed", str(tmp_path / "a.png"), "--model", str(weights),
            "-o", str(out), "--threads", "1", *(["--quiet"] if quiet else [])]
    result = subprocess.run(args, env=_env(tmp_path / "home"), cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert (BACKGROUND in result.stderr) != quiet, result.stderr
    features = np.load(out)
    reference = mnp.load(weights, backend="numpy")
    expected = reference(reference.preprocess(tmp_path / "a.png")[None])
    assert features.shape == (1, 1280)
    np.testing.assert_array_equal(features, expected)
