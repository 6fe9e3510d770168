"""The barrier the engine's threads meet at after every layer (kernels/sync.py), and the split
call built on it (``NumbaBackend._run_plan``): the same bytes on 1, 2 and 3 threads, every
write before a barrier seen after it, and no hang when a thread fails or never starts."""

import threading
import time

import numpy as np
import pytest

import mobilenet_np as mnp

pytest.importorskip("numba", reason="Numba is not installed")
from mobilenet_np.kernels import sync  # noqa: E402
from mobilenet_np.kernels.jit import kernel  # noqa: E402

ROUNDS = 2000


@kernel()
def _exchange(sync_array, slots, part, parts, rounds, seen):
    """Each round: write the round number into this part's slot, meet, read every other part's
    slot (which must hold the same round), meet again before the next write."""
    for r in range(1, rounds + 1):
        slots[part] = r
        sync.barrier(sync_array, parts)
        for other in range(parts):
            if slots[other] != r:
                seen[part] += 1
        sync.barrier(sync_array, parts)


@pytest.mark.parametrize("parts", [2, 3])
def test_every_write_before_the_barrier_is_seen_after_it(parts):
    meeting, slots, seen = sync.new(), np.zeros(parts, np.int64), np.zeros(parts, np.int64)
    threads = [threading.Thread(target=_exchange, args=(meeting, slots, p, parts, ROUNDS, seen))
               for p in range(1, parts)]
    for t in threads:
        t.start()
    _exchange(meeting, slots, 0, parts, ROUNDS, seen)
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert seen.tolist() == [0] * parts                     # no stale slot in any round
    assert meeting[sync.GENERATION] == 2 * ROUNDS and meeting[sync.ARRIVED] == 0


def test_abort_releases_a_thread_waiting_for_one_that_never_comes():
    meeting, slots, seen = sync.new(), np.zeros(2, np.int64), np.zeros(2, np.int64)
    waiter = threading.Thread(target=_exchange, args=(meeting, slots, 0, 2, 1, seen))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()                # it waits (yielding the core) for the second thread
    meeting[sync.ABORT] = 1
    waiter.join(10)
    assert not waiter.is_alive()


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_split_runs_give_the_bytes_of_one_thread(rng, batch):
    """Every layer split over 2 and 3 threads, with and without the pool, equals one thread."""
    model = mnp.build("mobilenet_v2", 0.35, 64, num_classes=0, seed=5)
    backend = model.backend
    geo = model._geometry((64, 64))
    x = rng.random((batch, 64, 64, 3), dtype=np.float32)
    one = np.empty((batch, model.num_features), np.float32)
    backend._features_into(geo, x, 0, batch, 2, one, False, 1)
    last = backend.run(geo, x, parallel=False).copy()
    for threads in (2, 3):
        split = np.empty_like(one)
        backend._features_into(geo, x, 0, batch, 2, split, True, threads)
        np.testing.assert_array_equal(split, one)
        np.testing.assert_array_equal(backend.run(geo, x, parallel=True, threads=threads), last)


def test_a_split_call_whose_worker_cannot_start_raises_instead_of_hanging(rng, monkeypatch):
    model = mnp.build("mobilenet_v2", 0.35, 64, num_classes=0, seed=5)
    backend = model.backend
    geo = model._geometry((64, 64))
    x = rng.random((1, 64, 64, 3), dtype=np.float32)

    class NoWorkers:
        def submit(self, *args):
            raise RuntimeError("cannot schedule new futures after shutdown")

    monkeypatch.setattr(backend, "_thread_pool", lambda threads: NoWorkers())
    out = np.empty((1, model.num_features), np.float32)
    with pytest.raises(RuntimeError, match="cannot schedule"):
        backend._features_into(geo, x, 0, 1, 1, out, True, 2)


def test_a_split_call_whose_worker_never_runs_raises_instead_of_hanging(rng, monkeypatch):
    """A worker's part cancelled before it ran: the calling thread, waiting for it at the first
    barrier, is released and the call raises."""
    from concurrent.futures import CancelledError, Future

    model = mnp.build("mobilenet_v2", 0.35, 64, num_classes=0, seed=5)
    backend = model.backend
    x = rng.random((1, 64, 64, 3), dtype=np.float32)

    class Cancelling:
        def submit(self, *args):
            future = Future()
            future.cancel()
            return future

    monkeypatch.setattr(backend, "_thread_pool", lambda threads: Cancelling())
    out = np.empty((1, model.num_features), np.float32)
    with pytest.raises(CancelledError):
        backend._features_into(model._geometry((64, 64)), x, 0, 1, 1, out, True, 2)
