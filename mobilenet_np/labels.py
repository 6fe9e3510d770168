"""Class names and the top-k of logits, for ``classify``.

The ImageNet names ship with the package (``data/imagenet_labels_1001.txt``, provenance in
``data/NOTICE.md``): 'background' then the 1000 ILSVRC-2012 classes.
"""

from __future__ import annotations

import csv
import json
from importlib import resources

import numpy as np

from .atomic import write_atomically

BACKGROUND_LABEL = "background"
IMAGENET_CLASSES = 1000
PREDICTION_SUFFIXES = (".csv", ".jsonl")


def imagenet_labels_path():
    """The packaged 1001-line ImageNet label file."""
    return resources.files("mobilenet_np").joinpath("data").joinpath("imagenet_labels_1001.txt")


def class_names(num_classes: int, labels_offset: int, labels_file=None) -> list[str]:
    """Names for the model's classes: the lines of ``labels_file`` (a 1001-line list with
    'background' first; a 1000-line list is accepted too); without one, the packaged ImageNet
    names for an ImageNet head (1000 classes after ``labels_offset``), else the indices as text."""
    if labels_file is None:
        if num_classes - labels_offset != IMAGENET_CLASSES:
            return [str(i) for i in range(num_classes)]
        labels_file = imagenet_labels_path()
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


def write_predictions(path: str, rows, names: list[str]) -> None:
    """Write ``classify``'s results atomically: ``rows`` are (image path, class indices,
    probabilities).  .csv: one row per image and rank (path, rank, class, label, probability);
    .jsonl: one object per image, ``{"path": ..., "top": [{"class", "label", "probability"}, ...]}``."""
    def tops(order, probabilities):
        return [{"class": int(i), "label": names[i], "probability": float(p)} for i, p in zip(order, probabilities)]

    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if path.lower().endswith(".jsonl"):
                for image, order, probabilities in rows:
                    f.write(json.dumps({"path": image, "top": tops(order, probabilities)}) + "\n")
                return
            out = csv.writer(f, lineterminator="\n")
            out.writerow(["path", "rank", "class", "label", "probability"])
            for image, order, probabilities in rows:
                for rank, top in enumerate(tops(order, probabilities), start=1):
                    out.writerow([image, rank, top["class"], top["label"], f"{top['probability']:.6f}"])

    write_atomically(path, write)
