"""mobilenet-np: MobileNet V1/V2 feature vectors on a CPU in NumPy + Numba, exact to TensorFlow.

    import mobilenet_np as mnp
    model = mnp.load("mobilenet_v2_050_96")      # or a converted weights file, "weights.h5"
    features = model(images)                      # [N, 96, 96, 3] in [0, 1] -> [N, 1280]
"""

from __future__ import annotations

import os

from ._version import __version__  # noqa: E402

from .errors import WeightsError  # noqa: E402
from .model import MobileNet, build  # noqa: E402
from .registry import list_models  # noqa: E402

__all__ = ["MobileNet", "WeightsError", "build", "embed", "embed_on_dask", "iter_embed", "list_models", "load",
           "__version__"]


def load(name_or_path: str | os.PathLike, backend: str = "numba", weights: str = "ema") -> MobileNet:
    """A model from a converted weights file, or from a registry name (downloaded, converted
    and cached on first use; ``weights`` picks raw or EMA checkpoint values for that step)."""
    from . import model, registry

    key = str(name_or_path)
    if key in registry.REGISTRY and not os.path.exists(key):
        entry = registry.REGISTRY[key]
        return model.from_file(registry.resolve(key, weights=weights), backend=backend,
                               input_size=(entry.input_size, entry.input_size))
    if os.path.exists(key) or key.endswith((".h5", ".hdf5")):
        return model.from_file(key, backend=backend)
    raise KeyError(f"{key!r} is neither a weights file nor a registry name; "
                   f"known names include {', '.join(registry.list_models()[:3])} ... (mobilenet-np list)")


def _model(model) -> MobileNet:
    return model if isinstance(model, MobileNet) else load(model)


def embed(inputs, model, **options):
    """Embed image files, folders or path-list files in process: ``EmbedResult(paths, features,
    failures)``, the same rows the ``embed`` command writes.  ``model`` is a MobileNet, a
    weights file or a registry name; options as ``mobilenet_np.embedding.embed``."""
    from .embedding import embed as _embed
    return _embed(inputs, _model(model), **options)


def iter_embed(inputs, model, **options):
    """As :func:`embed`, one ``EmbedResult`` per batch, with bounded memory."""
    from .embedding import iter_embed as _iter_embed
    return _iter_embed(inputs, _model(model), **options)


def embed_on_dask(inputs, model, **options):
    """Embed on a Dask cluster (needs the ``dask`` extra): a partitioned Parquet dataset, an
    .h5/.npy file, or in memory.  Options as ``mobilenet_np.distributed.embed_on_dask``."""
    from .distributed import embed_on_dask as _embed_on_dask
    return _embed_on_dask(inputs, model, **options)
