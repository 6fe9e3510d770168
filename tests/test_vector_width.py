"""The kernels' vector width (``simd.LANES``: 16 with AVX-512, else 8) changes no result, float or integer.

Each width runs in its own process (``MOBILENET_NP_VECTOR_LANES``), with its own cache folder
inside one ``MOBILENET_NP_HOME``: the width is part of the cache digest, since Numba's cache
does not look at globals.  Whatever this machine's own width, both are compiled and run here
(16 lanes on a CPU without AVX-512 is slower but correct: LLVM splits the vectors)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba", reason="Numba is not installed")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOBILENET_NP_SHARED", REPO.parent / "shared"))

# Models whose layers end in partial vectors at both widths: V1 0.25 has an 8-channel
# depthwise layer and stem, V2 0.35 an 8-channel projection; odd input sizes for the edges.
# V1 0.5's 512-channel layers run in K blocks at 16 lanes (gemm.K_BLOCK 256) and in one pass
# at 8 (K_BLOCK 512).  Batch 3 on one thread, batch 1 with every layer split over two.
FEATURES = """
import sys, numpy as np, mobilenet_np as mnp
from mobilenet_np.kernels import simd
out = []
for arch, alpha, size in (("mobilenet_v1", 0.25, 67), ("mobilenet_v2", 0.35, 61), ("mobilenet_v1", 0.5, 45)):
    model = mnp.build(arch, alpha, size, seed=7)
    x = np.random.default_rng(1).random((3, size, size, 3), dtype=np.float32)
    out += [model(x, threads=1), model(x[:1], threads=2), model.logits(x[1:], threads=1)]
if sys.argv[2] != "-":      # a quantized model: its depthwise blocks take 16 or 8 channels at a time
    from mobilenet_np.forward.quantized_engine import FastQuantizedGraph
    images = np.random.default_rng(2).integers(0, 256, (2, 160, 160, 3)).astype(np.uint8)
    out += [np.asarray(FastQuantizedGraph(sys.argv[2], "xnnpack").run(images)[0])]
np.savez(sys.argv[1], *out)
print("lanes", simd.LANES)
"""


def _features(tmp_path, lanes, quantized):
    env = {key: value for key, value in os.environ.items() if key not in ("MOBILENET_NP_JIT_CACHE", "XDG_CACHE_HOME")}
    env.update(MOBILENET_NP_HOME=str(tmp_path / "home"), MOBILENET_NP_VECTOR_LANES=str(lanes), PYTHONPATH=str(REPO),
               NUMBA_NUM_THREADS="2", MOBILENET_NP_QUIET="1")
    path = tmp_path / f"lanes{lanes}.npz"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(FEATURES), str(path), quantized], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr
    assert f"lanes {lanes}" in result.stdout, result.stdout
    with np.load(path) as saved:
        return [saved[k] for k in sorted(saved.files, key=lambda k: int(k.split("_")[1]))]


def test_both_vector_widths_give_the_same_bytes(tmp_path):
    """Float features and logits, and (where ../shared is) the Coral uint8 file's output bytes,
    through the integer kernels."""
    coral = SHARED / "weights" / "mobilenet_v1_050_160" / "tflite_uint8_quant" / "mobilenet_v1_0.5_160_quant.coral.tflite"
    quantized = str(coral) if coral.is_file() else "-"
    narrow, wide = _features(tmp_path, 8, quantized), _features(tmp_path, 16, quantized)
    assert len(narrow) == len(wide) == (10 if coral.is_file() else 9)
    for a, b in zip(narrow, wide):
        assert np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)
    folders = [p for p in (tmp_path / "home" / "kernels").iterdir() if p.is_dir()]
    assert len(folders) == 2, folders       # one cache folder per width


def test_the_width_follows_the_cpu_unless_told(monkeypatch):
    from numba import config

    from mobilenet_np.kernels import simd
    monkeypatch.setenv("MOBILENET_NP_VECTOR_LANES", "8")
    assert simd.vector_lanes() == 8
    monkeypatch.setenv("MOBILENET_NP_VECTOR_LANES", "16")
    assert simd.vector_lanes() == 16
    monkeypatch.delenv("MOBILENET_NP_VECTOR_LANES")
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+fma,-avx512f")
    assert simd.vector_lanes() == 8
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+avx512f")
    assert simd.vector_lanes() == 16
    monkeypatch.setattr(config, "CPU_FEATURES", None)
    monkeypatch.setattr(config, "CPU_NAME", "generic")
    assert simd.vector_lanes() == 8
