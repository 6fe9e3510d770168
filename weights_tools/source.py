"""What every weight reader hands to the converter: tensors under their TF-Slim names.

Readers of foreign formats (TF checkpoints, TFLite, TF.js, Keras .h5) differ in layout and
naming; each one maps its tensors to the canonical TF-Slim names and layouts (conv HWIO,
depthwise [kh, kw, C, 1], logits [1, 1, C, K]) and says what it had to do on the way.
This module holds only that record; it does not validate shapes (``convert`` does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SourceTensors:
    """Tensors of one model, keyed by TF-Slim variable name (``MobilenetV1/Conv2d_0/weights``).

    A source with BatchNorm already folded into the kernels (TFLite, TF.js) stores each layer
    as ``<scope>/weights`` (or ``depthwise_weights``) plus ``<scope>/biases`` and no
    ``BatchNorm`` tensors; an unfolded source stores ``<scope>/BatchNorm/{gamma,beta,
    moving_mean,moving_variance}``.
    """

    tensors: dict[str, np.ndarray]
    source_format: str                     # "tf-checkpoint", "tflite", "tfjs-graph", "keras-h5"
    source_files: list[str]                # every file read, for provenance (sha256 is added later)
    batchnorm_folded: bool
    weights_choice: str = "n/a"            # "raw" or "ema" for checkpoints, else "n/a"
    input_size: tuple[int, int] | None = None   # the input size the source declares, if any
    ignored: dict[str, str] = field(default_factory=dict)   # tensor name -> why it was not used
    notes: list[str] = field(default_factory=list)          # lossy steps, e.g. "dequantized uint8"
