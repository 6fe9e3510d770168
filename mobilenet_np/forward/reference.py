"""The forward pass a learner should read: the whole network as one plain loop over the layers.

``forward(arch_params, geo, images)`` maps images in [0, 1] to the network's [-1, 1] range, then
runs each layer of ``spec.geometry`` with the NumPy reference kernels (``kernels/reference.py``):
convolution, BatchNorm in TensorFlow's own order (or the stored bias, for sources that had
BatchNorm folded), ReLU6, and V2's residual add.  ``NumpyBackend`` wraps it for ``MobileNet``.

It imports nothing but NumPy and the layers below it, and it is the oracle for the fast engine
(``forward/engine.py``): the tests compare the two at every endpoint.  The ops are a parameter
(``ops``, by default the reference kernels module), so that ``parity.py`` runs this very loop
with TensorFlow's own ops: one forward loop, two sets of kernels.
"""

from __future__ import annotations

import numpy as np

from .. import spec
from ..kernels import reference as ref


def layer_params(arch: spec.Architecture, tensors: dict[str, np.ndarray], folded: bool) -> list[tuple]:
    """Per layer: (kernel, BatchNorm (gamma, beta, mean, variance) or None, bias or None)."""
    params = []
    for layer in arch.layers:
        names = arch.names(layer)
        w = tensors[names.weights]
        if folded:
            params.append((w, None, tensors[names.biases]))
        else:
            params.append((w, tuple(tensors[n] for n in names.batchnorm), None))
    return params


def layer_forward(g: spec.LayerGeometry, params: tuple, x, residual, epsilon: float, ops=ref):
    """One layer: conv, then BatchNorm (or bias), ReLU6 and the residual add where the spec says."""
    w, bn, bias = params
    layer = g.layer
    if layer.kind == "conv":
        y = ops.conv2d(x, w, layer.stride, g.pad, g.out_hw)
    elif layer.kind == "depthwise":
        y = ops.depthwise_conv2d(x, w, layer.stride, g.pad, g.out_hw)
    else:
        y = ops.pointwise_conv2d(x, w)
    y = ops.batch_norm(y, *bn, epsilon) if bn is not None else y + bias
    if layer.relu6:
        y = ops.relu6(y)
    if residual is not None:
        y = y + residual          # V2: after the linear projection, no activation after
    return y


def forward(params: list[tuple], geo: list[spec.LayerGeometry], images, epsilon: float, on_layer=None,
            ops=ref):
    """Run every layer on images in [0, 1]; ``on_layer(i, y)``, if given, sees each output."""
    x = ops.hub_input(images)
    block_input = None
    for i, g in enumerate(geo):
        if g.layer.block_start:
            block_input = x                      # V2: the block's input, added back after project
        x = layer_forward(g, params[i], x, block_input if g.layer.adds_residual else None, epsilon, ops)
        if on_layer is not None:
            on_layer(i, x)
    return x


class NumpyBackend:
    """The readable path, as a backend of ``MobileNet``: the oracle for the fast one."""

    name = "numpy"

    def __init__(self, arch: spec.Architecture, tensors: dict[str, np.ndarray], folded: bool,
                 epsilon: float):
        self.epsilon = epsilon
        self.params = layer_params(arch, tensors, folded)

    def run(self, geo, x, on_layer=None):
        return forward(self.params, geo, x, self.epsilon, on_layer)

    def global_mean(self, x: np.ndarray) -> np.ndarray:
        return ref.global_mean(x)

    def set_classifier(self, w: np.ndarray, b: np.ndarray) -> None:
        """The logits layer: its kernel as a matrix [C, K] and its biases [K]."""
        self._classifier = (w, b)

    def logits(self, pooled: np.ndarray) -> np.ndarray:
        return ref.logits(pooled, *self._classifier).astype(np.float32)

    def features(self, geo, x) -> np.ndarray:
        """The pooled features [N, C] of a batch."""
        return self.global_mean(self.run(geo, x))

    def release(self) -> None:
        """Nothing cached."""
