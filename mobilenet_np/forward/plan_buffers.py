"""The fast integer graph's intermediate buffers (``quantized_engine._Plan``): preallocated arrays
shared by tensors whose lives do not overlap."""

from __future__ import annotations

import numpy as np


class Buffers:
    """Preallocated arrays, each counted by the tensors that hold it; when none does, its memory
    serves a later tensor that fits in it (the smallest such)."""

    def __init__(self):
        self.free, self.count = [], {}

    def take(self, shape, dtype) -> np.ndarray:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        fits = [raw for raw in self.free if raw.size >= size]
        raw = min(fits, key=len) if fits else np.empty(size, np.uint8)
        if fits:
            self.free = [b for b in self.free if b is not raw]
        out = raw[:size].view(dtype).reshape(shape)
        self.count[id(out)] = [raw, 1]
        return out

    def hold(self, out) -> None:
        self.count[id(out)][1] += 1

    def drop(self, out) -> None:
        entry = self.count[id(out)]
        entry[1] -= 1
        if entry[1] == 0:
            del self.count[id(out)]
            self.free.append(entry[0])
