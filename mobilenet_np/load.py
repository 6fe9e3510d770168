"""The one place that turns any source into a model: ``mnp.load``.

A source is a registry name (``mobilenet_v2_050_96``: downloaded, converted and cached on first
use, ``registry.py``; or any name ``names.py`` maps to one: a TF-Hub handle, a Kaggle Models
handle, a TF-Slim archive or Hugging Face name), a mobilenet-np weights file, or anything ``weights_tools`` reads: a TF
checkpoint (prefix, ``.index``, or a folder with a ``checkpoint`` file), a TF-Hub TF1 module
folder, a ``.tflite`` file, a TF.js graph model (folder or ``model.json``) or a Keras ``.h5``.
Foreign formats are converted in memory: nothing is written.  The CLI, Dask workers and the
server all build their models here.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import names, registry, spec, weights_file
from .errors import UnknownSourceError
from .model import MobileNet
from .weights_file_v2 import QuantizedWeightsFile


def load(source: str | os.PathLike, backend: str = "numba", weights: str = "ema", *, pooling: str | None = "avg",
         check_range: bool = True, dequantize: bool = False, tiered: bool | None = None) -> MobileNet:
    """A model from any source (see the module notes).  ``weights``: for checkpoints, the raw
    or the EMA (``ExponentialMovingAverage``) values of each variable.  ``pooling`` and
    ``check_range`` set the model's attributes of those names, ``tiered`` whether a cold kernel
    cache is compiled in the background while the NumPy path answers (see ``MobileNet``).

    A version-2 (quantized) weights file or a quantized .tflite gives a ``QuantizedMobileNet``
    (``model.quantized`` is True), which computes in integers exactly as LiteRT does;
    ``dequantize=True`` runs the dequantized weights of a quantized .tflite or version-2 file in
    float instead."""
    key = os.fspath(source)
    options = {"backend": backend, "pooling": pooling, "check_range": check_range, "tiered": tiered}
    exists = os.path.exists(key) or os.path.exists(key + ".index")       # a checkpoint prefix
    name = None if exists else names.canonical_name(key)
    if name is not None:
        entry = registry.REGISTRY[name]
        return from_file(registry.resolve(name, weights=weights), input_size=(entry.input_size, entry.input_size),
                         **options)
    if not exists:
        raise _unknown(key)
    if os.path.isfile(key) and weights_file.is_weights_file(key):
        model = from_file(key, **options)
        return model.dequantized() if dequantize and model.quantized else model
    return from_source(key, weights=weights, dequantize=dequantize, **options)


def from_file(path: str | os.PathLike, backend: str = "numba", input_size=None, **options) -> MobileNet:
    """Load a mobilenet-np weights file (see docs/weights-format.md)."""
    wf = weights_file.read(path)
    size = input_size or tuple(wf.attrs["default_input_size"])
    if isinstance(wf, QuantizedWeightsFile):
        from .quantized_model import QuantizedMobileNet     # here: the integer engine's imports, only when needed
        return QuantizedMobileNet(wf, input_size=size, backend=backend, name=str(wf.attrs.get("model_name") or Path(path).stem),
                                  weights_sha256=weights_file.file_sha256(path), **options)
    return MobileNet(wf.architecture, wf.tensors, num_classes=int(wf.attrs["num_classes"]),
                     folded=bool(wf.attrs["batchnorm_folded"]), input_size=size, backend=backend,
                     name=str(wf.attrs.get("model_name") or Path(path).stem),
                     weights_sha256=weights_file.file_sha256(path), attrs=wf.attrs,
                     default_preset=str(wf.attrs.get("default_preset", "hub")), **options)


def from_source(path: str, backend: str = "numba", weights: str = "ema", dequantize: bool = False,
                **options) -> MobileNet:
    """Read a foreign weight source with ``weights_tools`` and build the model in memory."""
    from weights_tools.convert import detect, open_source, read_quantized

    quantized = None if dequantize else read_quantized(path)
    if quantized is not None:
        from .quantized_model import QuantizedMobileNet
        return QuantizedMobileNet(quantized, input_size=tuple(quantized.attrs["default_input_size"]), backend=backend,
                                  name=os.path.basename(path.rstrip("/")),
                                  weights_sha256=weights_file.file_sha256(path), **options)

    src = open_source(path, weights)
    found = detect(src.tensors, path)
    return MobileNet(spec.build(found.architecture, found.depth_multiplier), src.tensors,
                     num_classes=found.num_classes, folded=found.folded,
                     input_size=src.input_size or (224, 224), backend=backend,
                     name=os.path.basename(path.rstrip("/")), **options)


def _unknown(key: str) -> Exception:
    close = names.suggest(key)
    hint = f"did you mean {' or '.join(close)}? " if close else f"known names include {registry.list_models()[0]} ...; "
    return UnknownSourceError(
        f"{key!r} is neither a weights file nor a registry name, nor any file or folder "
        f"({hint}'mobilenet-np list' shows all {len(registry.REGISTRY)})")
