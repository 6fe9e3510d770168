"""Model names as users write them elsewhere, mapped to registry names; and "did you mean".

``canonical_name`` takes the registry's own names (``mobilenet_v2_050_96``) and the names the
same TF-Slim checkpoints go by elsewhere:

* TF-Hub handles and URLs: ``https://tfhub.dev/google/imagenet/mobilenet_v1_050_160/feature_vector/3``,
  ``google/imagenet/mobilenet_v2_050_96/classification/4``;
* their Kaggle Models forms: ``google/mobilenet-v2/tensorFlow2/050-96-feature-vector`` (the
  kagglehub handle, any framework: TensorFlow1, TensorFlow2, tfjs, ...), with or without a
  version, ``https://www.kaggle.com/models/...`` and ``.../frameworks/TensorFlow2/variations/
  050-96-classification/versions/2``;
* TF-Slim archive names: ``mobilenet_v1_0.5_160`` (``.tgz`` too);
* Hugging Face names: ``google/mobilenet_v2_1.0_224``, ``google/mobilenet_v1_0.75_192``.

A ``feature_vector`` and a ``classification`` handle of the same model map to the same entry:
the TF-Slim checkpoint behind both holds the classifier, and ``model(x)`` ignores it.
Deliberately not here: downloading (``registry.py``) and files (``load.py``).  Keras' and
timm's MobileNets are trained differently, so their names are not aliases of these weights.
"""

from __future__ import annotations

import fnmatch
import re

from . import registry

# mobilenet_v2_050_96 in TF-Hub handles; mobilenet_v2_0.5_96 / _1.0_224 in TF-Slim and HF names.
_PERCENT_FORM = re.compile(r"mobilenet_v([12])_(\d{3})_(\d{2,3})(?![\d.])")
_DECIMAL_FORM = re.compile(r"mobilenet_v([12])_(\d+(?:\.\d+)?)_(\d{2,3})(?!\d)")
# Kaggle: mobilenet-v2/<framework>/050-96-feature-vector, or .../variations/050-96-classification
_KAGGLE_FORM = re.compile(r"mobilenet-v([12])/.*?(\d{3})-(\d{2,3})-(?:feature-vector|classification)")


def canonical_name(text: str) -> str | None:
    """The registry name ``text`` stands for, or None when it names no registry entry."""
    key = str(text).strip().lower()
    if key in registry.REGISTRY:
        return key
    if "quant" in key:      # quantization-aware trained checkpoints: other weights, not in the registry
        return None
    for pattern in (_KAGGLE_FORM, _PERCENT_FORM, _DECIMAL_FORM):
        found = pattern.search(key)
        if found:
            version, width, size = found.groups()
            percent = int(width) if pattern is not _DECIMAL_FORM else round(float(width) * 100)
            name = f"mobilenet_v{version}_{percent:03d}_{int(size)}"
            return name if name in registry.REGISTRY else None
    return None


def suggest(text: str, limit: int = 3) -> list[str]:
    """Registry names close to ``text`` (by its last path part, so that a mistyped handle or
    file name still finds the model)."""
    import difflib      # here: only a miss needs it, not every start
    tail = str(text).strip().lower().rstrip("/").rsplit("/", 1)[-1]
    return difflib.get_close_matches(tail, registry.list_models(), n=limit, cutoff=0.6)


def list_models(pattern: str | None = None) -> list[str]:
    """Registry names (V1 then V2, by width and input size), filtered by a shell-style
    ``pattern`` such as ``"mobilenet_v2*"`` or ``"*_224"``."""
    names = registry.list_models()
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]
