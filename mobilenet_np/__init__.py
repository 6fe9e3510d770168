"""mobilenet-np: MobileNet V1/V2 feature vectors on a CPU in NumPy + Numba, exact to TensorFlow.

    import mobilenet_np as mnp
    model = mnp.load("mobilenet_v2_050_96")      # a registry name, a weights file, or any source
    features = model(images)                      # [N, 96, 96, 3] in [0, 1] -> [N, 1280]

A version-2 (int8/uint8) weights file or a quantized .tflite loads as a ``QuantizedMobileNet``
(``model.quantized`` is True; False for float models), computed in integers as LiteRT does.

The package is built in layers, each importing only those below it (docs/architecture.md):
architecture (``spec``, ``weights_file``) -> kernels -> forward -> model (``model``, ``load``,
``registry``) -> application (``pipeline``, ``cli``, ``distributed``).  This file is the facade.
"""

from __future__ import annotations

from ._version import __version__
from .errors import WeightsError
from .load import load
from .model import MobileNet, build
from .pipeline import embed, iter_embed
from .names import list_models

__all__ = ["MobileNet", "QuantizedMobileNet", "WeightsError", "build", "embed", "embed_on_dask", "iter_embed", "list_models", "load",
           "__version__"]


def embed_on_dask(inputs, model, **options):
    """Embed on a Dask cluster (needs the ``dask`` extra): a partitioned Parquet dataset, an
    .h5/.npy file, or in memory.  Options as ``mobilenet_np.distributed.embed_on_dask``."""
    from .distributed import embed_on_dask as _embed_on_dask
    return _embed_on_dask(inputs, model, **options)


def __getattr__(name):
    # QuantizedMobileNet on first use: its integer engine's imports cost every start ~50 ms.
    if name == "QuantizedMobileNet":
        from .quantized_model import QuantizedMobileNet
        return QuantizedMobileNet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
