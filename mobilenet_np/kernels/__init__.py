"""Kernels: pure functions over float32 NHWC arrays.  ``reference`` is plain NumPy (the oracle
and the readable path); ``fast`` is the Numba-compiled path with BatchNorm folded and the
bias, ReLU6 and residual add fused into each convolution.  Kernels know nothing of layer names."""
