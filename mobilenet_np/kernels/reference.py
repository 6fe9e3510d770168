"""The reference kernels: every operation of the two networks in plain NumPy, written to be read.

These are the oracle the fast Numba kernels are tested against, and the ``backend="numpy"``
path of the model.  They import nothing but NumPy, allocate freely and loop over the 3x3 taps
in Python: clarity first.  All arrays are float32 NHWC; weights are in TF-Slim layout
(conv HWIO ``[kh, kw, C_in, C_out]``, depthwise ``[kh, kw, C, 1]``).
"""

from __future__ import annotations

import numpy as np


def hub_input(x: np.ndarray) -> np.ndarray:
    """The hub modules' own first ops: images in [0, 1] to the [-1, 1] range the slim networks
    were trained on, x * 2 - 1 (hub_input/Mul, hub_input/Sub; SPEC 1.5)."""
    return x * np.float32(2.0) - np.float32(1.0)


def same_pad(x: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
    """Zero-pad H and W by (top, bottom, left, right), as TF's SAME padding does implicitly."""
    top, bottom, left, right = pad
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))


def _taps(x: np.ndarray, kernel: int, stride: int, pad, out_hw):
    """Yield (dy, dx, window): the padded input seen by tap (dy, dx) at every output pixel."""
    xp = same_pad(x, pad)
    oh, ow = out_hw
    for dy in range(kernel):
        for dx in range(kernel):
            yield dy, dx, xp[:, dy:dy + stride * (oh - 1) + 1:stride, dx:dx + stride * (ow - 1) + 1:stride, :]


def conv2d(x, w, stride, pad, out_hw):
    """Full convolution (cross-correlation, no kernel flip): sum over taps of window @ W[dy, dx]."""
    out = np.zeros((x.shape[0], *out_hw, w.shape[3]), np.float32)
    for dy, dx, window in _taps(x, w.shape[0], stride, pad, out_hw):
        out += window @ w[dy, dx]
    return out


def depthwise_conv2d(x, w, stride, pad, out_hw):
    """Depthwise convolution, multiplier 1: each channel is filtered by its own k x k kernel."""
    out = np.zeros((x.shape[0], *out_hw, x.shape[3]), np.float32)
    for dy, dx, window in _taps(x, w.shape[0], stride, pad, out_hw):
        out += window * w[dy, dx, :, 0]
    return out


def pointwise_conv2d(x, w):
    """1x1 convolution: a matrix product over the channel axis at every pixel."""
    return x @ w[0, 0]


def batch_norm(x, gamma, beta, mean, variance, epsilon):
    """Inference BatchNorm in TF's order: (x - mean) * (gamma * rsqrt(var + eps)) + beta."""
    scale = gamma * (np.float32(1.0) / np.sqrt(variance + np.float32(epsilon)))
    return (x - mean) * scale + beta


def relu6(x):
    """min(max(x, 0), 6)."""
    return np.minimum(np.maximum(x, np.float32(0.0)), np.float32(6.0))


def global_mean(x):
    """Average over H and W: the hub modules' global pool. [N, H, W, C] -> [N, C]."""
    return x.mean(axis=(1, 2), dtype=np.float32)


def logits(pooled, w, b):
    """The classifier: pooled features [N, C] times its 1x1 kernel as a matrix [C, K], plus the
    biases.  ``einsum`` without optimisation sums each row on its own, in index order, without
    BLAS, whose order of summation changes with the batch size and the thread count."""
    return np.einsum("nc,ck->nk", pooled, w, optimize=False) + b


def fold_batch_norm(w, gamma, beta, mean, variance, epsilon, depthwise=False):
    """Fold inference BatchNorm into the preceding conv: w' = w * scale, b' = beta - mean * scale.

    Exact in real arithmetic; in float32 it reorders operations (an ulp-level difference,
    SPEC pitfall 12).  The scale multiplies the output-channel axis: axis 3 of a full conv's
    HWIO kernel, axis 2 of a depthwise kernel [kh, kw, C, 1].
    """
    scale = gamma * (np.float32(1.0) / np.sqrt(variance + np.float32(epsilon)))
    folded = w * (scale[:, None] if depthwise else scale)
    return folded.astype(np.float32), (beta - mean * scale).astype(np.float32)
