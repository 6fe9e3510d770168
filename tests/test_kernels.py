"""Tier 1: every Numba kernel against its NumPy reference, over odd sizes, both strides, and
channel counts that are and are not multiples of 8."""

import numpy as np
import pytest

from mobilenet_np import spec
from mobilenet_np.kernels import reference as ref

pytest.importorskip("numba", reason="Numba is not installed")
from mobilenet_np.kernels import depthwise, gemm, plan, stem  # noqa: E402

# widths cover every tail of the depthwise 4-pixel tiles (out widths 1..3 past a multiple of 4)
SIZES = [(1, 7, 5), (2, 16, 16), (3, 33, 31), (1, 2, 3), (1, 40, 29), (1, 6, 10), (2, 3, 3)]
CHANNELS = [3, 8, 13, 16, 40]


def _geometry(h, w, k, s):
    oh, top, bottom = spec.same_padding(h, k, s)
    ow, left, right = spec.same_padding(w, k, s)
    return (oh, ow), (top, bottom, left, right)


@pytest.mark.parametrize("n, h, w", SIZES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("c", CHANNELS)
@pytest.mark.parametrize("serial", [False, True])
def test_depthwise(rng, n, h, w, stride, c, serial):
    x = rng.standard_normal((n, h, w, c), dtype=np.float32)
    wt = rng.standard_normal((3, 3, c, 1), dtype=np.float32)
    bias = rng.standard_normal(c, dtype=np.float32)
    out_hw, pad = _geometry(h, w, 3, stride)
    for relu6 in (False, True):
        expected = ref.depthwise_conv2d(x, wt, stride, pad, out_hw) + bias
        expected = ref.relu6(expected) if relu6 else expected
        got = np.empty((n, *out_hw, c), np.float32)
        depthwise.depthwise_conv2d(x, np.ascontiguousarray(wt[:, :, :, 0]), bias, stride, pad[0], pad[2], relu6, got,
                              serial=serial)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, h, w", SIZES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("c_in, c_out", [(3, 16), (3, 13), (8, 8), (13, 24), (3, 32)])
@pytest.mark.parametrize("serial", [False, True])
def test_full_conv(rng, n, h, w, stride, c_in, c_out, serial):
    x = rng.standard_normal((n, h, w, c_in), dtype=np.float32)
    wt = rng.standard_normal((3, 3, c_in, c_out), dtype=np.float32)
    bias = rng.standard_normal(c_out, dtype=np.float32)
    out_hw, pad = _geometry(h, w, 3, stride)
    expected = ref.relu6(ref.conv2d(x, wt, stride, pad, out_hw) + bias)
    got = np.empty((n, *out_hw, c_out), np.float32)
    stem.conv2d(x, gemm.pack_pointwise(wt.reshape(-1, c_out)), gemm.pad_bias(bias), stem.stem_taps(3, w, c_in),
                3, stride, pad[0], pad[2], True, got, serial=serial)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-5)


# pixel counts for every way a layer ends: inside the first 12-pixel group (1-11), whole groups
# (12, 24, 256 = 21 x 12 + 4), 1-3 pixels past 6-pixel tiles (13, 25, 37: paired _tile3w) and 4-5
# past them (20, 29: a last 6-pixel tile ending at the last pixel)
@pytest.mark.parametrize("pixels", [1, 5, 6, 7, 9, 11, 12, 13, 20, 24, 25, 29, 37, 256])
@pytest.mark.parametrize("c_in, c_out", [(8, 48), (13, 7), (48, 16), (96, 40), (160, 1280), (27, 8), (5, 23)])
@pytest.mark.parametrize("relu6, residual", [(True, False), (False, True), (False, False), (True, True)])
@pytest.mark.parametrize("serial", [False, True])
def test_pointwise(rng, pixels, c_in, c_out, relu6, residual, serial):
    x = rng.standard_normal((pixels, c_in), dtype=np.float32)
    wt = rng.standard_normal((1, 1, c_in, c_out), dtype=np.float32)
    bias = rng.standard_normal(c_out, dtype=np.float32)
    res = rng.standard_normal((pixels, c_out), dtype=np.float32)
    expected = ref.pointwise_conv2d(x, wt) + bias + (res if residual else 0)
    expected = ref.relu6(expected) if relu6 else expected
    got = np.empty((pixels, c_out), np.float32)
    gemm.pointwise_conv2d(x, gemm.pack_pointwise(wt[0, 0]), gemm.pad_bias(bias), relu6, res, residual, got,
                          serial=serial)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4 * np.sqrt(c_in / 8))


@pytest.mark.parametrize("pixels", [6, 13, 20])
@pytest.mark.parametrize("extra", [0, 5])
@pytest.mark.parametrize("relu6, residual", [(True, False), (False, True)])
@pytest.mark.parametrize("serial", [False, True])
def test_pointwise_in_k_blocks_counts_every_input_channel_once(rng, pixels, extra, relu6, residual, serial):
    """A panel-major layer (more output channels than pixels) with more than ``gemm.K_BLOCK``
    input channels: with AVX2 its whole 6-pixel tiles run K_BLOCK channels at a time
    (``_tile6k``), carrying the partial sums in the output, and the rest (a partial last panel,
    the last pixels) in one pass; with AVX-512 every tile runs in one pass.  Small integers make
    every float32 sum exact whatever its order, so the result must equal the NumPy one exactly:
    no input channel skipped or counted twice, the activation and the residual applied once, at
    the end.  ``extra`` input channels past whole blocks."""
    c_in, c_out = 2 * gemm.K_BLOCK + extra, 2 * gemm.PANEL + 8
    x = rng.integers(-3, 4, (pixels, c_in)).astype(np.float32)
    wt = rng.integers(-3, 4, (1, 1, c_in, c_out)).astype(np.float32)
    bias = rng.integers(-50, 50, c_out).astype(np.float32)
    res = rng.integers(-50, 50, (pixels, c_out)).astype(np.float32)
    expected = x.astype(np.float64) @ wt[0, 0].astype(np.float64) + bias + (res if residual else 0)
    expected = np.clip(expected, 0, 6) if relu6 else expected
    got = np.empty((pixels, c_out), np.float32)
    gemm.pointwise_conv2d(x, gemm.pack_pointwise(wt[0, 0]), gemm.pad_bias(bias), relu6, res, residual, got,
                          serial=serial)
    assert np.array_equal(got, expected.astype(np.float32))
    if not relu6:
        assert len(np.unique(got)) > pixels     # the sums are not all clamped or equal


@pytest.mark.parametrize("n, h, w", SIZES)
@pytest.mark.parametrize("c", CHANNELS)
def test_global_mean(rng, n, h, w, c):
    x = rng.uniform(0, 6, (n, h, w, c)).astype(np.float32)
    got = np.empty((n, c), np.float32)
    plan.global_mean(x, got)
    np.testing.assert_allclose(got, ref.global_mean(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n, h, w", SIZES)
def test_global_mean_has_the_bytes_of_the_compiled_pool(rng, n, h, w):
    """The NumPy pool gives the bytes of ``run_plan``'s compiled one (``plan.pool_tasks``), also where
    the order of the float32 sums shows (values of very different sizes) and for signed zeros."""
    x = (rng.standard_normal((n, h, w, 24)) * 10.0 ** rng.integers(-6, 7, (n, h, w, 24))).astype(np.float32)
    x[..., :4] = -0.0                        # all negative zeros: +0.0 + -0.0 = +0.0
    x[..., 4:8] = rng.choice(np.float32([0.0, -0.0]), (n, h, w, 4))
    x[..., 8] = np.float32(1e30)
    x[:, -1, -1, 8] = np.float32(-1e30)      # cancels last: the sums' order decides the result
    compiled = np.empty((n, 24), np.float32)
    plan.pool_tasks(x.reshape(-1), 0, n, h * w, 24, compiled)       # 24 channels: one task per image
    got = plan.global_mean(x)
    assert np.array_equal(got.view(np.uint32), compiled.view(np.uint32))


@pytest.mark.parametrize("arch, alpha, size", [("mobilenet_v1", 0.25, 64), ("mobilenet_v2", 0.35, 96)])
def test_global_mean_of_the_last_layer_is_the_plans_pool(rng, arch, alpha, size):
    """The pool of a forward pass's last output (the endpoints path, calibration) equals the
    features ``run_plan`` pools itself, bit for bit."""
    from mobilenet_np.forward.engine import NumbaBackend
    architecture = spec.build(arch, alpha)
    tensors = {name: rng.standard_normal(shape).astype(np.float32) * np.float32(0.2)
               for name, shape in architecture.variables(0, folded=True).items()}
    backend = NumbaBackend(architecture, tensors, folded=True, epsilon=spec.TF_BATCHNORM_EPSILON)
    geo = spec.geometry(architecture, (size, size))
    x = rng.random((3, size, size, 3), dtype=np.float32)
    pooled = backend.global_mean(backend.run(geo, x, parallel=False))
    assert np.array_equal(pooled.view(np.uint32), backend.features(geo, x).view(np.uint32))


def test_fold_batch_norm_matches_unfolded(rng):
    """Folding BN into the kernel equals conv -> BN up to float32 reordering (SPEC pitfall 12)."""
    x = rng.standard_normal((2, 9, 9, 8), dtype=np.float32)
    w = rng.standard_normal((3, 3, 8, 1), dtype=np.float32)
    gamma, var = (rng.uniform(0.5, 1.5, 8).astype(np.float32) for _ in range(2))
    beta, mean = (rng.standard_normal(8, dtype=np.float32) for _ in range(2))
    out_hw, pad = _geometry(9, 9, 3, 1)
    unfolded = ref.batch_norm(ref.depthwise_conv2d(x, w, 1, pad, out_hw), gamma, beta, mean, var, 1e-3)
    wf, bf = ref.fold_batch_norm(w, gamma, beta, mean, var, 1e-3, depthwise=True)
    folded = ref.depthwise_conv2d(x, wf, 1, pad, out_hw) + bf
    np.testing.assert_allclose(folded, unfolded, rtol=1e-5, atol=1e-5)


def test_reference_is_cross_correlation():
    """TF convolution does not flip the kernel (SPEC pitfall 22): a one-hot kernel at tap
    (0, 0) reads the pixel up-left of the output position."""
    x = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    w = np.zeros((3, 3, 1, 1), np.float32)
    w[0, 0, 0, 0] = 1
    out = ref.conv2d(x, w, 1, (1, 1, 1, 1), (5, 5))
    assert out[0, 2, 2, 0] == x[0, 1, 1, 0]



def test_compile_layer_kernels_compiles_each_for_its_declared_signature():
    """``mobilenet-np warmup``'s second process compiles some layer kernels on their own
    (``plan.compile_layer_kernels``); each gets exactly the signature ``run_plan`` calls it with."""
    plan.compile_layer_kernels(["input_rows", "stem_tasks"])
    for name in ("input_rows", "stem_tasks"):
        dispatcher, signature = plan.LAYER_KERNELS[name]
        assert tuple(signature) in dispatcher.overloads, name
    assert list(plan.LAYER_KERNELS) == ["pointwise_tiles", "depthwise_rows", "stem_tasks", "input_rows"]
    with pytest.raises(KeyError):
        plan.compile_layer_kernels(["no_such_kernel"])


def _small_v2(rng, threads: int, batch: int):
    """A seeded V2 0.35 engine on 40 x 40 images, its geometry and a batch (skips when Numba has
    fewer than ``threads`` threads)."""
    import numba
    from mobilenet_np.forward.engine import NumbaBackend
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"Numba has {numba.config.NUMBA_NUM_THREADS} thread(s) here")
    architecture = spec.build("mobilenet_v2", 0.35)
    tensors = {name: rng.standard_normal(shape).astype(np.float32) * np.float32(0.2)
               for name, shape in architecture.variables(0, folded=True).items()}
    backend = NumbaBackend(architecture, tensors, folded=True, epsilon=spec.TF_BATCHNORM_EPSILON)
    return architecture, backend, spec.geometry(architecture, (40, 40)), rng.random((batch, 40, 40, 3), np.float32)


@pytest.mark.parametrize("threads, parts", [(1, 2), (1, 3), (2, 2), (2, 3)])
@pytest.mark.parametrize("batch, per_pass", [(1, 1), (5, 2)])
def test_shared_passes_give_the_one_thread_bytes_with_any_threads_turning_up(rng, threads, parts, batch, per_pass):
    """``run_plan`` with ``parts`` > 1 shares every layer's tasks (and the pool) out to the
    threads of one parallel region (``plan.shared_pass``).  Whatever number of threads actually
    runs the parts (fewer than ``parts``: one thread then takes everything, in turn), the
    features are the bytes of the one-thread loop, over several passes too."""
    import numba
    architecture, backend, geo, x = _small_v2(rng, threads, batch)
    one, shared = (np.full((batch, architecture.num_features), np.nan, np.float32) for _ in range(2))
    backend._features_into(geo, x, 0, batch, per_pass, one, False, 1)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        for _ in range(3):          # the counters are reused: each call starts them again
            backend._features_into(geo, x, 0, batch, per_pass, shared, True, parts)
            assert np.array_equal(shared.view(np.uint32), one.view(np.uint32))
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("threads, parts", [(1, 2), (2, 2), (2, 3)])
@pytest.mark.parametrize("batch, per_pass", [(1, 1), (9, 2), (32, 4)])
def test_whole_chunks_give_the_one_thread_bytes_with_any_threads_turning_up(rng, threads, parts, batch, per_pass):
    """``run_plan`` with ``whole`` chunks hands the images out a chunk at a time to the threads
    of one parallel region (``plan.chunk_pass``), each on its own buffers.  Whatever number of
    threads actually runs the parts (one thread alone takes every chunk and must not wait for a
    part that would run after it), the features are the bytes of the one-thread loop, and every
    image is done once: a chunk's images get no NaN left from the output's fill."""
    import numba
    architecture, backend, geo, x = _small_v2(rng, threads, batch)
    one, whole = (np.full((batch, architecture.num_features), np.nan, np.float32) for _ in range(2))
    backend._features_into(geo, x, 0, batch, per_pass, one, False, 1)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        for _ in range(3):          # the counters are reused: each call starts them again
            whole[:] = np.nan
            backend._features_shared(geo, x, per_pass, whole, parts)
            assert np.array_equal(whole.view(np.uint32), one.view(np.uint32))
    finally:
        numba.set_num_threads(before)


def test_chunk_starts_shrink_towards_the_end_and_cover_the_batch():
    """The chunks of ``plan._chunk_starts``: consecutive, at most ``per_pass`` images, none
    empty, the batch covered, smaller towards its end (so that threads finish together)."""
    from mobilenet_np.kernels import plan
    for n, per_pass, parts in [(32, 4, 2), (1, 1, 2), (7, 8, 3), (100, 2, 2)]:
        counters = np.full(plan.chunk_counters_size(n), -1, np.int64)
        plan._chunk_starts.py_func(counters, n, per_pass, parts)
        chunks = counters[1]
        starts = counters[plan.CHUNKS_AT:plan.CHUNKS_AT + chunks + 1]
        sizes = np.diff(starts)
        assert starts[0] == 0 and starts[-1] == n and counters[0] == 0
        assert (sizes >= 1).all() and (sizes <= per_pass).all() and (np.diff(sizes) <= 0).all()
        if n >= 4 * per_pass * parts:
            assert sizes[0] == per_pass and sizes[-1] == 1


def test_sync_add_is_atomic_and_returns_the_value_before():
    """``sync.add`` from two threads at once loses no increment, and hands out each value once."""
    import numba
    from mobilenet_np.kernels import sync

    @numba.njit(parallel=True)
    def count(counters, seen, steps):
        for part in numba.prange(2):
            for _ in range(steps):
                old = sync.add(counters, 0, 1)
                seen[old] += 1
        return sync.load(counters, 0)

    counters, seen = np.zeros(8, np.int64), np.zeros(20000, np.int64)
    assert count(counters, seen, 10000) == 20000
    assert (seen == 1).all()


def test_fma_peak_loop_equals_its_numpy_twin(rng):
    from mobilenet_np.kernels.float_peak import ACCUMULATORS, fma_loop, fma_loop_numpy
    from mobilenet_np.kernels.simd import LANES

    w = rng.standard_normal(3 * LANES).astype(np.float32)
    out = np.zeros(ACCUMULATORS * LANES, np.float32)
    fma_loop(w, 37, out)
    np.testing.assert_array_equal(out, fma_loop_numpy(w, 37))
    assert np.isfinite(out).all() and (out != np.tile(w[:LANES], ACCUMULATORS)).any()
