"""Smoke tests of the benchmark harness (benchmarks/): the ONNX export agrees with mobilenet-np,
and a --quick run finishes and writes its report.  Timings are never asserted."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mobilenet_np as mnp
from mobilenet_np import spec

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:            # benchmarks/ is a folder of the repo, not an installed package
    sys.path.insert(0, str(REPO))


@pytest.mark.parametrize("architecture, multiplier, size", [("mobilenet_v2", 0.35, 33), ("mobilenet_v1", 0.25, 45)])
def test_onnx_export_matches_mobilenet_np(architecture, multiplier, size, rng):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install .[bench])")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install .[bench])")
    from benchmarks import peers

    model = mnp.build(architecture, multiplier, size, num_classes=0, seed=3)
    pads = {g.pad for g in spec.geometry(model.arch, (size, size)) if g.layer.stride == 2}
    assert (1, 1, 1, 1) in pads          # odd inputs: not the (0, 1) of the default sizes
    if size == 45:
        assert (0, 1, 0, 1) in pads      # 45 -> 23 -> 12 -> 6: both kinds in one graph
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(peers.onnx_model(model).SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    x = rng.random((3, size, size, 3), dtype=np.float32)        # batch 3: the batch axis is dynamic
    got = session.run(None, {"images": x})[0]
    want = model(x)
    assert got.shape == want.shape == (3, model.num_features)
    assert np.max(np.abs(got - want)) <= peers.TOLERANCE


def test_keras_names_cover_every_layer():
    from benchmarks import peers

    for architecture in ("mobilenet_v1", "mobilenet_v2"):
        names = [peers.keras_names(architecture, layer.scope) for layer in spec.build(architecture, 0.5).layers]
        assert len(set(names)) == len(names)
    assert peers.keras_names("mobilenet_v2", "expanded_conv_16/project") == ("block_16_project", "block_16_project_BN")
    assert peers.keras_names("mobilenet_v1", "Conv2d_13_pointwise") == ("conv_pw_13", "conv_pw_13_bn")


def test_quick_run_writes_report(tmp_path):
    pytest.importorskip("threadpoolctl")
    engines = ["numba", "numpy"]
    if all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
        engines.append("onnxruntime")      # a peer too, when installed; never TF (slow to start)
    env = {**os.environ, "MOBILENET_NP_BENCH_ENGINES": ",".join(engines),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--models", "v2", "--batches", "1",
                           "--threads", "1", "--skip", "coldstart,chart", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "results.md").read_text()
    assert "mobilenet-np (numba)" in report and "V2 0.5_96, batch 1" in report
    assert (tmp_path / "results.json").exists()


def test_family_models_are_the_issue_s_five():
    from benchmarks import peers

    want = {("mobilenet_v1", 1.0, 224), ("mobilenet_v2", 1.0, 224), ("mobilenet_v2", 1.4, 224),
            ("mobilenet_v1", 0.25, 128), ("mobilenet_v2", 0.35, 96)}
    got = {(peers.MODELS[k].architecture, peers.MODELS[k].depth_multiplier, peers.MODELS[k].input_size)
           for k in peers.FAMILY}
    assert got == want
    assert not set(peers.FAMILY) & set(peers.SEED_MODELS)
    for key in peers.FAMILY:           # every Keras name is distinct at every width, so the export can fill them
        cfg = peers.MODELS[key]
        names = [peers.keras_names(cfg.architecture, layer.scope)
                 for layer in spec.build(cfg.architecture, cfg.depth_multiplier).layers]
        assert len(set(names)) == len(names)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")     # utime + stime


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_burner_spins_only_when_resumed():
    import time

    from benchmarks import run

    burner = run.Burner(sorted(os.sched_getaffinity(0))[-1])
    try:
        before = _cpu_seconds(burner.proc.pid)
        time.sleep(0.3)
        paused = _cpu_seconds(burner.proc.pid) - before
        burner.resume()
        time.sleep(0.5)
        burner.pause()
        resumed = _cpu_seconds(burner.proc.pid) - before - paused
    finally:
        burner.close()
    assert paused <= 0.02
    assert resumed >= 0.1                  # spinning (on a shared machine it may get less than the whole CPU)
    assert burner.proc.poll() is not None


def _stats(ms: float, batch: int) -> dict:
    return {"median_ms": ms, "images_per_s": batch / (ms / 1e3), "q1_ms": ms, "q3_ms": ms}


def test_report_sections_compute_ratios_and_peak_shares():
    from benchmarks import run

    configs = [{"model": m, "batch": b, "threads": 1, "engines": {
        "numba": {"stats": _stats(ours, b)}, "litert": {"stats": _stats(2 * ours, b)}}}
        for m, b, ours in (("v2", 1, 1.0), ("v2_035_96", 32, 10.0))]
    results = {"family": ["v2_035_96"], "configs": configs,
               "model_labels": {"v2": "V2 0.5_96", "v2_035_96": "V2 0.35_96"}}
    family = "\n".join(run.family_lines(results))
    assert "| V2 0.5_96 | 2.00 | — |" in family and "| V2 0.35_96 | — | 2.00 |" in family

    engines = {"numba": {"label": "ours", "quiet": _stats(10.0, 32), "contended": _stats(20.0, 32), "retained": 0.5},
               "litert": {"label": "LiteRT", "quiet": _stats(10.0, 32), "contended": _stats(12.5, 32),
                          "retained": 0.8}}
    contended = "\n".join(run.contended_lines({"contended": [
        {"model_label": "V2 0.5_96", "batch": 32, "threads": 2, "engines": engines}]}))
    assert "| 0.50 | (ours) |" in contended and "| 0.80 | 0.62 |" in contended

    # 2 threads, one 1x1 layer of 9.6 M MACs in 0.1 ms: 96 GMAC/s, the whole 2 x 48 GMAC/s peak
    rows = [{"op": "pointwise", "macs": 9_600_000, "ms": 0.1}, {"op": "mean", "macs": 0, "ms": 0.1}]
    peak = "\n".join(run.profile_peak_lines({"profiles": {"2": {"v2": rows}}, "model_labels": results["model_labels"]}))
    assert f"{run.SGEMM_PEAK_GMACS:g} GMAC/s per core" in peak
    assert "| V2 0.5_96 | 2 | 0.200 | 48.0 (50%) | 50%, 96.0 (100%) |" in peak


def test_in_process_ab_runs_two_commits_side_by_side(tmp_path):
    """``benchmarks.ab_inprocess`` imports an older commit's engine beside this one (as
    ``mnp_old``), checks that both give the same features, and reports a ratio per model and way.
    Against HEAD itself, in a child process (the old package goes on its sys.path)."""
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "MOBILENET_NP_HOME": str(tmp_path / "home"), "MOBILENET_NP_QUIET": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ab_inprocess", "HEAD", "--rounds", "2", "--calls", "1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| v")]
    assert [row.split("|")[1:3] for row in rows] == [[" v1 ", " serial "], [" v1 ", " split "],
                                                      [" v2 ", " serial "], [" v2 ", " split "]]
    assert all(float(row.split("|")[5].split()[0]) > 0 for row in rows)
