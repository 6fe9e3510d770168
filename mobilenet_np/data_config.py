"""How to prepare images for a model, as data: ``model.data_config`` (timm's ``pretrained_cfg``,
Keras' ``preprocess_input``, a TF-Hub module's documented input, in one record).

The TF-Hub contract is the default: RGB in [0, 1], resized to the model's size; the model
maps it to [-1, 1] itself (``x * 2 - 1``, which is ``(x - mean) / std`` with mean = std = 0.5 per
channel: those values are *informational*, never to be applied by the caller).
Deliberately not here: doing any of it (``preprocess.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .preprocess import PRESETS, SLIM_CENTRAL_FRACTION

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
