"""The model: a MobileNet architecture, its weights, and the forward pass that TF-Hub defines.

``MobileNet(images)`` follows the TF-Hub feature-vector contract: float32 NHWC images in
[0, 1] (or uint8, converted as TensorFlow does), mapped to [-1, 1] inside, run through the
layers, averaged over space.  ``logits`` adds the 1x1 classifier; ``endpoints`` returns any
intermediate TF-Slim endpoint by name.  This module never loops over pixels: the forward
pass (``forward/reference.py``, ``forward/engine.py``) runs the layers.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from . import spec, threads as _threads, weights_file
from ._version import __version__
from .forward import BACKENDS, backend_class
from .preprocess import uint8_to_float


class MobileNet:
    """A loaded MobileNet V1 or V2.  Build one with :func:`load` or :func:`build`."""

    def __init__(self, arch: spec.Architecture, tensors: dict[str, np.ndarray], *, num_classes: int,
                 folded: bool, input_size: tuple[int, int], backend: str = "numba",
                 name: str | None = None, weights_sha256: str | None = None, attrs: dict | None = None,
                 default_preset: str = "hub"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        weights_file.check_tensors(arch, tensors, num_classes, folded, name or "tensors")
        self.arch = arch
        self.tensors = tensors
        self.num_classes = num_classes
        self.folded = folded
        self.input_size = tuple(int(s) for s in input_size)
        self.name = name or f"{arch.name}_{int(round(arch.depth_multiplier * 100)):03d}_{self.input_size[0]}"
        self.attrs = dict(attrs or {})
        self.labels_offset = int(self.attrs.get("labels_offset", 1 if num_classes == 1001 else 0))
        self.default_preset = default_preset
        self.weights_sha256 = weights_sha256 or _tensors_digest(tensors)
        epsilon = float(self.attrs.get("batchnorm_epsilon", spec.TF_BATCHNORM_EPSILON))
        self.backend = backend_class(backend)(arch, tensors, folded, epsilon)
        self._geometries: dict[tuple[int, int], list[spec.LayerGeometry]] = {}
        if num_classes:
            self._logits_w = np.ascontiguousarray(tensors[arch.logits_names.weights][0, 0])
            self._logits_b = tensors[arch.logits_names.biases]

    @property
    def num_features(self) -> int:
        return self.arch.num_features

    def __repr__(self) -> str:
        return (f"MobileNet({self.name!r}, {self.arch.name}, depth_multiplier={self.arch.depth_multiplier:g}, "
                f"input_size={self.input_size}, features={self.num_features}, classes={self.num_classes}, "
                f"backend={self.backend.name!r})")

    # --- inputs ---------------------------------------------------------------------------

    def _network_input(self, images) -> np.ndarray:
        """Check a batch: float32 [N, H, W, 3], C-contiguous, values as given (uint8 scaled to
        [0, 1]).  The backends map it to the network's [-1, 1] range (``reference.hub_input``)."""
        x = np.asarray(images)
        if x.ndim != 4:
            raise ValueError(f"images must be a batch [N, H, W, 3], got an array of shape {x.shape}"
                             + ("; for one image pass images[None]" if x.ndim == 3 else ""))
        if x.shape[3] != 3:
            raise ValueError(f"images must have 3 (RGB) channels in the last axis, got shape {x.shape}")
        if x.shape[0] == 0:
            raise ValueError("images is an empty batch")
        if x.shape[1] < spec.MIN_INPUT_SIZE or x.shape[2] < spec.MIN_INPUT_SIZE:
            raise ValueError(f"images are {x.shape[1]}x{x.shape[2]}; the minimum size is "
                             f"{spec.MIN_INPUT_SIZE}x{spec.MIN_INPUT_SIZE}")
        if x.dtype == np.uint8:
            x = uint8_to_float(x)
        elif x.dtype in (np.float32, np.float64, np.float16):
            x = x.astype(np.float32, copy=False)
            if not np.isfinite(x).all():
                raise ValueError("images contain NaN or infinite values")
        else:
            raise ValueError(f"images must be float (values in [0, 1]) or uint8, got dtype {x.dtype}")
        return np.ascontiguousarray(x)

    # --- the forward pass -------------------------------------------------------------------

    def _geometry(self, hw) -> list[spec.LayerGeometry]:
        """Layer geometry for an input size, computed once per size."""
        hw = tuple(int(v) for v in hw)
        if hw not in self._geometries:
            self._geometries[hw] = spec.geometry(self.arch, hw)
        return self._geometries[hw]

    def _run(self, images, wanted: set[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        x = self._network_input(images)
        geo = self._geometry(x.shape[1:3])
        if not wanted:
            return self.backend.features(geo, x), {}
        found: dict[str, np.ndarray] = {}

        def on_layer(i, y):
            for name in geo[i].layer.endpoints:
                if name in wanted:
                    found[name] = y.copy()

        last = self.backend.run(geo, x, on_layer)
        return self.backend.global_mean(last), found

    def __call__(self, images, threads: int | None = None) -> np.ndarray:
        """Feature vectors [N, num_features]: the TF-Hub module's ``default`` output."""
        with _threads.limit(threads):
            return self._run(images, set())[0]

    def logits(self, images, threads: int | None = None) -> np.ndarray:
        """Classifier logits [N, num_classes]; with 1001 classes index 0 is 'background'."""
        self._require_classifier()
        with _threads.limit(threads):
            return self._classify(self._run(images, set())[0])

    def _require_classifier(self) -> None:
        if not self.num_classes:
            raise ValueError(f"{self.name} has no classifier (feature-vector weights only)")

    def _classify(self, pooled: np.ndarray) -> np.ndarray:
        return pooled @ self._logits_w + self._logits_b

    def endpoints(self, images, names=None, threads: int | None = None) -> dict[str, np.ndarray]:
        """Intermediate outputs by TF-Slim endpoint name (all of them when ``names`` is None).

        Layer endpoints are [N, H, W, C] after BatchNorm and ReLU6 (and the residual add);
        ``global_pool`` is [N, 1, 1, C] as in TF-Slim; ``Logits`` and ``Predictions`` [N, K].
        """
        available = self.arch.endpoint_names()
        if not self.num_classes:
            available = available[:-2]
        names = list(available if names is None else [names] if isinstance(names, str) else names)
        unknown = [n for n in names if n not in available]
        if unknown:
            raise KeyError(f"unknown endpoint(s) {unknown} for {self.name}; available: {', '.join(available)}")
        with _threads.limit(threads):
            pooled, found = self._run(images, set(names))
        if self.arch.pool_endpoint in names:
            found[self.arch.pool_endpoint] = pooled[:, None, None, :].copy()
        if "Logits" in names or "Predictions" in names:
            logits = self._classify(pooled)
            found["Logits"] = logits
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            found["Predictions"] = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
        return {n: found[n] for n in names}

    # --- around the model -------------------------------------------------------------------

    def preprocess(self, src, preset: str | None = None, draft: bool = True) -> np.ndarray:
        """Decode and resize one image for this model: float32 [H, W, 3] in [0, 1].
        ``draft``: let the hub preset decode large JPEGs at reduced size (faster; changes
        pixels slightly, see ``preprocess.preprocess``)."""
        from .preprocess import preprocess
        return preprocess(src, self.input_size, preset or self.default_preset, draft=draft)

    def summary_rows(self, input_size: tuple[int, int] | None = None) -> list[dict]:
        """One record per layer: scope, op, kernel, stride, shapes, padding, params, MACs."""
        hw = tuple(input_size or self.input_size)
        return layer_table(self.arch, hw)

    def summary(self, input_size: tuple[int, int] | None = None) -> str:
        """The per-layer table as text (the same table docs/architecture.md shows)."""
        hw = tuple(input_size or self.input_size)
        return format_table(self.arch, hw, self.num_classes)

    def profile(self, images, repeats: int = 20, threads: int | None = None) -> list[dict]:
        """Time every layer: median over ``repeats`` runs (after one warm-up) of the time from
        the previous layer's end to this layer's end, next to its MACs and achieved GMAC/s."""
        import time
        x = self._network_input(images)
        geo = self._geometry(x.shape[1:3])
        samples = np.zeros((repeats, len(geo) + 1))
        with _threads.limit(threads):
            for r in range(-1, repeats):
                stamps = [time.perf_counter()]
                last = self.backend.run(geo, x, lambda i, y: stamps.append(time.perf_counter()))
                self.backend.global_mean(last)
                stamps.append(time.perf_counter())
                if r >= 0:
                    samples[r] = np.diff(stamps)
        median = np.median(samples, axis=0)
        rows = []
        for g, seconds in zip(geo, median):
            macs = g.macs * x.shape[0]
            rows.append({"scope": g.layer.scope, "op": g.layer.kind, "out_shape": (x.shape[0], *g.out_hw, g.layer.out_depth),
                         "macs": macs, "ms": seconds * 1e3, "gmacs": macs / seconds / 1e9})
        rows.append({"scope": "global_pool", "op": "mean", "out_shape": (x.shape[0], self.num_features),
                     "macs": 0, "ms": median[-1] * 1e3, "gmacs": 0.0})
        return rows

    def save(self, path: str | os.PathLike) -> None:
        """Write this model's weights as a mobilenet-np weights file (atomically)."""
        attrs = {
            "architecture": self.arch.name, "depth_multiplier": float(self.arch.depth_multiplier),
            "default_input_size": list(self.input_size), "input_range": "[-1, 1]",
            "num_classes": int(self.num_classes), "labels_offset": self.labels_offset,
            "batchnorm_folded": bool(self.folded), "batchnorm_epsilon": spec.TF_BATCHNORM_EPSILON,
            "weights_choice": "n/a", "source_format": "mobilenet-np", "source_files": [],
            "converter_version": __version__,
            **{k: v for k, v in self.attrs.items() if k not in ("format", "format_version")},
        }
        weights_file.write(path, self.tensors, attrs)


def layer_table(arch: spec.Architecture, input_hw: tuple[int, int]) -> list[dict]:
    rows = []
    for g in spec.geometry(arch, input_hw):
        layer = g.layer
        rows.append({
            "scope": layer.scope, "op": layer.kind, "kernel": layer.kernel, "stride": layer.stride,
            "in_shape": (*g.in_hw, layer.in_depth), "out_shape": (*g.out_hw, layer.out_depth),
            "pad": g.pad, "relu6": layer.relu6, "residual": layer.adds_residual,
            "params": layer.params, "macs": g.macs, "endpoints": layer.endpoints,
        })
    return rows


def format_table(arch: spec.Architecture, input_hw: tuple[int, int], num_classes: int = 0) -> str:
    rows = layer_table(arch, input_hw)
    header = f"{'#':>3}  {'scope':<28} {'op':<9} {'k':>1} {'s':>1}  {'in':>13}  {'out':>13}  {'pad t,b,l,r':<11} {'act':<10} {'params':>9} {'MACs':>12}"
    lines = [f"{arch.scope} depth multiplier {arch.depth_multiplier:g}, input {input_hw[0]}x{input_hw[1]}", header,
             "-" * len(header)]
    for i, r in enumerate(rows):
        act = ("relu6" if r["relu6"] else "linear") + ("+res" if r["residual"] else "")
        shape_in = "x".join(map(str, r["in_shape"]))
        shape_out = "x".join(map(str, r["out_shape"]))
        pad = ",".join(map(str, r["pad"]))
        lines.append(f"{i:>3}  {r['scope']:<28} {r['op']:<9} {r['kernel']:>1} {r['stride']:>1}  {shape_in:>13}  "
                     f"{shape_out:>13}  {pad:<11} {act:<10} {r['params']:>9,} {r['macs']:>12,}")
    macs = sum(r["macs"] for r in rows)
    params = sum(r["params"] for r in rows)
    lines.append("-" * len(header))
    lines.append(f"backbone: {params:,} conv weights, {macs:,} MACs; features: {arch.num_features}")
    if num_classes:
        lines.append(f"logits: {arch.num_features * num_classes:,} MACs, "
                     f"{arch.num_features * num_classes + num_classes:,} weights + biases ({num_classes} classes)")
    return "\n".join(lines)


def format_profile(rows: list[dict]) -> str:
    """The per-layer profile as text, with each op kind's share of the time."""
    total = sum(r["ms"] for r in rows)
    lines = [f"{'scope':<28} {'op':<9} {'out shape':>18} {'MACs':>12} {'ms':>8} {'GMAC/s':>7} {'share':>6}"]
    for r in rows:
        shape = "x".join(map(str, r["out_shape"]))
        lines.append(f"{r['scope']:<28} {r['op']:<9} {shape:>18} {r['macs']:>12,} {r['ms']:>8.3f} "
                     f"{r['gmacs']:>7.1f} {r['ms'] / total:>6.1%}")
    by_op: dict[str, list[float]] = {}
    for r in rows:
        by_op.setdefault(r["op"], [0.0, 0.0])
        by_op[r["op"]][0] += r["ms"]
        by_op[r["op"]][1] += r["macs"]
    macs = sum(r["macs"] for r in rows)
    lines.append(f"total {total:.3f} ms, {macs / total / 1e6:.1f} GMAC/s; by op: " + ", ".join(
        f"{op} {ms:.3f} ms ({ms / total:.0%}, {m / ms / 1e6 if ms else 0:.1f} GMAC/s)" for op, (ms, m) in by_op.items()))
    return "\n".join(lines)


def _tensors_digest(tensors: dict[str, np.ndarray]) -> str:
    """sha256 over names and float32 bytes in name order: an identity for in-memory weights."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensors[name], np.float32).tobytes())
    return h.hexdigest()


def from_file(path: str | os.PathLike, backend: str = "numba", input_size=None) -> MobileNet:
    """Load a mobilenet-np weights file (see docs/weights-format.md)."""
    wf = weights_file.read(path)
    size = input_size or tuple(wf.attrs["default_input_size"])
    return MobileNet(wf.architecture, wf.tensors, num_classes=int(wf.attrs["num_classes"]),
                     folded=bool(wf.attrs["batchnorm_folded"]), input_size=size, backend=backend,
                     name=str(wf.attrs.get("model_name") or Path(path).stem), weights_sha256=weights_file.file_sha256(path),
                     attrs=wf.attrs, default_preset=str(wf.attrs.get("default_preset", "hub")))


def random_tensors(arch: spec.Architecture, num_classes: int = 1001, seed: int = 0,
                   folded: bool = False) -> dict[str, np.ndarray]:
    """Seeded random weights with plausible statistics: variance-preserving kernels and BatchNorm
    statistics away from identity, scaled so that activations stay mostly inside ReLU6's range
    (a saturated random network would hide errors), and every term of every layer is used."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in arch.variables(num_classes, folded).items():
        leaf = name.rsplit("/", 1)[1]
        if leaf in ("weights", "depthwise_weights"):
            fan_in = shape[0] * shape[1] * (1 if leaf == "depthwise_weights" else shape[2])
            value = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
        elif leaf == "gamma":
            value = rng.uniform(0.4, 1.0, shape)
        elif leaf == "moving_variance":
            value = rng.uniform(0.5, 1.5, shape)
        else:  # beta, moving_mean, biases
            value = rng.normal(0.0, 0.1, shape)
        out[name] = value.astype(np.float32)
    return out


def build(architecture: str = "mobilenet_v2", depth_multiplier: float = 1.0, input_size=224,
          num_classes: int = 1001, seed: int = 0, backend: str = "numba") -> MobileNet:
    """A model with seeded random weights: for tests, benchmarks and learning, not for features."""
    arch = spec.build(architecture, depth_multiplier)
    size = (input_size, input_size) if np.isscalar(input_size) else tuple(input_size)
    return MobileNet(arch, random_tensors(arch, num_classes, seed), num_classes=num_classes, folded=False,
                     input_size=size, backend=backend)
