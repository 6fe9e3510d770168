"""Recognise a MobileNet from its tensors' names and shapes alone: architecture, width, classes.

``detect`` takes arrays, or ``Declared`` shapes read from a file's metadata before any data,
and checks *every* tensor against the rules of SPEC.md (via ``mobilenet_np.spec``), so a
reader can refuse a hostile or damaged shape before it allocates anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mobilenet_np import spec, weights_file
from mobilenet_np.errors import ArchitectureError


@dataclass(frozen=True)
class Declared:
    """A tensor's shape as a file declares it, before its data is read (``np.shape`` works on it)."""

    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass
class Detected:
    architecture: str
    depth_multiplier: float
    num_classes: int
    folded: bool

    def describe(self) -> str:
        head = f"{self.num_classes} classes" if self.num_classes else "no classifier"
        fold = "BatchNorm folded" if self.folded else "BatchNorm unfolded"
        return f"{self.architecture} depth multiplier {self.depth_multiplier:g}, {head}, {fold}"


def detect(tensors: dict[str, np.ndarray], where: str) -> Detected:
    """Recognise the network from its tensor names and shapes, or say why none fits."""
    scopes = {name.split("/", 1)[0] for name in tensors}
    matches = [a for a, s in spec.SCOPES.items() if s in scopes]
    if len(matches) != 1:
        raise ArchitectureError(f"{where}: no MobilenetV1/ or MobilenetV2/ tensors found "
                                f"(top-level scopes: {', '.join(sorted(scopes)[:5]) or 'none'})")
    name = matches[0]
    scope = spec.SCOPES[name]
    folded = not any("/BatchNorm/" in k for k in tensors)
    logits = tensors.get(f"{scope}/{spec.LOGITS_SCOPE}/weights")
    num_classes = int(logits.shape[-1]) if logits is not None and logits.ndim == 4 else 0
    closest = None
    for multiplier in spec.PUBLISHED_MULTIPLIERS[name] + _other_multipliers(name):
        arch = spec.build(name, multiplier)
        problems = weights_file.mismatches(arch, tensors, num_classes, folded)
        if not problems:
            return Detected(name, multiplier, num_classes, folded)
        if closest is None or len(problems) < len(closest[1]):
            closest = (arch, problems)
    # Report against the nearest width: its few differences are the ones worth reading.
    raise ArchitectureError(weights_file.describe_mismatch(closest[0], num_classes, closest[1], where))


def _other_multipliers(name: str) -> tuple[float, ...]:
    """Unpublished widths, in steps of 0.01 up to 3: the depth rules are not invertible from one
    shape, so each candidate is built and checked whole.  Two multipliers that give the same
    shapes give the same network, so the first that fits is as good as any."""
    published = spec.PUBLISHED_MULTIPLIERS[name]
    return tuple(m for m in (k / 100 for k in range(5, 301)) if m not in published)
