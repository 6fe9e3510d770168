"""The integer forward pass on the Numba integer kernels: ``QuantizedGraph`` with its
convolutions replaced by ``kernels/integer_gemm.py`` and ``kernels/integer_depthwise.py``.

``FastQuantizedGraph(path, kernels=...)`` gives the same bytes as ``QuantizedGraph(path,
kernels=...)`` for each of LiteRT's three kernel sets (the tests compare every op).  Everything
that does not depend on the input is done once, at load: weights packed in the kernels' layouts,
requantization parameters, the depthwise zero-point folding, and each op's constant inputs
(``run`` is overridden only to look those up from a list instead of re-reading the buffers).
1x1 convolutions at stride 1 go straight to the GEMM, which multiplies the input bytes as they
are (the input zero point folded into the bias at load) and writes the output bytes in place; other full convolutions (the 3x3 stem) gather their centred
patches in Numba (``integer_gemm.conv2d``); depthwise convolutions read the input bytes
directly (``integer_depthwise``).  The kernels split their rows over Numba's threads
(``numba.set_num_threads``).  With ``kernels="xnnpack"`` the ADD and the global pools run in
Numba too (``kernels/integer_add.py``); softmax is ``integer_softmax.Softmax`` (tabled exponentials,
the same bytes); reshapes and the other kernel sets' ADD and pools stay the NumPy reference ops.

Not here yet: fused layers, activations kept centred/padded between ops, a compiled whole-graph executor.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from ..kernels import integer_add as iadd
from ..kernels import integer_depthwise as idw
from ..kernels import integer_gemm as ig
from ..kernels import integer_reference as iref
from ..kernels import integer_softmax as isoft
from ..kernels import integer_xnnpack as ixnn
from .quantized import OPS, QuantizedGraph, _padding
from weights_tools import tflite_ops as tfl


class FastQuantizedGraph(QuantizedGraph):
    """``QuantizedGraph`` whose CONV_2D and DEPTHWISE_CONV_2D run on the Numba kernels."""

    def __init__(self, path, kernels: str = "reference"):
        super().__init__(path, kernels)
        self.packed = {id(op): _pack(self, op) for op in self.sub.operators
                       if op.opcode in (tfl.CONV_2D, tfl.DEPTHWISE_CONV_2D)}
        self._ops = {**OPS, tfl.CONV_2D: _conv, tfl.DEPTHWISE_CONV_2D: _conv, tfl.SOFTMAX: _softmax}
        if kernels == "xnnpack":
            self._ops.update({tfl.ADD: _add, tfl.AVERAGE_POOL_2D: _average_pool, tfl.MEAN: _mean})
        self._constants = [[self.constant(k) for k in op.inputs] for op in self.sub.operators]
        self._pool = None

    @property
    def ops(self) -> dict:
        return self._ops

    def run(self, x: np.ndarray, on_op=None, outputs=None) -> list[np.ndarray]:
        """As ``QuantizedGraph.run``, with the constant inputs read once at load.  With T > 1 Numba
        threads and a batch of at least 2T images (and no ``on_op``), the batch is split in T
        parts, each run through the whole graph on its own thread (one hand-off per call instead
        of one per layer; the kernels release the GIL; every image's bytes are the same)."""
        x = np.asarray(x)
        if x.dtype != self.dtype(self.input_index):
            raise TypeError(f"{self.file}: the input is {self.dtype(self.input_index)}, got {x.dtype}")
        outputs = self.sub.outputs if outputs is None else list(outputs)
        threads = numba.get_num_threads()
        if on_op is None and threads > 1 and len(x) >= 2 * threads:
            return self._run_split(x, threads, outputs)
        return self._run(x, on_op, outputs)

    def _run_split(self, x: np.ndarray, threads: int, outputs) -> list[np.ndarray]:
        if self._pool is None or self._pool[0] != threads:
            self._pool = (threads, ThreadPoolExecutor(threads, thread_name_prefix="mnp-int8"))
        bounds = [len(x) * i // threads for i in range(threads + 1)]
        futures = [self._pool[1].submit(self._run_one_thread, x[a:b], outputs) for a, b in zip(bounds, bounds[1:])]
        results = [f.result() for f in futures]
        return [np.concatenate(parts) for parts in zip(*results)]

    def _run_one_thread(self, x: np.ndarray, outputs) -> list[np.ndarray]:
        ig.one_thread(True)
        return self._run(x, None, outputs)

    def _run(self, x: np.ndarray, on_op, outputs) -> list[np.ndarray]:
        values = {self.input_index: x}
        ops = self.ops
        for i, op in enumerate(self.sub.operators[:self.ops_needed(outputs)]):
            inputs = [values.get(k) if c is None else c for k, c in zip(op.inputs, self._constants[i])]
            y = ops[op.opcode](self, op, self.options[i], inputs)
            values[op.outputs[0]] = y
            if on_op is not None:
                on_op(i, op, y)
        return [values[k] for k in outputs]


def _pack(graph: QuantizedGraph, op) -> dict:
    """Weights in the kernels' layouts and the requantization parameters of one conv op."""
    w = graph.constant(op.inputs[1])
    w_q = graph.tensor(op.inputs[1]).quantization
    depthwise = op.opcode == tfl.DEPTHWISE_CONV_2D
    c_out = w.shape[3] if depthwise else w.shape[0]
    bias = graph.constant(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else np.zeros(c_out, np.int32)
    in_scale, out_scale = graph.scale(op.inputs[0]), graph.scale(op.outputs[0])
    multiplier, shift = iref.conv_multipliers(in_scale, w_q.scale, out_scale,
                                              per_tensor=graph.dtype(op.inputs[0]) == np.uint8)
    out_zp, out_dtype = graph.zero_point(op.outputs[0]), graph.dtype(op.outputs[0])
    params = ig.requantization_params(bias, multiplier, shift, c_out)
    packed = {"c_out": c_out, "kernel": w.shape[1], "depthwise": depthwise, "params": params,
              "scales": ig.xnnpack_scales(ixnn.conv_scales(in_scale, w_q.scale, out_scale), c_out),
              "clamp": iref.activation_range(tfl.ACTIVATION_NAMES[op.conv_options.activation], out_scale,
                                             out_zp, out_dtype),
              "in_zp": graph.zero_point(op.inputs[0]), "out_zp": out_zp, "out_dtype": out_dtype}
    if depthwise:      # TFLite [1, kh, kw, C] -> [kh, kw, C, 1]
        packed["weights"] = idw.pack_depthwise(w.transpose(1, 2, 3, 0), w_q.zero_point)
        packed["folded"] = idw.fold_zero_point(packed["weights"], params, w.shape[1], packed["in_zp"])
    else:              # TFLite OHWI -> [kh * kw * C_in, C_out], the order of the gathered patches
        packed["weights"] = ig.pack_pairs(w.reshape(c_out, -1).T, w_q.zero_point)
        packed["folded"] = ig.fold_zero_point(packed["weights"], params, packed["in_zp"])
    return packed


def _conv(graph: FastQuantizedGraph, op, options, inputs):
    p = graph.packed[id(op)]
    x, opts = inputs[0], op.conv_options
    k, stride = p["kernel"], opts.stride_h
    geometry = p.get(x.shape[1:3])                 # (out_hw, pad) of this input size, worked out once
    if geometry is None:
        geometry = p[x.shape[1:3]] = _padding(opts.padding, x.shape[1:3], (k, k), (opts.stride_h, opts.stride_w))
    out_hw, pad = geometry
    out = np.empty((x.shape[0], *out_hw, p["c_out"]), p["out_dtype"])
    if p["depthwise"]:
        return idw.depthwise_conv2d(x, p["in_zp"], p["weights"], k, stride, pad, out_hw, p["params"], p["out_zp"],
                                    p["clamp"], out, graph.kernels, p["scales"], p["folded"])
    if (k, stride) == (1, 1):
        ig.pointwise_conv2d(x.reshape(-1, x.shape[3]), p["in_zp"], p["weights"], p["params"], p["c_out"],
                            p["out_zp"], p["clamp"], out.reshape(-1, p["c_out"]), graph.kernels, p["scales"],
                            p["folded"])
        return out
    return ig.conv2d(x, p["in_zp"], p["weights"], k, stride, pad, out_hw, p["params"], p["c_out"], p["out_zp"],
                     p["clamp"], out, graph.kernels, p["scales"], p["folded"])


def _softmax(graph: FastQuantizedGraph, op, options, inputs):
    """``integer_softmax.Softmax``, its tables made once per op: the bytes of the NumPy op."""
    fast = graph.packed.get(id(op))
    if fast is None:
        fast = graph.packed[id(op)] = isoft.Softmax(options["beta"], graph.scale(op.inputs[0]), graph.dtype(op.outputs[0]))
    return fast(inputs[0])


# --- XNNPACK's ADD and global pools in Numba (kernels="xnnpack" only; the other sets keep the NumPy ops) ---

def _add(graph: FastQuantizedGraph, op, options, inputs):
    a, b = inputs
    if a.shape != b.shape:                                  # broadcasting: the NumPy op
        return OPS[tfl.ADD](graph, op, options, inputs)
    k = op.outputs[0]
    out_scale, out_zp, out_dtype = graph.scale(k), graph.zero_point(k), graph.dtype(k)
    clamp = iref.activation_range(options["activation"], out_scale, out_zp, out_dtype)
    params = iadd.add_params(graph.scale(op.inputs[0]), graph.zero_point(op.inputs[0]),
                             graph.scale(op.inputs[1]), graph.zero_point(op.inputs[1]), out_scale)
    return iadd.add(a, b, params, clamp, out_zp, np.empty(a.shape, out_dtype))


def _global(graph: FastQuantizedGraph, op, x, out_shape):
    k = op.outputs[0]
    dtype = graph.dtype(k)
    return iadd.global_average(x, graph.scale(op.inputs[0]), graph.zero_point(op.inputs[0]), graph.scale(k),
                               graph.zero_point(k), iref.DTYPE_RANGES[np.dtype(dtype)], np.empty(out_shape, dtype))


def _average_pool(graph: FastQuantizedGraph, op, options, inputs):
    x = inputs[0]
    window, stride = (options["filter_h"], options["filter_w"]), (options["stride_h"], options["stride_w"])
    out_hw, pad = _padding(options["padding"], x.shape[1:3], window, stride)
    if out_hw != (1, 1) or pad != (0, 0, 0, 0) or x.ndim != 4:
        return OPS[tfl.AVERAGE_POOL_2D](graph, op, options, inputs)
    return _global(graph, op, x, (x.shape[0], 1, 1, x.shape[3]))


def _mean(graph: FastQuantizedGraph, op, options, inputs):
    x, axes = inputs
    if x.ndim != 4 or sorted(int(a) % 4 for a in np.reshape(axes, -1)) != [1, 2]:
        return OPS[tfl.MEAN](graph, op, options, inputs)       # which refuses it with the file's name
    keep = bool(options["keep_dims"])
    return _global(graph, op, x, (x.shape[0], 1, 1, x.shape[3]) if keep else (x.shape[0], x.shape[3]))
