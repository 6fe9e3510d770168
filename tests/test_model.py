"""The model API: both backends agree, batching does not change results, bad input is refused,
endpoints and summary are right, and weights files round-trip."""

import subprocess
import sys

import numpy as np
import pytest

import mobilenet_np as mnp
from mobilenet_np import spec
from mobilenet_np.errors import ArchitectureError, UnsupportedFormatError
from mobilenet_np.model import MobileNet

CASES = [("mobilenet_v1", 0.5, 160), ("mobilenet_v2", 0.5, 96), ("mobilenet_v1", 0.25, (131, 97)),
         ("mobilenet_v2", 0.35, (33, 45))]


def _pair(name, multiplier, size):
    fast = mnp.build(name, multiplier, size, seed=3)
    slow = MobileNet(fast.arch, fast.tensors, num_classes=1001, folded=False, input_size=fast.input_size,
                     backend="numpy")
    return fast, slow


@pytest.mark.parametrize("name, multiplier, size", CASES)
def test_backends_agree(rng, name, multiplier, size):
    fast, slow = _pair(name, multiplier, size)
    x = rng.random((2, *fast.input_size, 3), dtype=np.float32)
    a, b = fast(x), slow(x)
    assert a.shape == (2, fast.num_features) and a.dtype == np.float32
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a, b, atol=2e-5 * scale, rtol=1e-4)
    names = ["layer_7/depthwise_output", "layer_19"] if name == "mobilenet_v2" else ["Conv2d_5_pointwise"]
    ea, eb = fast.endpoints(x, names), slow.endpoints(x, names)
    for n in names:
        np.testing.assert_allclose(ea[n], eb[n], atol=2e-5 * max(1.0, float(np.abs(eb[n]).max())), rtol=1e-4)


@pytest.mark.parametrize("name, multiplier, size", CASES[:2])
def test_batch_invariance_and_repeatability(rng, name, multiplier, size):
    model = mnp.build(name, multiplier, size, seed=1)
    batch = rng.random((33, *model.input_size, 3), dtype=np.float32)
    alone = model(batch[5:6])
    together = model(batch)
    assert np.abs(together[5] - alone[0]).max() <= 1e-6
    np.testing.assert_array_equal(model(batch), together)


def test_uint8_is_scaled_like_tensorflow(rng):
    model = mnp.build("mobilenet_v2", 0.35, 32, seed=0)
    img = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    as_float = img.astype(np.float32) * np.float32(1 / 255)     # multiply, not divide (pitfall 16)
    np.testing.assert_array_equal(model(img), model(as_float))


@pytest.mark.parametrize("bad, message", [
    (np.zeros((32, 32, 3), np.float32), "batch"),
    (np.zeros((1, 32, 32, 4), np.float32), "3 \\(RGB\\) channels"),
    (np.zeros((1, 31, 40, 3), np.float32), "minimum"),
    (np.zeros((1, 32, 32, 3), np.int32), "dtype"),
    (np.full((1, 32, 32, 3), np.nan, np.float32), "NaN"),
    (np.full((1, 32, 32, 3), np.inf, np.float32), "infinite"),
    (np.zeros((0, 32, 32, 3), np.float32), "empty"),
])
def test_bad_input_is_refused(bad, message):
    model = mnp.build("mobilenet_v2", 0.35, 32)
    with pytest.raises(ValueError, match=message):
        model(bad)


def test_endpoints_shapes_and_names(rng):
    model = mnp.build("mobilenet_v2", 0.5, 96)
    x = rng.random((1, 96, 96, 3), dtype=np.float32)
    ends = model.endpoints(x)
    assert list(ends) == model.arch.endpoint_names()
    assert ends["layer_18/output"].shape == (1, 3, 3, 160)
    assert ends["global_pool"].shape == (1, 1, 1, 1280)
    np.testing.assert_array_equal(ends["layer_18"], ends["layer_18/output"])
    np.testing.assert_allclose(ends["global_pool"][:, 0, 0], model(x), atol=1e-6)
    np.testing.assert_allclose(ends["Logits"], model.logits(x), atol=1e-6)
    np.testing.assert_allclose(ends["Predictions"].sum(axis=1), 1.0, atol=1e-5)
    assert ends["layer_19"].min() >= 0 and ends["layer_19"].max() <= 6
    with pytest.raises(KeyError, match="layer_20"):
        model.endpoints(x, ["layer_20"])


def test_v1_endpoint_is_post_relu6(rng):
    model = mnp.build("mobilenet_v1", 0.5, 160)
    ends = model.endpoints(rng.random((1, 160, 160, 3), dtype=np.float32), ["Conv2d_13_pointwise"])
    assert ends["Conv2d_13_pointwise"].shape == (1, 5, 5, 512)
    assert 0 <= ends["Conv2d_13_pointwise"].min() and ends["Conv2d_13_pointwise"].max() <= 6


def test_summary_table():
    model = mnp.build("mobilenet_v1", 0.5, 160)
    rows = model.summary_rows()
    assert sum(r["macs"] for r in rows) == 76_012_800
    text = model.summary()
    assert "Conv2d_13_pointwise" in text and "76,012,800 MACs" in text and "512,512 MACs" in text


def test_save_and_load_round_trip(tmp_path, rng):
    model = mnp.build("mobilenet_v2", 0.5, 96, num_classes=1001, seed=7)
    path = tmp_path / "m.h5"
    model.save(path)
    again = mnp.load(path)
    x = rng.random((2, 96, 96, 3), dtype=np.float32)
    np.testing.assert_array_equal(again(x), model(x))
    assert again.num_classes == 1001 and again.labels_offset == 1 and again.input_size == (96, 96)
    assert len(again.weights_sha256) == 64


def test_load_refuses_newer_format_and_wrong_shapes(tmp_path):
    import h5py
    model = mnp.build("mobilenet_v1", 0.25, 128, num_classes=0)
    path = tmp_path / "m.h5"
    model.save(path)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 3          # 2 is the quantized format (tests/test_weights_v2.py)
    with pytest.raises(UnsupportedFormatError, match=r"m\.h5.*version 3"):
        mnp.load(path)
    model.save(path)
    with h5py.File(path, "a") as f:
        del f["MobilenetV1/Conv2d_3_pointwise/weights"]
        f["MobilenetV1/Conv2d_3_pointwise/weights"] = np.zeros((1, 1, 16, 17), np.float32)
    with pytest.raises(ArchitectureError, match=r"Conv2d_3_pointwise/weights has shape \[1, 1, 16, 17\]"):
        mnp.load(path)


def test_logits_without_classifier_is_an_error(rng):
    model = mnp.build("mobilenet_v2", 0.35, 32, num_classes=0)
    with pytest.raises(ValueError, match="no classifier"):
        model.logits(rng.random((1, 32, 32, 3), dtype=np.float32))


def test_threads_argument_restores_settings(rng):
    import numba
    model = mnp.build("mobilenet_v2", 0.35, 32)
    before = numba.get_num_threads()
    x = rng.random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_array_equal(model(x, threads=1), model(x))
    assert numba.get_num_threads() == before


@pytest.mark.parametrize("batch", [1, 7, 8, 33])
def test_every_thread_path_gives_the_same_features(rng, batch):
    """One thread (serial kernels), 2 threads splitting each layer (small batches) and 2 worker
    threads taking chunks of the batch (from 4 images per thread) must agree exactly: every path
    runs the same per-tile arithmetic."""
    model = mnp.build("mobilenet_v1", 0.25, 64, num_classes=0, seed=3)
    x = rng.random((batch, 64, 64, 3), dtype=np.float32)
    one = model(x, threads=1)
    np.testing.assert_array_equal(model(x, threads=2), one)
    reference = mnp.MobileNet(model.arch, model.tensors, num_classes=0, folded=False, input_size=(64, 64),
                              backend="numpy")
    np.testing.assert_allclose(one, reference(x), rtol=1e-4, atol=1e-4)


class _FakeClock:
    """A clock that moves only when told: the tests below make one way look slow without timing."""
    now = 0.0

    def __call__(self):
        return self.now


def _timed_ways(clock, cost, taken):
    """Ways i = 0, 1, ... that each append i to ``taken``, move ``clock`` on by ``cost[i]`` (read
    at the call, so a test can change it) and return i."""
    def way(i):
        def run():
            taken.append(i)
            clock.now += cost[i]
            return i
        return run
    return tuple(way(i) for i in range(len(cost)))


def test_chooser_takes_the_faster_way_and_tries_the_other_again():
    from mobilenet_np.forward.choice import PROBE_MOST, Chooser
    clock = _FakeClock()
    chooser = Chooser(clock)
    cost = [1.0, 0.01]          # way 0 slow, way 1 fast
    taken = []
    ways = _timed_ways(clock, cost, taken)
    results = [chooser.run("k", ways) for _ in range(40)]
    assert results == taken                      # each call returns the result of the way it ran
    assert taken[:2] == [0, 1] and chooser.chosen("k") == 1
    assert 0 < taken[2:].count(0) <= 3          # way 0 still tried now and then, rarely
    cost.reverse()                               # the load turns: way 1 is now the slow one
    taken.clear()
    for _ in range(2 * PROBE_MOST):
        chooser.run("k", ways)
    assert chooser.chosen("k") == 0 and taken[-16:].count(1) <= 1    # at most one try of way 1
    assert chooser.chosen("other key") == 0      # a record per key, starting with way 0


def test_chooser_times_only_back_to_back_calls():
    """A call that comes more than IDLE after the thread's previous one takes the chosen way and
    is not timed (waking the threads of a parallel way is a cost of the pause): however slow it
    is, and however many such calls come, the choice made on back-to-back calls stands."""
    from mobilenet_np.forward.choice import IDLE, Chooser
    clock = _FakeClock()
    chooser = Chooser(clock)
    cost = [1.0, 0.01]
    taken = []
    ways = _timed_ways(clock, cost, taken)
    for _ in range(6):
        chooser.run("k", ways)
    assert chooser.chosen("k") == 1
    record = chooser._local.records["k"]
    counts, calls = list(record.counts), record.calls
    cost[1] = 50.0                  # the chosen way is very slow after every pause
    taken.clear()
    for _ in range(40):
        clock.now += 2 * IDLE       # a pause before each call
        assert chooser.run("k", ways) == 1
    assert taken == [1] * 40 and chooser.chosen("k") == 1
    assert record.counts == counts and record.calls == calls        # none of them timed
    for _ in range(4):              # back-to-back calls are timed again, and the choice turns
        chooser.run("k", ways)
    assert chooser.chosen("k") == 0
    # A try of a threaded way right after a call of way 0 (its threads asleep) is not timed and
    # is made again on the next call: the tries of way 1 come in pairs, and only the second one
    # counts.
    cost[1] = 2.0
    taken.clear()
    counts = list(record.counts)
    for _ in range(200):
        chooser.run("k", ways)
    runs = "".join(map(str, taken)).replace("0", " ").split()
    assert runs and all(len(r) == 2 for r in runs)
    assert record.counts[1] - counts[1] == len(runs) and chooser.chosen("k") == 0


@pytest.mark.parametrize("fast", [0, 1, 2])
def test_adaptive_small_batches_give_the_same_features_every_way(rng, monkeypatch, fast):
    """Small batches on 2 threads run on the calling thread (way 0), split each layer (way 1) or
    share the images out to the threads of one parallel region (way 2), whichever has been faster
    lately: make one look fast and the others slow, and the model must take it and still give
    the 1-thread features exactly."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has one thread here: no choice to make")
    model = mnp.build("mobilenet_v1", 0.25, 64, num_classes=0, seed=3)
    backend = model.backend
    clock = backend._choice.clock = _FakeClock()
    real, real_shared = backend._features_into, backend._features_shared

    def timed(geo, x, start, stop, chunk, out, parallel, threads):
        clock.now += 0.001 if (1 if parallel else 0) == fast else 1.0
        return real(geo, x, start, stop, chunk, out, parallel, threads)

    def timed_shared(geo, x, chunk, out, threads):
        clock.now += 0.001 if fast == 2 else 1.0
        return real_shared(geo, x, chunk, out, threads)

    monkeypatch.setattr(backend, "_features_into", timed)
    monkeypatch.setattr(backend, "_features_shared", timed_shared)
    x = rng.random((3, 64, 64, 3), dtype=np.float32)
    one = model(x, threads=1)
    for _ in range(20):
        np.testing.assert_array_equal(model(x, threads=2), one)
    assert backend._choice.chosen(((64, 64), 3, 2)) == fast
    backend.adaptive = False                     # the old behaviour: always split
    np.testing.assert_array_equal(model(x, threads=2), one)


@pytest.mark.parametrize("fast", [0, 1])
def test_adaptive_large_batches_give_the_same_features_either_way(rng, monkeypatch, fast):
    """Batches of PARALLEL_SHARES_FROM images per thread or more go out a chunk at a time, to the
    threads of one parallel region (way 0) or to the Python pool's (way 1), whichever has been
    faster lately: make one look fast, and the model must take it and give the 1-thread bytes."""
    import threading

    import numba
    from mobilenet_np.forward.engine import PARALLEL_SHARES_FROM
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has one thread here: no choice to make")
    model = mnp.build("mobilenet_v1", 0.25, 64, num_classes=0, seed=3)
    backend = model.backend
    clock = backend._choice.clock = _FakeClock()
    real_shared, real_pooled = backend._features_shared, backend._features_pooled
    pool_threads = set()

    def timed_shared(*args):
        clock.now += 0.001 if fast == 0 else 1.0
        return real_shared(*args)

    def timed_pooled(*args):
        clock.now += 0.001 if fast == 1 else 1.0
        return real_pooled(*args)

    real_into = backend._features_into

    def into(*args):
        pool_threads.add(threading.current_thread() is not threading.main_thread())
        return real_into(*args)

    monkeypatch.setattr(backend, "_features_shared", timed_shared)
    monkeypatch.setattr(backend, "_features_pooled", timed_pooled)
    monkeypatch.setattr(backend, "_features_into", into)
    n = 2 * PARALLEL_SHARES_FROM + 1
    x = rng.random((n, 64, 64, 3), dtype=np.float32)
    one = model(x, threads=1)
    for _ in range(20):
        np.testing.assert_array_equal(model(x, threads=2), one)
    assert backend._choice.chosen(((64, 64), n, 2, "whole")) == fast
    assert True in pool_threads         # the pool's way ran its chunks on its worker threads


def test_a_pool_handed_out_stays_usable_when_another_size_is_asked_for():
    """A thread that got the chunk workers' pool may submit to it after another thread asked for
    a pool of another size (it used to be shut down then, and the submit raised)."""
    model = mnp.build("mobilenet_v1", 0.25, 64, num_classes=0, seed=3)
    backend = model.backend
    if not hasattr(backend, "_thread_pool"):
        pytest.skip(f"the {backend.name} backend has no worker pool")
    two = backend._thread_pool(2)
    assert backend._thread_pool(3) is not two
    assert two.submit(sum, [1, 2]).result() == 3 and backend._thread_pool(2) is two


@pytest.mark.parametrize("threads", [1, 2])
def test_warm_calls_reuse_the_workspace(rng, threads):
    """Steady state allocates nothing per layer: a second call of the same shape runs in the
    buffers of the first, and all it allocates is the output and the input check's mask (the
    layers' outputs together are ~100x that)."""
    import tracemalloc
    model = mnp.build("mobilenet_v2", 0.5, 96, num_classes=0, seed=3)
    x = rng.random((5, 96, 96, 3), dtype=np.float32)
    first = model(x, threads=threads)
    buffers = model.backend._plan(model._geometry((96, 96)), 5)[2]
    tracemalloc.start()
    try:
        second = model(x, threads=threads)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(second, first)
    assert model.backend._plan(model._geometry((96, 96)), 5)[2] is buffers
    activations = sum(g.out_elements for g in model._geometry((96, 96))) * 4 * x.shape[0]
    allowed = x.size + second.nbytes + (64 << 10)       # isfinite mask, output, Python objects
    assert peak < allowed < activations / 50, (peak, allowed, activations)


def test_reference_backend_imports_without_numba():
    code = ("import sys; sys.modules['numba'] = None\n"
            "import numpy as np, mobilenet_np as mnp\n"
            "m = mnp.build('mobilenet_v2', 0.35, 32, backend='numpy')\n"
            "print(m(np.full((1, 32, 32, 3), 0.5, np.float32)).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(1, 1280)"


def test_loading_and_calling_a_model_imports_neither_pillow_nor_threadpoolctl(tmp_path):
    """Every start pays for what it imports: Pillow (~25 ms) is for decoding images and
    threadpoolctl (~13 ms) for limiting BLAS, which the Numba engine never calls.  Both are made
    unimportable here, so any import of them on this path fails the call."""
    path = tmp_path / "m.h5"
    mnp.build("mobilenet_v2", 0.35, 32, num_classes=0, seed=1).save(path)
    code = ("import sys; sys.modules['PIL'] = None; sys.modules['threadpoolctl'] = None\n"
            "import numpy as np, mobilenet_np as mnp\n"
            f"m = mnp.load({str(path)!r})\n"
            "f = m(np.full((2, 32, 32, 3), 200, np.uint8), threads=1)\n"
            "print(m.backend.name, f.shape, m.data_config.preset)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["numba", "(2,", "1280)", "hub"]


def test_random_weights_cover_every_variable():
    arch = spec.mobilenet_v1(0.5)
    model = mnp.build("mobilenet_v1", 0.5, 160, num_classes=1001)
    assert set(model.tensors) == set(arch.variables(1001))


def test_threads_calling_one_model_at_once_get_their_own_results(rng):
    """A service may call one model from several threads: buffers are per thread."""
    from concurrent.futures import ThreadPoolExecutor
    model = mnp.build("mobilenet_v2", 0.35, 64, num_classes=0, seed=2)
    batches = [rng.random((3, 64, 64, 3), dtype=np.float32) for _ in range(8)]
    expected = [model(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(model, batches * 3))
    for i, features in enumerate(got):
        np.testing.assert_array_equal(features, expected[i % len(batches)])


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_logits_do_not_depend_on_the_batch_or_on_other_callers_threads(rng, backend):
    """Issue 13: BLAS's thread count is global to the process and its order of summation
    changes with the batch size, so logits computed with it changed in the last bits when
    another thread called with another thread count.  Each row is now summed on its own."""
    import threading

    model = mnp.build("mobilenet_v2", 0.35, 96, num_classes=1001, seed=2, backend=backend)
    images = rng.random((6, 96, 96, 3), dtype=np.float32)
    alone = np.concatenate([model.logits(images[i:i + 1], threads=1) for i in range(len(images))])
    np.testing.assert_array_equal(model.logits(images, threads=2), alone)
    np.testing.assert_array_equal(model.classify(model(images)), alone)
    calls = 8 if backend == "numba" else 2
    mismatches, errors = [], []

    def caller(threads):
        try:
            for _ in range(calls):
                got = model.logits(images, threads=threads)
                if not np.array_equal(got, alone):
                    mismatches.append(float(np.abs(got - alone).max()))
        except Exception as exc:          # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=caller, args=(1 + k % 2,)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors and not mismatches, (errors, mismatches)
