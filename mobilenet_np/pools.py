"""Worker thread pools by size (``Pools``): the engines' batch splits (``threads.Pools``) and the
integer stem's gather (``kernels/integer_calls.pool``).  In the base layer so that the kernels,
which may not import ``threads``, share this one implementation."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor


class Pools:
    """Worker thread pools by size, each made on first use and kept, never shut down: a thread
    may be about to submit to the pool it was handed (a pool shut down under it raised), and an
    executor starts its threads only as work comes.  ``len``: how many have been made."""

    def __init__(self, name: str):
        self.name = name
        self._made: dict[int, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._made)

    def get(self, size: int) -> ThreadPoolExecutor:
        with self._lock:
            found = self._made.get(size)
            if found is None:
                found = self._made[size] = ThreadPoolExecutor(size, thread_name_prefix=self.name)
            return found
