"""The four-byte-product 1x1 kernel (``integer_dot4``, AVX-512 VNNI's ``vpdpbusd``) against the reference.

On a CPU without VNNI the kernel compiles to portable IR (the same sums); the subprocess test
runs that form here too (``MOBILENET_NP_DOT4=generic``), so both are checked on any machine
that can run the instruction."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest


pytest.importorskip("numba", reason="Numba is not installed")
REPO = Path(__file__).resolve().parents[1]


def _case(rng, pixels, c_in, c_out, dtype, rounding, split=False):
    """Inputs, weights and parameters of one layer, the reference's bytes, and the kernel's (run
    as the fast graph runs it: int8 tensors as uint8 + 128)."""
    from integer_layers import pointwise_layer

    from mobilenet_np.kernels import integer_dot4 as idot
    from mobilenet_np.kernels import integer_gemm as ig

    per_tensor = dtype == np.uint8
    # uint8 weights within 128 of their zero point (131) fit int8 once centred (the first form); one
    # that does not (0) takes the split form (pack_quads); int8 weights are symmetric, -127..127
    w_low = None if split else (3 if per_tensor else -127)
    layer = pointwise_layer(rng, pixels, c_in, c_out, dtype, rounding, w_low, first_weight=0 if split else None)
    x, w, w_zero_point, x_zero_point, want = layer.x, layer.w, layer.w_zero_point, layer.x_zero_point, layer.want
    bias, multiplier, shift, clamp, scales = layer.bias, layer.multiplier, layer.shift, layer.clamp, layer.scales
    up = 0 if per_tensor else 128
    quads, tasks = idot.pack_quads(w, w_zero_point)
    assert tasks is (idot.dot4_split_tasks if split else idot.dot4_tasks)
    params = idot.fold_zero_point(w, w_zero_point, ig.requantization_params(bias, multiplier, shift, c_out),
                                  x_zero_point + up)
    kernel = ig.Pointwise(pixels, c_in, x_zero_point + up, quads, None, c_out, clamp[0] + up,
                          (clamp[0] + up, clamp[1] + up), rounding, ig.xnnpack_scales(scales, c_out), params,
                          tasks=tasks)
    got = kernel((x.astype(np.int16) + up).astype(np.uint8), np.empty((pixels, c_out), np.uint8))
    return (got.astype(np.int16) - up).astype(dtype), want


@pytest.mark.parametrize("pixels, c_in, c_out", [(1, 4, 1), (7, 8, 13), (9, 16, 32), (37, 20, 40), (25, 160, 1001),
                                                 (33, 132, 24), (13, 16, 8), (8, 96, 16), (64, 48, 17),
                                                 (11, 260, 40)])
@pytest.mark.parametrize("dtype, split", [(np.uint8, False), (np.uint8, True), (np.int8, False)])
@pytest.mark.parametrize("rounding", ["reference", "optimized", "xnnpack"])
def test_dot4_pointwise_kernel_equals_the_reference(rng, pixels, c_in, c_out, dtype, split, rounding):
    """Odd pixel counts (8-pixel tiles, single pixels, chunks of 32), C_out not whole panels of 16,
    per-tensor uint8 and per-channel int8 weights, each requantization; uint8 weights that do not
    fit int8 once centred (the split form; int8 weights always do: symmetric, zero point 0), with
    C_in below ``SUM_FROM`` (each step's products with 128 - zp) and above it, whole blocks of 64
    bytes and not (128 - zp times the pixel's byte sum)."""
    got, want = _case(rng, pixels, c_in, c_out, dtype, rounding, split)
    assert np.array_equal(got, want)
    if want.size > 50:
        assert len(np.unique(want)) > 2        # not all clamped: the requantization was exercised


def test_pack_quads_refuses_what_int8_cannot_hold():
    from mobilenet_np.kernels import integer_dot4 as idot

    w = np.full((8, 4), 200, np.uint8)
    assert idot.pack_quads(w, 73)[1] is idot.dot4_tasks            # 200 - 73 = 127 fits
    assert idot.pack_quads(w, 72)[1] is idot.dot4_split_tasks      # 128 does not: (w - 128) + (128 - 72)
    assert idot.pack_quads(w, 0) is None                           # 128 - 0 does not fit either
    assert idot.pack_quads(np.zeros((6, 4), np.int8), 0) is None     # C_in not a multiple of 4
    packed = idot.pack_quads(np.arange(32, dtype=np.int8).reshape(8, 4), 0)[0].view(np.int8)
    assert packed.size == 2 * 16 * 4                       # 2 quads x one panel of 16 x 4 taps
    assert list(packed[:8]) == [0, 4, 8, 12, 1, 5, 9, 13]  # channel 0's taps 0-3, then channel 1's
    split = idot.pack_quads(w, np.arange(4) + 70)[0].view(np.int8)
    assert split.size == 3 * 16 * 4 and list(split[:4]) == [72] * 4          # 200 - 128
    assert list(split[128:136]) == [58] * 4 + [57] * 4     # then 128 - zero point, per channel


PORTABLE = """
import numpy as np, sys
sys.path.insert(0, sys.argv[1])
from mobilenet_np.kernels import integer_wide
assert not integer_wide.DOT4_VNNI
from test_integer_dot4 import _case
rng = np.random.default_rng(3)
for case in [(37, 20, 40, np.int8, "xnnpack", False), (9, 96, 24, np.uint8, "reference", True)]:
    got, want = _case(rng, *case)
    assert np.array_equal(got, want), case
print("portable ok")
"""


def test_portable_dot4_gives_the_same_bytes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MOBILENET_NP_JIT_CACHE",)}
    env.update(MOBILENET_NP_DOT4="generic", MOBILENET_NP_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO),
               MOBILENET_NP_QUIET="1")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(PORTABLE), str(Path(__file__).parent)], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr
    assert "portable ok" in result.stdout


def test_byte_sum_reads_only_its_range():
    """``integer_wide.byte_sum``: whole 64-byte blocks, a last partial one, nothing, up to the array's
    end (its masked loads read nothing past the count: the bytes after it are 255 and would show)."""
    from mobilenet_np.kernels import integer_wide as iw
    from mobilenet_np.kernels.jit import kernel

    @kernel()
    def total(x, at, n):
        return iw.byte_sum(x, at, n)

    x = np.random.default_rng(5).integers(0, 256, 700).astype(np.uint8)
    x[600:] = 255
    for at, n in [(0, 4), (3, 64), (5, 200), (0, 600), (17, 128), (599, 1), (0, 0), (536, 64), (100, 500)]:
        assert total(x, at, n) == int(x[at:at + n].astype(np.int64).sum()), (at, n)
