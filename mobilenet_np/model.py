"""The model: a MobileNet architecture, its weights, and the forward pass that TF-Hub defines.

``MobileNet(images)`` follows the TF-Hub feature-vector contract: float32 NHWC images in
[0, 1] (or uint8, converted as TensorFlow does), mapped to [-1, 1] inside, run through the
layers, averaged over space (or max-pooled, or not pooled: ``pooling``).  ``logits`` adds the
1x1 classifier; ``endpoints`` returns any intermediate TF-Slim endpoint by name,
``forward_features`` the last feature map and ``feature_maps`` one map per output stride.
This module never loops over pixels: the forward pass (``forward/reference.py``,
``forward/engine.py``) runs the layers.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from . import endpoint_names, spec, threads as _threads, weights_file
from ._version import __version__
from .data_config import DataConfig, data_config, uint8_to_float
from .forward import BACKENDS, tiered as _tiered
from .tables import format_table, layer_table

POOLINGS = ("avg", "max", None)

#: Float input may stray this far outside [0, 1] (resampling overshoot) before it is refused.
RANGE_SLACK = 0.05
_UPPER_BITS = np.array(1 + RANGE_SLACK, np.float32).view(np.uint32)[()]

_NOT_AN_ARRAY = ("model(x) takes image arrays [N, H, W, 3]; decode and resize {what} with "
                 "model.preprocess(...) first (it takes paths, bytes, file objects, PIL images and arrays)")


class MobileNet:
    """A loaded MobileNet V1 or V2.  Build one with :func:`load` or :func:`build`.

    ``pooling`` (Keras' argument): what ``model(x)`` returns -- "avg" the TF-Hub feature
    vector [N, C] (the default), "max" the maximum over space [N, C], None the last feature
    map [N, H, W, C].  ``check_range``: refuse float input outside [0, 1] (0-255 images are
    the usual mistake); set it False, or pass ``check_range=False`` to a call, to feed other
    ranges deliberately.  Both are plain attributes, also set by ``mnp.load``.  ``tiered``:
    while the Numba kernels are not compiled yet, answer with the NumPy path and compile them
    in the background (``forward/tiered.py``; default on unless ``MOBILENET_NP_TIERED=0``).
    """

    quantized = False               # True for QuantizedMobileNet (quantized_model.py)

    def __init__(self, arch: spec.Architecture, tensors: dict[str, np.ndarray], *, num_classes: int,
                 folded: bool, input_size: tuple[int, int], backend: str = "numba",
                 name: str | None = None, weights_sha256: str | None = None, attrs: dict | None = None,
                 default_preset: str = "hub", pooling: str | None = "avg", check_range: bool = True,
                 tiered: bool | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be 'avg', 'max' or None, got {pooling!r}")
        self.pooling, self.check_range = pooling, bool(check_range)
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
        self.backend = _tiered.make(backend, arch, tensors, folded, epsilon, tiered)
        self._geometries: dict[tuple[int, int], list[spec.LayerGeometry]] = {}
        if num_classes:
            self.backend.set_classifier(np.ascontiguousarray(tensors[arch.logits_names.weights][0, 0]),
                                        tensors[arch.logits_names.biases])

    @property
    def num_features(self) -> int:
        return self.arch.num_features

    def __repr__(self) -> str:
        return (f"MobileNet({self.name!r}, {self.arch.name}, depth_multiplier={self.arch.depth_multiplier:g}, "
                f"input_size={self.input_size}, features={self.num_features}, classes={self.num_classes}, "
                f"backend={self.backend.name!r})")

    # --- inputs ---------------------------------------------------------------------------

    def _network_input(self, images, check_range: bool | None = None) -> np.ndarray:
        """Check a batch: float32 [N, H, W, 3], C-contiguous, values as given (uint8 scaled to
        [0, 1]).  The backends map it to the network's [-1, 1] range (``reference.hub_input``)."""
        _refuse_undecoded(images)
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
            _check_values(x, self.check_range if check_range is None else check_range)
        else:
            raise ValueError(f"images must be float (values in [0, 1]) or uint8, got dtype {x.dtype}")
        return np.ascontiguousarray(x)

    # --- the forward pass -------------------------------------------------------------------

    def _limit_threads(self, threads: int | None):
        """``threads.limit`` for a call of this model's backend (BLAS only if the backend uses it)."""
        return _threads.limit(threads, blas=getattr(self.backend, "uses_blas", True))

    def _geometry(self, hw) -> list[spec.LayerGeometry]:
        """Layer geometry for an input size, computed once per size."""
        hw = tuple(int(v) for v in hw)
        if hw not in self._geometries:
            self._geometries[hw] = spec.geometry(self.arch, hw)
        return self._geometries[hw]

    def _run(self, images, wanted: set[str], check_range=None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        x = self._network_input(images, check_range)
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

    def __call__(self, images, threads: int | None = None, check_range: bool | None = None) -> np.ndarray:
        """Feature vectors [N, num_features]: the TF-Hub module's ``default`` output (with
        ``pooling="avg"``; see the class notes for "max" and None)."""
        if self.pooling == "avg":
            with self._limit_threads(threads):
                return self._run(images, set(), check_range)[0]
        last = self.forward_features(images, threads, check_range)
        return last if self.pooling is None else last.max(axis=(1, 2))

    def forward_features(self, images, threads: int | None = None, check_range: bool | None = None) -> np.ndarray:
        """The last feature map before pooling, [N, H/32, W/32, num_features] (timm's
        ``forward_features``; the endpoint ``Conv2d_13_pointwise`` / ``layer_19``)."""
        x = self._network_input(images, check_range)
        with self._limit_threads(threads):
            return self.backend.run(self._geometry(x.shape[1:3]), x).copy()

    def feature_maps(self, images, strides=(4, 8, 16, 32), threads: int | None = None,
                     check_range: bool | None = None) -> list[np.ndarray]:
        """One feature map per output stride (2, 4, 8, 16, 32), in the order asked: the last
        block output at that stride, as timm's ``features_only=True``.  Their endpoint names:
        ``feature_map_names(strides)``."""
        names = self.feature_map_names(strides)
        found = self.endpoints(images, names, threads, check_range)
        return [found[n] for n in names]

    def feature_map_names(self, strides=(4, 8, 16, 32)) -> list[str]:
        return endpoint_names.stride_endpoints(self.arch, strides)

    def logits(self, images, threads: int | None = None, check_range: bool | None = None) -> np.ndarray:
        """Classifier logits [N, num_classes]; with 1001 classes index 0 is 'background'.
        Always from the average-pooled features the classifier was trained on."""
        self._require_classifier()
        with self._limit_threads(threads):
            return self.classify(self._run(images, set(), check_range)[0])

    def _require_classifier(self) -> None:
        if not self.num_classes:
            raise ValueError(f"{self.name} has no classifier (feature-vector weights only)")

    def classify(self, features: np.ndarray) -> np.ndarray:
        """Logits [N, num_classes] of average-pooled features [N, num_features] (what ``model(x)``
        returns): ``logits(x)`` is ``classify(model(x))``.  Each row is computed on its own, so
        it does not depend on the other rows of the batch or on any thread count."""
        self._require_classifier()
        return self.backend.logits(features)


    def endpoints(self, images, names=None, threads: int | None = None,
                  check_range: bool | None = None) -> dict[str, np.ndarray]:
        """Intermediate outputs by TF-Slim endpoint name (all of them when ``names`` is None),
        keyed as asked.  The layer scopes ``summary()`` shows are names too
        (``expanded_conv_3/project`` is ``layer_5/output``: ``endpoint_names.py``).

        Layer endpoints are [N, H, W, C] after BatchNorm and ReLU6 (and the residual add);
        ``global_pool`` is [N, 1, 1, C] as in TF-Slim; ``Logits`` and ``Predictions`` [N, K].
        """
        available = self.arch.endpoint_names()
        if not self.num_classes:
            available = available[:-2]
        asked = list(available if names is None else [names] if isinstance(names, str) else names)
        targets = endpoint_names.resolve(self.arch, asked, available)
        names = list(dict.fromkeys(targets.values()))
        with self._limit_threads(threads):
            pooled, found = self._run(images, set(names), check_range)
        if self.arch.pool_endpoint in names:
            found[self.arch.pool_endpoint] = pooled[:, None, None, :].copy()
        if "Logits" in names or "Predictions" in names:
            logits = self.classify(pooled)
            found["Logits"] = logits
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            found["Predictions"] = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
        return {a: found[n] for a, n in targets.items()}

    # --- around the model -------------------------------------------------------------------

    @property
    def data_config(self) -> DataConfig:
        """How to prepare images for this model (input size, preset, crop, filter, range)."""
        return data_config(self.input_size, self.default_preset)

    def preprocess(self, src, preset: str | None = None, draft: bool = True) -> np.ndarray:
        """Decode and resize images for this model: float32 [H, W, 3] in [0, 1] for one image
        (a path, bytes, a binary file object, a PIL image, an [H, W, 3] array), [N, H, W, 3]
        for a list or tuple of them or an [N, H, W, 3] array.  ``draft``: let the hub preset
        decode large JPEGs at reduced size (faster; changes pixels slightly, see
        ``preprocess.preprocess``)."""
        from .preprocess import preprocess
        preset = preset or self.default_preset
        if isinstance(src, (list, tuple)) or (isinstance(src, np.ndarray) and src.ndim == 4):
            if len(src) == 0:
                raise ValueError("preprocess was given an empty batch")
            return np.stack([preprocess(s, self.input_size, preset, draft=draft) for s in src])
        return preprocess(src, self.input_size, preset, draft=draft)

    def summary_rows(self, input_size: tuple[int, int] | None = None) -> list[dict]:
        """One record per layer: scope, op, kernel, stride, shapes, padding, params, MACs."""
        return layer_table(self.arch, tuple(input_size or self.input_size))

    def summary(self, input_size: tuple[int, int] | None = None) -> str:
        """The per-layer table as text (the same table docs/architecture.md shows)."""
        return format_table(self.arch, tuple(input_size or self.input_size), self.num_classes)

    def profile(self, images, repeats: int = 20, threads: int | None = None) -> list[dict]:
        """Time every layer: median over ``repeats`` runs (after one warm-up) of the time from
        the previous layer's end to this layer's end, next to its MACs and achieved GMAC/s."""
        import time
        x = self._network_input(images)
        geo = self._geometry(x.shape[1:3])
        samples = np.zeros((repeats, len(geo) + 1))
        with self._limit_threads(threads):
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


def _refuse_undecoded(images) -> None:
    """Paths, bytes and PIL images (alone or as the first of a list) are not arrays: say so."""
    first = images[0] if isinstance(images, (list, tuple)) and images else images
    if isinstance(first, (str, bytes, os.PathLike)):
        raise TypeError(_NOT_AN_ARRAY.format(what="files"))
    if hasattr(first, "getbands"):          # a PIL image, whose size model(x) would not change
        raise TypeError(_NOT_AN_ARRAY.format(what="PIL images"))


def _check_values(x: np.ndarray, check_range: bool) -> None:
    """Refuse NaN, infinities and (with ``check_range``) values outside [0, 1] + slack.

    The common case costs one pass: non-negative float32 values order like their bit patterns
    read as unsigned integers, and negative values (sign bit set), infinities and NaNs all
    have larger patterns, so one unsigned max at most that of 1 + RANGE_SLACK clears the batch
    (V2 0.5/96, batch 1: ~8 us, no more than the ``isfinite`` pass it replaces).  Anything else
    takes the slow path below, which finds what is wrong and says so."""
    if x.view(np.uint32).max() <= _UPPER_BITS if check_range else np.isfinite(x).all():
        return
    low, high = float(x.min()), float(x.max())      # NaN and infinities propagate into both
    if np.isnan(low) or np.isnan(high):
        raise ValueError("images contain NaN values")
    if np.isinf(low) or np.isinf(high):
        raise ValueError("images contain infinite values")
    if check_range and (low < -RANGE_SLACK or high > 1 + RANGE_SLACK):
        hint = "divide 0-255 images by 255, or pass them as uint8" if high > 1 + RANGE_SLACK else \
            "map [-1, 1] images with (x + 1) / 2"
        raise ValueError(f"float images must be in [0, 1] (the TF-Hub contract), these span [{low:g}, {high:g}]: "
                         f"{hint}; check_range=False feeds them as they are")


def _tensors_digest(tensors: dict[str, np.ndarray]) -> str:
    """sha256 over names and float32 bytes in name order: an identity for in-memory weights."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensors[name], np.float32).tobytes())
    return h.hexdigest()


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
          num_classes: int = 1001, seed: int = 0, backend: str = "numba", **options) -> MobileNet:
    """A model with seeded random weights: for tests, benchmarks and learning, not for features.
    ``options``: ``pooling``, ``check_range`` (see ``MobileNet``)."""
    arch = spec.build(architecture, depth_multiplier)
    size = (input_size, input_size) if np.isscalar(input_size) else tuple(input_size)
    return MobileNet(arch, random_tensors(arch, num_classes, seed), num_classes=num_classes, folded=False,
                     input_size=size, backend=backend, **options)
