"""Class names and the top-k of logits, for ``classify``."""

from __future__ import annotations

import numpy as np

BACKGROUND_LABEL = "background"


def class_names(num_classes: int, labels_offset: int, labels_file=None) -> list[str]:
    """Names for the model's classes: the lines of ``labels_file`` (a 1001-line list with
    'background' first; a 1000-line list is accepted too), or the class indices as text."""
    if labels_file is None:
        return [str(i) for i in range(num_classes)]
    with open(labels_file, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) == num_classes - labels_offset:
        names = [BACKGROUND_LABEL] * labels_offset + names
    elif len(names) == num_classes + 1 and labels_offset == 0:
        names = names[1:]
    if len(names) != num_classes:
        raise ValueError(f"{labels_file}: {len(names)} labels for a model with {num_classes} classes")
    return names


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and softmax probabilities (computed in float64) of the k largest logits per row."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probabilities, order, axis=1)
