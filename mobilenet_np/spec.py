"""MobileNet V1 and V2 as data: the TF-Slim layer lists, the depth rules, names, shapes and MACs.

One list of nominal ops per version (as TF-Slim's ``MOBILENETV1_CONV_DEFS`` and ``V2_DEF``),
one builder that applies a depth multiplier to it, and small pure functions for the depth
rules.  Every layer is a :class:`ConvLayer` record: its TF-Slim scope gives both the checkpoint
variable names and the endpoint names, so no name table is written by hand.

This module computes nothing on images; the kernels live in ``mobilenet_np.kernels`` and the
forward pass in ``mobilenet_np.model``.  See SPEC.md sections 2-4 for the rules encoded here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

TF_BATCHNORM_EPSILON = 1e-3      # slim arg scope (V1) and slim's batch_norm default (V2)
MIN_DEPTH = 8                    # both versions: no layer is thinned below 8 channels
V2_DIVISIBLE_BY = 8              # V2 rounds every depth to a multiple of 8
V2_EXPANSION = 6                 # V2_DEF's default expansion factor
MIN_INPUT_SIZE = 32              # total stride of both networks

ARCHITECTURES = ("mobilenet_v1", "mobilenet_v2")
SCOPES = {"mobilenet_v1": "MobilenetV1", "mobilenet_v2": "MobilenetV2"}
LOGITS_SCOPE = "Logits/Conv2d_1c_1x1"
BATCHNORM_STATS = ("gamma", "beta", "moving_mean", "moving_variance")   # TF-Slim's order


# --- depth rules ---------------------------------------------------------------------------

def v1_depth(nominal: int, multiplier: float, min_depth: int = MIN_DEPTH) -> int:
    """V1: truncate toward zero, then apply min_depth; no divisibility rounding (SPEC 2.1)."""
    return max(int(nominal * multiplier), min_depth)


def make_divisible(value: float, divisor: int = V2_DIVISIBLE_BY, min_value: int | None = None) -> int:
    """V2: round to the nearest multiple of ``divisor`` but never more than 10 % down (SPEC 2.2)."""
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


def v2_last_depth(multiplier: float, nominal: int = 1280) -> int:
    """V2's last conv: 'finegrain classification mode' keeps it at 1280 below multiplier 1.0."""
    if multiplier < 1.0:
        return make_divisible(nominal / multiplier * multiplier)
    return make_divisible(nominal * multiplier)


# --- the layer record ----------------------------------------------------------------------

@dataclass(frozen=True)
class ConvLayer:
    """One convolution followed by BatchNorm and (optionally) ReLU6.

    ``kind`` is "conv" (full k x k), "depthwise" (k x k, one filter per channel) or
    "pointwise" (1 x 1).  ``endpoints`` are the TF-Slim endpoint names published after this
    layer's activation (and after the residual add, if ``adds_residual``).  ``block_start``
    marks the first layer of a V2 block whose input the block's last layer adds back.
    """

    scope: str
    kind: str
    kernel: int
    stride: int
    in_depth: int
    out_depth: int
    relu6: bool = True
    endpoints: tuple[str, ...] = ()
    block_start: bool = False
    adds_residual: bool = False

    @property
    def weight_name(self) -> str:
        return "depthwise_weights" if self.kind == "depthwise" else "weights"

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        if self.kind == "depthwise":
            return (self.kernel, self.kernel, self.in_depth, 1)
        return (self.kernel, self.kernel, self.in_depth, self.out_depth)

    @property
    def params(self) -> int:
        return math.prod(self.weight_shape)

    def macs(self, out_hw: tuple[int, int]) -> int:
        pixels = out_hw[0] * out_hw[1]
        if self.kind == "depthwise":
            return pixels * self.kernel * self.kernel * self.in_depth
        return pixels * self.kernel * self.kernel * self.in_depth * self.out_depth


@dataclass(frozen=True)
class TensorNames:
    """The TF-Slim variable names of one layer, e.g. ``MobilenetV2/expanded_conv_3/project/...``:
    the convolution kernel, the folded bias (TFLite / TF.js / Keras-exported sources) and the
    four BatchNorm tensors in ``BATCHNORM_STATS`` order (checkpoints).  Every reader, backend and
    writer takes its names from here."""

    weights: str
    biases: str
    batchnorm: tuple[str, str, str, str]

    def present(self, folded: bool) -> tuple[str, ...]:
        """The names a model of this kind stores: weights + biases, or weights + BatchNorm."""
        return (self.weights, self.biases) if folded else (self.weights, *self.batchnorm)


def tensor_names(scope: str, layer_scope: str, weight_name: str = "weights") -> TensorNames:
    prefix = f"{scope}/{layer_scope}"
    return TensorNames(f"{prefix}/{weight_name}", f"{prefix}/biases",
                       tuple(f"{prefix}/BatchNorm/{s}" for s in BATCHNORM_STATS))


@dataclass(frozen=True)
class Architecture:
    """A MobileNet at one depth multiplier: its layers and head, independent of input size."""

    name: str                      # "mobilenet_v1" or "mobilenet_v2"
    depth_multiplier: float
    layers: tuple[ConvLayer, ...]
    pool_endpoint: str             # "global_pool" in both (the hub modules' global mean)

    @property
    def scope(self) -> str:
        return SCOPES[self.name]

    @property
    def num_features(self) -> int:
        return self.layers[-1].out_depth

    def endpoint_names(self) -> list[str]:
        names = [e for layer in self.layers for e in layer.endpoints]
        return names + [self.pool_endpoint, "Logits", "Predictions"]

    def names(self, layer: ConvLayer) -> TensorNames:
        """The TF-Slim tensor names of one of this network's layers."""
        return tensor_names(self.scope, layer.scope, layer.weight_name)

    @property
    def logits_names(self) -> TensorNames:
        """The classifier's names (a 1x1 conv with a bias, no BatchNorm)."""
        return tensor_names(self.scope, LOGITS_SCOPE)

    def variables(self, num_classes: int = 0, folded: bool = False) -> dict[str, tuple[int, ...]]:
        """Every model tensor's TF-Slim name and shape.  ``folded``: BatchNorm folded into
        ``<scope>/biases`` (TFLite / TF.js sources) instead of four BatchNorm tensors."""
        out: dict[str, tuple[int, ...]] = {}
        for layer in self.layers:
            names = self.names(layer)
            out[names.weights] = layer.weight_shape
            for name in names.present(folded)[1:]:
                out[name] = (layer.out_depth,)
        if num_classes:
            out[self.logits_names.weights] = (1, 1, self.num_features, num_classes)
            out[self.logits_names.biases] = (num_classes,)
        return out


# --- TF "SAME" geometry ---------------------------------------------------------------------

def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TF SAME: (output size, pad before, pad after); the odd pixel goes after (SPEC 1.2)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


@dataclass(frozen=True)
class LayerGeometry:
    layer: ConvLayer
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    pad: tuple[int, int, int, int]          # top, bottom, left, right

    @property
    def macs(self) -> int:
        return self.layer.macs(self.out_hw)

    @property
    def out_elements(self) -> int:
        """Values in this layer's output for one image."""
        return self.out_hw[0] * self.out_hw[1] * self.layer.out_depth


def geometry(arch: Architecture, input_hw: tuple[int, int]) -> list[LayerGeometry]:
    """Spatial size and padding of every layer for one input size (computed, never assumed)."""
    h, w = input_hw
    if h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE:
        raise ValueError(f"input size {h}x{w} is below the minimum {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}")
    rows = []
    for layer in arch.layers:
        oh, top, bottom = same_padding(h, layer.kernel, layer.stride)
        ow, left, right = same_padding(w, layer.kernel, layer.stride)
        rows.append(LayerGeometry(layer, (h, w), (oh, ow), (top, bottom, left, right)))
        h, w = oh, ow
    return rows


# --- V1 ------------------------------------------------------------------------------------

# (stride, nominal depth) of the first conv, then of the 13 depthwise-separable units.
V1_STEM = (2, 32)
V1_SEPARABLE = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), (1, 512), (1, 512),
                (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))


def mobilenet_v1(depth_multiplier: float = 1.0) -> Architecture:
    def depth(d: int) -> int:
        return v1_depth(d, depth_multiplier)

    stride, nominal = V1_STEM
    layers = [ConvLayer("Conv2d_0", "conv", 3, stride, 3, depth(nominal), endpoints=("Conv2d_0",))]
    c_in = depth(nominal)
    for i, (stride, nominal) in enumerate(V1_SEPARABLE, start=1):
        dw, pw = f"Conv2d_{i}_depthwise", f"Conv2d_{i}_pointwise"
        layers.append(ConvLayer(dw, "depthwise", 3, stride, c_in, c_in, endpoints=(dw,)))
        layers.append(ConvLayer(pw, "pointwise", 1, 1, c_in, depth(nominal), endpoints=(pw,)))
        c_in = depth(nominal)
    return Architecture("mobilenet_v1", depth_multiplier, tuple(layers), "global_pool")


# --- V2 ------------------------------------------------------------------------------------

# The inverted-residual stages of V2_DEF: (expansion t, nominal depth c, repeats n, stride s).
V2_STEM = (2, 32)
V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))
V2_LAST = 1280


def mobilenet_v2(depth_multiplier: float = 1.0) -> Architecture:
    def depth(d: int) -> int:
        return make_divisible(d * depth_multiplier)

    stride, nominal = V2_STEM
    c_in = depth(nominal)
    layers = [ConvLayer("Conv", "conv", 3, stride, 3, c_in, endpoints=("layer_1",))]
    block = 0
    for t, c, n, s in V2_STAGES:
        for r in range(n):
            stride = s if r == 0 else 1
            c_out = depth(c)
            scope = "expanded_conv" if block == 0 else f"expanded_conv_{block}"
            ep = f"layer_{block + 2}"
            # The first block expands by 1 with divisible_by 1; an expand conv exists only if
            # the inner depth exceeds the input depth (conv_blocks.expanded_conv).
            inner = c_in if t == 1 else make_divisible(c_in * t)
            residual = stride == 1 and c_in == c_out
            block_layers = []
            if inner > c_in:
                block_layers.append(ConvLayer(f"{scope}/expand", "pointwise", 1, 1, c_in, inner,
                                              endpoints=(f"{ep}/expansion_output",)))
            block_layers.append(ConvLayer(f"{scope}/depthwise", "depthwise", 3, stride, inner, inner,
                                          endpoints=(f"{ep}/depthwise_output",)))
            block_layers.append(ConvLayer(f"{scope}/project", "pointwise", 1, 1, inner, c_out,
                                          relu6=False, endpoints=(f"{ep}/output", ep),
                                          adds_residual=residual))
            if residual:
                block_layers[0] = replace(block_layers[0], block_start=True)
            layers.extend(block_layers)
            c_in = c_out
            block += 1
    layers.append(ConvLayer("Conv_1", "pointwise", 1, 1, c_in, v2_last_depth(depth_multiplier),
                            endpoints=(f"layer_{block + 2}",)))
    return Architecture("mobilenet_v2", depth_multiplier, tuple(layers), "global_pool")


BUILDERS = {"mobilenet_v1": mobilenet_v1, "mobilenet_v2": mobilenet_v2}


def build(name: str, depth_multiplier: float) -> Architecture:
    if name not in BUILDERS:
        raise ValueError(f"unknown architecture {name!r}; expected one of {', '.join(BUILDERS)}")
    if not depth_multiplier > 0:
        raise ValueError(f"depth multiplier must be positive, got {depth_multiplier}")
    return BUILDERS[name](depth_multiplier)


# The published TF-Slim multipliers: used to recognise a set of tensors.
PUBLISHED_MULTIPLIERS = {
    "mobilenet_v1": (0.25, 0.5, 0.75, 1.0),
    "mobilenet_v2": (0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
}
