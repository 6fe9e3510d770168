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
