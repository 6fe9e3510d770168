"""A quantized MobileNet: the model API of ``MobileNet``, computed in integers as LiteRT does.

``mnp.load`` gives a ``QuantizedMobileNet`` for a version-2 weights file or a quantized .tflite
(unless ``dequantize=True``).  It runs the integer graph of the file
(``forward/integer_graph.from_weights``, one graph per input size) with the integer kernels
(``FastQuantizedGraph``, bit-identical to the reference loop; ``backend="numpy"`` runs the
reference loop ``QuantizedGraph`` itself), so every byte equals LiteRT's reference kernels.

Inputs: uint8 arrays go into a uint8 input unchanged (the raw pixels the model was calibrated
on), and int8 arrays into an int8 input; float images in [0, 1] (or uint8 images for an int8
model) become ``x * 2 - 1`` and are quantized with the input's scale and zero point.
Outputs: ``model(x)`` the dequantized pooled features (float32 [N, C]), ``logits`` the
dequantized logits, ``endpoints`` the quantized values with their scale and zero point.

It deliberately does not: train, profile per layer, or run anything in float.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np

from . import endpoint_names, spec, threads as _threads, weights_file
from . import weights_file_v2 as v2
from .forward import integer_graph as ig
from .forward.quantized import QuantizedGraph
from .kernels import integer_program as iprog
from .kernels import integer_reference as iref
from .model import MobileNet, _check_values, _refuse_undecoded

ENDPOINT_TENSORS = {"Logits": "Logits/reshape", "Predictions": "Predictions"}
# Root attributes that only describe the integer model (dropped by ``dequantized``).
V2_ONLY_ATTRS = ("format", "format_version", "quantization", "global_pool_op", "global_pool_keep_dims", "logits_op",
                 "output_op", "softmax_beta", "per_channel", "residual_projection", "calibration")


class QuantizedMobileNet(MobileNet):
    """A version-2 (quantized) model; see the module notes.  ``preprocess``, ``data_config``,
    ``summary`` and ``feature_map_names`` are ``MobileNet``'s."""

    quantized = True

    def __init__(self, qw: v2.QuantizedWeightsFile, *, input_size: tuple[int, int], backend: str = "numba",
                 name: str | None = None, weights_sha256: str | None = None, pooling: str | None = "avg",
                 check_range: bool = True, kernels: str = "reference", tiered: bool | None = None):
        if backend not in ("numba", "numpy"):
            raise ValueError(f"unknown backend {backend!r} for a quantized model; expected numba or numpy")
        if pooling not in ("avg", "max", None):
            raise ValueError(f"pooling must be 'avg', 'max' or None, got {pooling!r}")
        self.qw = qw
        self.arch = qw.architecture
        self.attrs = dict(qw.attrs)
        self.num_classes = int(self.attrs["num_classes"])
        self.folded = True
        self.input_size = tuple(int(s) for s in input_size)
        self.name = name or f"{self.arch.name}_{int(round(self.arch.depth_multiplier * 100)):03d}_{self.input_size[0]}"
        self.labels_offset = int(self.attrs.get("labels_offset", 1 if self.num_classes == 1001 else 0))
        self.default_preset = str(self.attrs.get("default_preset", "hub"))
        self.weights_sha256 = weights_sha256 or ""
        self.pooling, self.check_range = pooling, bool(check_range)
        self.backend_name, self.kernels = backend, kernels
        # The integer kernels compile on the first call (``mobilenet-np warmup`` fills the cache
        # ahead); ``tiered`` is kept only for the float model of ``dequantized()``.
        self.tiered = tiered
        self.backend = SimpleNamespace(name=backend)     # what callers read of a float model's backend
        self.input_quantization = qw.activations["input"]
        self._graphs: dict[tuple[int, int], QuantizedGraph] = {}

    def __repr__(self) -> str:
        return (f"QuantizedMobileNet({self.name!r}, {self.arch.name}, depth_multiplier={self.arch.depth_multiplier:g}, "
                f"{self.attrs['quantization']}, input_size={self.input_size}, features={self.num_features}, "
                f"classes={self.num_classes})")

    @property
    def tensors(self) -> dict[str, v2.QuantizedTensor]:
        return self.qw.tensors

    # --- the graph and its input -------------------------------------------------------------

    def graph(self, hw) -> QuantizedGraph:
        """The integer graph at one input size, built once per size."""
        hw = tuple(int(v) for v in hw)
        if hw not in self._graphs:
            cls = QuantizedGraph
            if self.backend_name == "numba":          # imported here: backend="numpy" runs without Numba
                from .forward.quantized_engine import FastQuantizedGraph as cls
            self._graphs[hw] = cls(ig.from_weights(self.qw, hw), self.kernels)
        return self._graphs[hw]

    def quantize_input(self, images, check_range: bool | None = None) -> np.ndarray:
        """The batch as the graph's quantized input (see the module notes)."""
        _refuse_undecoded(images)
        x = np.asarray(images)
        if x.ndim != 4 or x.shape[3] != 3 or x.shape[0] == 0:
            raise ValueError(f"images must be a non-empty batch [N, H, W, 3], got an array of shape {x.shape}")
        if min(x.shape[1:3]) < spec.MIN_INPUT_SIZE:
            raise ValueError(f"images are {x.shape[1]}x{x.shape[2]}; the minimum size is "
                             f"{spec.MIN_INPUT_SIZE}x{spec.MIN_INPUT_SIZE}")
        q = self.input_quantization
        if x.dtype == np.dtype(q.dtype):
            return np.ascontiguousarray(x)
        if x.dtype == np.uint8:
            x = x.astype(np.float32) * np.float32(1 / 255)
        elif x.dtype in (np.float32, np.float64, np.float16):
            x = x.astype(np.float32, copy=False)
            _check_values(x, self.check_range if check_range is None else check_range)
        else:
            raise ValueError(f"images must be float (values in [0, 1]), uint8, or {q.dtype} for this model's "
                             f"{q.dtype} input; got dtype {x.dtype}")
        network = x * np.float32(2.0) - np.float32(1.0)
        return np.ascontiguousarray(iref.quantize(network, q.scale, q.zero_point, np.dtype(q.dtype)))

    def _tensors_of(self, images, names: dict[str, int], check_range, threads) -> dict[str, tuple]:
        """Run the graph as far as the named tensor indices; their (values, scale, zero point).
        (No ``on_op``: the fast graph then splits a large batch over its threads.)"""
        x = self.quantize_input(images, check_range)
        graph = self.graph(x.shape[1:3])
        order = list(names)
        with _threads.limit(threads, blas=False):      # integer ops only: no BLAS call to limit
            values = graph.run(x, outputs=[names[n] for n in order])
        return {n: (v, graph.scale(names[n]), graph.zero_point(names[n])) for n, v in zip(order, values)}

    def _index(self, graph: QuantizedGraph, name: str) -> int:
        return next(i for i, t in enumerate(graph.sub.tensors) if t.name == name and t.data is None)

    def _dequantized(self, images, name: str, check_range, threads) -> np.ndarray:
        """The named tensor of the graph for ``images``, dequantized to float32."""
        x = self.quantize_input(images, check_range)
        index = self._index(self.graph(x.shape[1:3]), name)
        values, scale, zero_point = self._tensors_of(x, {name: index}, check_range, threads)[name]
        return iref.dequantize(values, scale, zero_point).astype(np.float32)

    # --- the model API -------------------------------------------------------------------------

    def __call__(self, images, threads: int | None = None, check_range: bool | None = None) -> np.ndarray:
        """Dequantized feature vectors [N, num_features] (``pooling="avg"``: the graph's own global pool)."""
        if self.pooling == "avg":
            pooled = self._dequantized(images, "global_pool", check_range, threads)
            return pooled.reshape(pooled.shape[0], -1)
        last = self.forward_features(images, threads, check_range)
        return last if self.pooling is None else last.max(axis=(1, 2))

    def forward_features(self, images, threads: int | None = None, check_range: bool | None = None) -> np.ndarray:
        """The last feature map, dequantized."""
        return self._dequantized(images, self.arch.layers[-1].scope, check_range, threads)

    def feature_maps(self, images, strides=(4, 8, 16, 32), threads: int | None = None,
                     check_range: bool | None = None) -> list[np.ndarray]:
        """One dequantized feature map per output stride (see ``MobileNet.feature_maps``)."""
        names = self.feature_map_names(strides)
        found = self.endpoints(images, names, threads, check_range)
        return [iref.dequantize(*found[n]).astype(np.float32) for n in names]

    def logits(self, images, threads: int | None = None, check_range: bool | None = None) -> np.ndarray:
        """Dequantized logits [N, num_classes]."""
        self._require_classifier()
        name = "Logits/reshape" if self.attrs["logits_op"] == "CONV_2D" else "Logits"
        return self._dequantized(images, name, check_range, threads)

    def classify(self, features: np.ndarray) -> np.ndarray:
        """Dequantized logits of dequantized pooled features (``model(x)``): the features are
        quantized back (exactly: they are dequantized integers) and the logits layer runs on them."""
        self._require_classifier()
        graph = self.graph(self.input_size)
        pool = next(i for i, op in enumerate(graph.sub.operators) if op.opcode in (ig.tfl.AVERAGE_POOL_2D, ig.tfl.MEAN))
        k = graph.sub.operators[pool].outputs[0]
        features = np.asarray(features, np.float32)
        q = iref.quantize(features, graph.scale(k), graph.zero_point(k), graph.dtype(k))
        values = {k: q.reshape(q.shape[0], *graph.tensor(k).shape[1:])}
        last = k
        for i in range(pool + 1, len(graph.sub.operators)):
            op = graph.sub.operators[i]
            if op.opcode == ig.tfl.SOFTMAX:
                break
            inputs = [values.get(j) if graph.constant(j) is None else graph.constant(j) for j in op.inputs]
            values[op.outputs[0]] = graph.ops[op.opcode](graph, op, graph.options[i], inputs)
            last = op.outputs[0]
        return iref.dequantize(values[last], graph.scale(last), graph.zero_point(last)).astype(np.float32)

    def endpoints(self, images, names=None, threads: int | None = None,
                  check_range: bool | None = None) -> dict[str, tuple[np.ndarray, float, int]]:
        """Endpoints by TF-Slim name (all when ``names`` is None), each as (quantized values,
        scale, zero point): real = scale * (values - zero point).  ``global_pool`` is [N, 1, 1, C]
        (or [N, C] for a MEAN without kept dims), ``Logits`` and ``Predictions`` [N, K]."""
        available = self.arch.endpoint_names()
        if not self.num_classes:
            available = available[:-2]
        elif self.attrs["output_op"] != "SOFTMAX":
            available = available[:-1]
        asked = list(available if names is None else [names] if isinstance(names, str) else names)
        targets = endpoint_names.resolve(self.arch, asked, available)
        x = self.quantize_input(images, check_range)
        graph = self.graph(x.shape[1:3])
        indices = graph.endpoint_tensors()
        logits = "Logits/reshape" if self.attrs.get("logits_op") == "CONV_2D" else "Logits"
        for name, tensor in (("Logits", logits), ("Predictions", "Predictions")):
            if name in available:
                indices[name] = self._index(graph, tensor)
        found = self._tensors_of(x, {n: indices[n] for n in set(targets.values())}, check_range, threads)
        return {a: found[n] for a, n in targets.items()}

    def profile(self, images, repeats: int = 20, threads: int | None = None) -> list[dict]:
        raise NotImplementedError(f"{self.name}: per-layer profiles of a quantized model are not implemented")

    def warm_up(self) -> None:
        """Build the graph at the input size and run one image (compiles the kernels)."""
        self(np.zeros((1, *self.input_size, 3), np.uint8))

    def dequantized(self) -> MobileNet:
        """The float model of the stored weights, real = scale * (q - zero point) in float64 then
        float32 (BatchNorm folded): what ``mnp.load(tflite, dequantize=True)`` and ``weights-tools
        convert --dequantize`` give for the .tflite such a file came from.  Its activations are
        float, so its outputs are close to the integer path's, not equal."""
        attrs = {k: v for k, v in self.attrs.items() if k not in V2_ONLY_ATTRS}
        return MobileNet(self.arch, {name: _dequantize(t) for name, t in self.qw.tensors.items()},
                         num_classes=self.num_classes, folded=True, input_size=self.input_size,
                         backend=self.backend_name, name=self.name, weights_sha256=self.weights_sha256, attrs=attrs,
                         default_preset=self.default_preset, pooling=self.pooling, check_range=self.check_range,
                         tiered=self.tiered)

    def save(self, path: str | os.PathLike) -> None:
        """Write this model as a version-2 weights file (atomically)."""
        attrs = {k: v for k, v in self.attrs.items() if k not in ("format", "format_version")}
        weights_file.write_quantized(path, self.qw.tensors, self.qw.activations, attrs)


def warm_up_integer_kernels(threads: int | None = None) -> None:
    """Compile the integer kernels (or load them from the kernel cache) for both kinds of
    version-2 model: an int8 one as ``weights-tools quantize`` makes (MEAN pool) and a uint8 one
    as the QAT .tflite files hold (AVERAGE_POOL_2D).  ``mobilenet-np warmup`` runs it after the
    float kernels.  A small V2 (convs, residual adds, logits, softmax) with constant weights;
    any size and weights compile the same code."""
    from weights_tools import quantize as q
    arch = spec.build("mobilenet_v2", 0.35)
    tensors = {name: np.full(shape, 0.01, np.float32) for name, shape in arch.variables(2, folded=True).items()}
    ranges = {name: (-1.0, 6.0) for name in q.activation_names(arch, 2)}
    attrs = {"architecture": arch.name, "depth_multiplier": arch.depth_multiplier, "default_input_size": [32, 32],
             "num_classes": 2, "labels_offset": 0, "input_range": "[-1, 1]", "batchnorm_folded": True,
             "batchnorm_epsilon": spec.TF_BATCHNORM_EPSILON, "weights_choice": "n/a", "source_format": "mobilenet-np",
             "source_files": [], "converter_version": "warm-up"}
    int8 = q.quantize_model(arch, tensors, attrs, ranges, per_channel=True, path="<warm-up>")
    for qw in (int8, _as_uint8(q.quantize_model(arch, tensors, attrs, ranges, per_channel=False, path="<warm-up>"))):
        with _threads.limit(threads, blas=False):
            model = QuantizedMobileNet(qw, input_size=(32, 32))
            # the kernels, and the program that runs them on one thread or several (integer_program.py); the
            # kernels' own parallel twins, which only a pass with ``on_op`` uses, compile on first use
            model.warm_up()
    # every kernel a program may call, also those these two models do not use (a program compiles its
    # kinds on its first run: another model may need others)
    iprog.kernel_table()


def _as_uint8(qw: v2.QuantizedWeightsFile) -> v2.QuantizedWeightsFile:
    """The uint8 model of an int8 per-tensor one: the same reals, every integer and zero point + 128."""
    def shift(t: v2.QuantizedTensor) -> v2.QuantizedTensor:
        if t.values.dtype != np.int8:
            return t                                    # int32 biases stay
        return v2.QuantizedTensor((t.values.astype(np.int16) + 128).astype(np.uint8), t.scale,
                                  t.zero_point + 128, t.quantized_axis, t.fused_activation)
    acts = {name: v2.ActivationQuantization(a.scale, a.zero_point + 128, "uint8") for name, a in qw.activations.items()}
    attrs = {**qw.attrs, "quantization": "uint8-per-tensor", "global_pool_op": "AVERAGE_POOL_2D"}
    return v2.QuantizedWeightsFile(qw.path, {n: shift(t) for n, t in qw.tensors.items()}, acts, attrs)


def _dequantize(t: v2.QuantizedTensor) -> np.ndarray:
    """scale * (values - zero point), per tensor or along ``quantized_axis``, as the .tflite reader
    dequantizes (exact in float64, one rounding to float32)."""
    shape = [1] * t.values.ndim
    if t.scale.size > 1:
        shape[t.quantized_axis] = t.scale.size
    scale, zero_point = t.scale.astype(np.float64).reshape(shape), t.zero_point.astype(np.float64).reshape(shape)
    return (scale * (t.values.astype(np.float64) - zero_point)).astype(np.float32)
