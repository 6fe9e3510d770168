"""Backends: how one layer of the network is computed, given its weights and geometry.

``NumpyBackend`` runs the reference kernels with BatchNorm applied in TF's own order (or the
stored bias, for files whose source had BatchNorm folded); it imports nothing but NumPy.
``NumbaBackend`` folds BatchNorm into the kernels once, at load time, and runs the fused Numba
kernels into a workspace of buffers reused across calls of the same input shape.
Both walk the same layer list (``spec.geometry``); the model decides what to run.
"""

from __future__ import annotations

import numpy as np

from . import spec
from .kernels import reference as ref


class NumpyBackend:
    """The readable path: the oracle for the fast one."""

    name = "numpy"

    def __init__(self, arch: spec.Architecture, tensors: dict[str, np.ndarray], folded: bool,
                 epsilon: float):
        self.epsilon = epsilon
        self.params = []
        for layer in arch.layers:
            prefix = f"{arch.scope}/{layer.scope}"
            w = tensors[f"{prefix}/{layer.weight_name}"]
            if folded:
                self.params.append((w, None, tensors[f"{prefix}/biases"]))
            else:
                bn = tuple(tensors[f"{prefix}/BatchNorm/{s}"]
                           for s in ("gamma", "beta", "moving_mean", "moving_variance"))
                self.params.append((w, bn, None))

    def run(self, geo, x, on_layer):
        """Run every layer; ``on_layer(i, y)`` sees each output."""
        block_input = None
        for i, g in enumerate(geo):
            if g.layer.block_start:
                block_input = x
            x = self.layer(i, g, x, block_input if g.layer.adds_residual else None)
            on_layer(i, x)
        return x

    def layer(self, i: int, g: spec.LayerGeometry, x: np.ndarray, residual) -> np.ndarray:
        w, bn, bias = self.params[i]
        layer = g.layer
        if layer.kind == "conv":
            y = ref.conv2d(x, w, layer.stride, g.pad, g.out_hw)
        elif layer.kind == "depthwise":
            y = ref.depthwise_conv2d(x, w, layer.stride, g.pad, g.out_hw)
        else:
            y = ref.pointwise_conv2d(x, w)
        y = ref.batch_norm(y, *bn, self.epsilon) if bn is not None else y + bias
        if layer.relu6:
            y = ref.relu6(y)
        if residual is not None:
            y = y + residual          # V2: after the linear projection, no activation after
        return y

    def global_mean(self, x: np.ndarray) -> np.ndarray:
        return ref.global_mean(x)

    def release(self) -> None:
        """Nothing cached."""


class NumbaBackend:
    """The fast path: folded weights, fused kernels, reused buffers."""

    name = "numba"

    def __init__(self, arch: spec.Architecture, tensors: dict[str, np.ndarray], folded: bool,
                 epsilon: float):
        from .kernels import fast  # imported here: the NumPy path must not need Numba

        self._fast = fast
        self.params = []
        for layer in arch.layers:
            prefix = f"{arch.scope}/{layer.scope}"
            w = tensors[f"{prefix}/{layer.weight_name}"]
            depthwise = layer.kind == "depthwise"
            if folded:
                bias = tensors[f"{prefix}/biases"]
            else:
                bn = [tensors[f"{prefix}/BatchNorm/{s}"]
                      for s in ("gamma", "beta", "moving_mean", "moving_variance")]
                w, bias = ref.fold_batch_norm(w, *bn, epsilon, depthwise=depthwise)
            # Kernel layouts: depthwise [k,k,C] (multiplier 1 squeezed); full and 1x1 convs as
            # GEMM panels over their [k*k*C_in, C_out] matrix (HWIO flattens to im2col order).
            if depthwise:
                self.params.append((np.ascontiguousarray(w[:, :, :, 0], np.float32),
                                    np.ascontiguousarray(bias, np.float32)))
            else:
                self.params.append((fast.pack_pointwise(w.reshape(-1, layer.out_depth).astype(np.float32)),
                                    fast.pad_bias(bias.astype(np.float32))))
        self._workspaces: dict[tuple, list[np.ndarray]] = {}

    def _buffers(self, geo: list[spec.LayerGeometry], batch: int) -> tuple[list[np.ndarray], dict]:
        """Three flat buffers big enough for any activation of this input shape (a layer never
        writes into its own input or into the block input that a residual add still needs),
        and the stem's patch offsets for this width.  Kept until a call with another shape."""
        key = (batch, geo[0].in_hw)
        if key not in self._workspaces:
            size = max(batch * g.out_hw[0] * g.out_hw[1] * g.layer.out_depth for g in geo)
            taps = {i: self._fast.stem_taps(g.layer.kernel, g.in_hw[1], g.layer.in_depth)
                    for i, g in enumerate(geo) if g.layer.kind == "conv"}
            self._workspaces = {key: ([np.empty(size, np.float32) for _ in range(3)], taps)}
        return self._workspaces[key]

    def run(self, geo, x, on_layer):
        """Run every layer; ``on_layer(i, y)`` sees each output (a view into the workspace)."""
        buffers, taps = self._buffers(geo, x.shape[0])
        block_input = None
        for i, (g, (w, bias)) in enumerate(zip(geo, self.params)):
            layer = g.layer
            if layer.block_start:
                block_input = x
            busy = {id(_base(x)), id(_base(block_input))}
            target = next(b for b in buffers if id(b) not in busy)
            n = x.shape[0]
            shape = (n, *g.out_hw, layer.out_depth)
            y = target[: n * g.out_hw[0] * g.out_hw[1] * layer.out_depth].reshape(shape)
            top, _, left, _ = g.pad
            if layer.kind == "conv":
                self._fast.conv2d(x, w, bias, taps[i], layer.kernel, layer.stride, top, left, layer.relu6, y)
            elif layer.kind == "depthwise":
                self._fast.depthwise_conv2d(x, w, bias, layer.stride, top, left, layer.relu6, y)
            else:
                flat = y.reshape(-1, layer.out_depth)
                res = block_input.reshape(-1, layer.out_depth) if layer.adds_residual else flat
                self._fast.pointwise_conv2d(x.reshape(-1, layer.in_depth), w, bias, layer.relu6,
                                            res, layer.adds_residual, flat)
            on_layer(i, y)
            x = y
        return x

    def global_mean(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], x.shape[3]), np.float32)
        self._fast.global_mean(x, out)
        return out

    def release(self) -> None:
        """Drop the cached buffers (they are rebuilt on the next call)."""
        self._workspaces = {}


def _base(a):
    """The array that owns ``a``'s memory (None stays None)."""
    while a is not None and a.base is not None:
        a = a.base
    return a


BACKENDS = {"numba": NumbaBackend, "numpy": NumpyBackend}
