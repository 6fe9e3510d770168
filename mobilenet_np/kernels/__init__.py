"""Kernels: pure functions over float32 NHWC arrays.  ``reference`` is plain NumPy (the oracle
and the readable path); the Numba-compiled path has BatchNorm folded and the bias, ReLU6 and
residual add fused into each convolution, one module per op: ``gemm`` (the 1x1 convolutions),
``depthwise``, ``stem``, and ``plan`` (the whole network in one call; plan rows in ``rows``),
over ``simd`` and ``jit``.  Kernels know nothing of layer names."""
