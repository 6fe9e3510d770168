"""What dynamic batching relies on and does, in process: the engine's feature vectors do not
depend on the batch, the served logits equal model.logits on the image alone, and the
Batcher groups, bounds and drains its queue."""

import asyncio
import threading

import numpy as np
import pytest

import mobilenet_np as mnp

# the batcher and models need none of the serve extra
from mobilenet_np.serve.batching import Batcher
from mobilenet_np.serve.errors import ServeError
from mobilenet_np.serve.models import ServedModel


@pytest.mark.parametrize("arch,multiplier,size", [("mobilenet_v2", 0.35, 96), ("mobilenet_v1", 0.25, 128)])
@pytest.mark.parametrize("threads", [1, 2])
def test_features_do_not_depend_on_the_batch(rng, arch, multiplier, size, threads):
    """A served vector is computed in a batch of whatever else was queued; it must be the
    vector of the image alone, bit for bit, for every batch size and position (float and uint8)."""
    model = mnp.build(arch, multiplier, size, num_classes=0, seed=4)
    x = rng.random((33, size, size, 3), dtype=np.float32)
    alone = np.concatenate([model(img[None], threads=threads) for img in x])
    for n in (2, 3, 5, 8, 13, 32, 33):
        assert np.array_equal(model(x[:n], threads=threads), alone[:n]), n
    assert np.array_equal(model(x[7:19], threads=threads), alone[7:19])
    u = (x[:9] * 255).astype(np.uint8)
    assert np.array_equal(model(u, threads=threads), np.concatenate([model(img[None], threads=threads) for img in u]))


def test_served_logits_equal_the_image_alone(rng):
    """BLAS sums a [32, F] x [F, K] product in another order than [1, F] x [F, K]; the served
    logits are computed per image, so they equal model.logits on the image alone."""
    model = mnp.build("mobilenet_v2", 0.35, 96, num_classes=1001, seed=5)
    served = ServedModel("m", "built", model, max_batch=32, timeout_s=0.0, capacity=64, threads=None)
    try:
        x = rng.random((32, 96, 96, 3), dtype=np.float32)
        results = served._infer(x, None)
        alone = np.concatenate([model.logits(img[None]) for img in x])
        assert np.array_equal(np.stack([r["logits"] for r in results]), alone)
        assert np.array_equal(np.stack([r["features"] for r in results]), model(x))
    finally:
        served.close()


class Recorder:
    """A stand-in model: records each batch's shape and dtype; can be held to let a queue fill."""

    def __init__(self):
        self.batches = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch, items):
        self.gate.wait(30)
        self.batches.append((len(batch), batch.shape[1:3], batch.dtype))
        return [{"features": img.mean()} for img in batch]


def test_batches_group_shape_and_dtype_and_keep_order():
    recorder = Recorder()
    recorder.gate.clear()
    batcher = Batcher("m", recorder, max_batch=4, timeout_s=0.0, capacity=16)

    async def main():
        first = batcher.reserve(1)
        waiting = first.submit([np.zeros((40, 40, 3), np.float32)], frozenset())  # runs alone, held
        while batcher.depth():
            await asyncio.sleep(0.01)
        images = ([np.full((40, 40, 3), i, np.float32) for i in range(6)] + [np.zeros((50, 40, 3), np.float32)] * 2
                  + [np.zeros((40, 40, 3), np.uint8)] * 3)
        ticket = batcher.reserve(len(images))
        futures = ticket.submit(images, frozenset())
        recorder.gate.set()
        results = await asyncio.gather(*waiting, *futures)
        ticket.close()
        first.close()
        return results

    results = asyncio.run(main())
    batcher.close()
    assert [r["features"] for r in results[1:7]] == [float(i) for i in range(6)]
    # oldest first; each batch takes the queued images of the oldest one's shape and dtype
    assert recorder.batches == [(1, (40, 40), np.float32), (4, (40, 40), np.float32), (2, (40, 40), np.float32),
                                (2, (50, 40), np.float32), (3, (40, 40), np.uint8)]


def test_a_full_queue_refuses_with_retry_after_and_slots_come_back():
    recorder = Recorder()
    recorder.gate.clear()
    batcher = Batcher("m", recorder, max_batch=1, timeout_s=0.0, capacity=3)

    async def main():
        tickets = [batcher.reserve(1) for _ in range(3)]
        with pytest.raises(ServeError) as refused:
            batcher.reserve(1)
        assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
        assert "queue" in refused.value.message
        with pytest.raises(ServeError) as too_many:
            batcher.reserve(4)
        assert too_many.value.status == 413
        tickets[0].close()  # a request that gave up before queueing gives its slot back
        tickets[0] = batcher.reserve(1)
        futures = [f for t in tickets for f in t.submit([np.zeros((40, 40, 3), np.float32)], frozenset())]
        while batcher.depth() > 2:  # the worker took one image and is held in the model
            await asyncio.sleep(0.01)
        tickets[2].close()  # a request that timed out while queued: its image leaves the queue
        assert batcher.depth() == 1
        batcher.reserve(1).close()
        recorder.gate.set()
        done = await asyncio.gather(*futures[:2])
        for t in tickets:
            t.close()
        return done

    assert len(asyncio.run(main())) == 2
    batcher.close()
    assert [b[0] for b in recorder.batches] == [1, 1]


def test_close_runs_what_is_queued_then_refuses():
    recorder = Recorder()
    batcher = Batcher("m", recorder, max_batch=8, timeout_s=60.0, capacity=8)

    async def main():
        ticket = batcher.reserve(3)
        futures = ticket.submit([np.zeros((40, 40, 3), np.float32)] * 3, frozenset())
        closing = asyncio.get_running_loop().run_in_executor(None, batcher.close)
        results = await asyncio.gather(*futures)  # not after the 60 s batch timeout: close flushes
        await closing
        return results

    assert len(asyncio.run(main())) == 3
    assert recorder.batches == [(3, (40, 40), np.float32)]
    with pytest.raises(ServeError) as refused:
        batcher.reserve(1)
    assert refused.value.status == 503
