"""How to prepare images for a model, as data: ``model.data_config`` (timm's ``pretrained_cfg``,
Keras' ``preprocess_input``, a TF-Hub module's documented input, in one record).

The TF-Hub contract is the default: RGB in [0, 1], resized to the model's size; the model
maps it to [-1, 1] itself (``x * 2 - 1``, which is ``(x - mean) / std`` with mean = std = 0.5 per
channel: those values are *informational*, never to be applied by the caller).
Deliberately not here: doing any of it (``preprocess.py``), except the one conversion the model
applies itself to uint8 input (``uint8_to_float``).  This module does not import Pillow, so
loading and calling a model does not either (~25 ms of every start).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

PRESETS = ("hub", "slim")

#: tf.image.central_crop fraction used by inception_preprocessing.preprocess_for_eval.
SLIM_CENTRAL_FRACTION = 0.875

#: tf.image.convert_image_dtype(uint8 -> float32) multiplies by float32(1/255); dividing by 255
#: differs by 1 ulp on about half the codes (pitfall 16).
UINT8_TO_UNIT = np.float32(1.0 / 255.0)

#: What each preset does, for the record: crop fraction and resize filter.
_PRESET_STEPS = {
    "hub": (1.0, "bilinear (Pillow, antialiased)"),
    "slim": (SLIM_CENTRAL_FRACTION, "bilinear (TF1 legacy: align_corners=False, no half-pixel centers)"),
}


@dataclass(frozen=True)
class DataConfig:
    """``input_size`` (height, width); ``preset`` the ``preprocess`` preset that applies the
    rest: ``crop_fraction`` (central crop kept before resizing), ``interpolation``;
    ``input_range`` what ``model(x)`` takes for float input (uint8 0-255 is taken too);
    ``mean`` / ``std`` the normalisation the model applies inside; ``channels`` order RGB,
    layout NHWC."""

    input_size: tuple[int, int]
    preset: str
    crop_fraction: float
    interpolation: str
    input_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    channels: str = "RGB"
    layout: str = "NHWC"

    def to_dict(self) -> dict:
        return asdict(self)


def data_config(input_size, preset: str = "hub") -> DataConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preprocessing preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    crop, interpolation = _PRESET_STEPS[preset]
    return DataConfig(tuple(int(s) for s in input_size), preset, crop, interpolation)


def uint8_to_float(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1] exactly as ``tf.image.convert_image_dtype``: cast, then
    multiply by float32(1/255)."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    return image.astype(np.float32) * UINT8_TO_UNIT
