"""The integer forward pass on the Numba integer kernels: ``QuantizedGraph`` with its
convolutions replaced by ``kernels/integer_gemm.py`` and ``kernels/integer_depthwise.py``.

``FastQuantizedGraph(path, kernels=...)`` gives the same bytes as ``QuantizedGraph(path,
kernels=...)`` for each of LiteRT's three kernel sets (the tests compare every op).  Everything
that does not depend on the input is done once: at load, the weights packed in the kernels'
layouts, the requantization parameters, the depthwise zero-point folding, each op's constant
inputs; per input shape (and thread), a plan of the pass (``_Plan``): each op bound to its kernel
with every argument that does not depend on the values (geometry, thread count, parameters,
scratch buffers), the intermediate outputs in preallocated buffers shared by tensors whose lives
do not overlap.  A later run is then one list of compiled calls with their argument tuples made
once (``_Plan._compiled_calls``), ~0.5 us of Python per op, where calling the op functions took
8-15 us and the bound steps 1-2: at batch 1, where a V2 0.5/96 op computes in 1-5 us, that is
most of the difference.  1x1 convolutions at stride 1 go straight to the GEMM, which multiplies
the input bytes as they are (the input zero point folded into the bias at load); other full
convolutions (the 3x3 stem) read their patches in place (``integer_conv.Conv``); depthwise
convolutions read the input bytes directly (``integer_depthwise``).  The kernels split their rows
over Numba's threads (``numba.set_num_threads``).  The ADD of same-shape inputs runs in Numba too
(``kernels/integer_add.py``: XNNPACK's with ``kernels="xnnpack"``, else LiteRT's reference one), and
with ``kernels="xnnpack"`` the global pools; softmax is ``integer_softmax.Softmax`` (tabled
exponentials, the same bytes); reshapes and the other kernel sets' pools stay the NumPy reference ops.

int8 activations run as uint8: a plan holds an int8 tensor that a kernel step reads or writes as
its bytes with the top bit flipped, uint8 = int8 + 128, and the step's zero points and clamps
+ 128.  The convolutions, the ADD and the global pool depend on values only through q - zero
point, so they give the same bytes + 128 (constant operands are not flipped: an ADD of one keeps
its zero point); the kernels then need one compiled form (uint8)
instead of two, ~4 s less of the integer kernels' cold compile.  Steps that are not
shift-invariant (the NumPy ops: the reference pools' rounding, softmax, FULLY_CONNECTED, a
broadcasting ADD) get their inputs flipped back (``_flip``,
inserted into the plan), and ``on_op`` and the outputs see int8 as always.  Not here yet: fused layers, a compiled whole-graph executor.
"""

from __future__ import annotations

import threading

import numba
import numpy as np

from .. import threads as _threads
from ..kernels import integer_add as iadd
from ..kernels import integer_calls as calls
from ..kernels import integer_conv as iconv
from ..kernels import integer_depthwise as idw
from ..kernels import integer_gemm as ig
from ..kernels import integer_reference as iref
from ..kernels import integer_softmax as isoft
from ..kernels import integer_xnnpack as ixnn
from .plan_buffers import Buffers
from .quantized import OPS, QuantizedGraph, _padding
from weights_tools import tflite_ops as tfl


PLANS_PER_THREAD = 4        # input shapes (batch sizes) whose plans and buffers a thread keeps


class FastQuantizedGraph(QuantizedGraph):
    """``QuantizedGraph`` whose CONV_2D and DEPTHWISE_CONV_2D run on the Numba kernels."""

    def __init__(self, path, kernels: str = "reference"):
        super().__init__(path, kernels)
        self.packed = {id(op): _pack(self, op) for op in self.sub.operators
                       if op.opcode in (tfl.CONV_2D, tfl.DEPTHWISE_CONV_2D)}
        self._ops = {**OPS, **{code: _single for code in _PREPARE}}
        self._constants = [[self.constant(k) for k in op.inputs] for op in self.sub.operators]
        self._pools = _threads.Pools("mnp-int8")       # for batch splits, by size
        self._local = threading.local()         # each thread's plans: their buffers are not shared

    @property
    def ops(self) -> dict:
        """Each op on its own, as ``QuantizedGraph.run`` calls them (``_single``)."""
        return self._ops

    def run(self, x: np.ndarray, on_op=None, outputs=None) -> list[np.ndarray]:
        """As ``QuantizedGraph.run``, through the plan of the input's shape (``_Plan``): the arrays
        returned, and those ``on_op`` sees, are the caller's to keep.  With T > 1 Numba threads and a
        batch of at least 2T images (and no ``on_op``), the batch is split in T parts, each run
        through the whole graph on its own thread (one hand-off per call instead of one per layer;
        the kernels release the GIL; every image's bytes are the same)."""
        x = np.asarray(x)
        if x.dtype != self.dtype(self.input_index):
            raise TypeError(f"{self.file}: the input is {self.dtype(self.input_index)}, got {x.dtype}")
        outputs = tuple(self.sub.outputs if outputs is None else outputs)
        threads = numba.get_num_threads()
        if on_op is None and threads > 1 and len(x) >= 2 * threads:
            return self._run_split(x, threads, outputs)
        return self._run(x, on_op, outputs, threads)

    def _run_split(self, x: np.ndarray, threads: int, outputs) -> list[np.ndarray]:
        pool = self._pools.get(threads)
        bounds = [len(x) * i // threads for i in range(threads + 1)]
        futures = [pool.submit(self._run_one_thread, x[a:b], outputs) for a, b in zip(bounds, bounds[1:])]
        results = [f.result() for f in futures]
        return [np.concatenate(parts) for parts in zip(*results)]

    def _run_one_thread(self, x: np.ndarray, outputs) -> list[np.ndarray]:
        calls.one_thread(True)
        return self._run(x, None, outputs, 1)

    def _run(self, x: np.ndarray, on_op, outputs, threads: int) -> list[np.ndarray]:
        x = np.ascontiguousarray(x)
        # what the plan depends on besides the shape: the kernels' split decisions (``calls.parts``)
        key = (x.shape, outputs, on_op is not None, 1 if calls.on_one_thread() else threads, calls.SERIAL_BELOW)
        plans = self._local.__dict__.setdefault("plans", {})
        plan = plans.get(key)
        if plan is None:
            if len(plans) >= PLANS_PER_THREAD:
                del plans[next(iter(plans))]                        # the oldest
            plan = plans[key] = _Plan(self, outputs, fresh=on_op is not None)
        return plan.run(x, on_op)


class _Plan:
    """One input shape's forward pass, worked out on its first run: for each op the step that its
    ``_PREPARE`` function binds (or the NumPy op, called as it is) and where its output goes.  Outputs go to preallocated buffers, a buffer passing to a later tensor once every op
    reading the earlier one has run (``fresh``: new arrays instead, for an ``on_op`` that keeps
    them); the outputs asked for are copied out of them.  A step that allocates its own result
    (the NumPy ops) may return a view of its input (RESHAPE): its inputs' buffers are then kept as
    long as its output.  Used by one thread (``FastQuantizedGraph._local``)."""

    def __init__(self, graph: FastQuantizedGraph, outputs: tuple, fresh: bool):
        self.graph, self.outputs, self.fresh = graph, outputs, fresh
        self.steps = self.calls = None

    def run(self, x: np.ndarray, on_op) -> list[np.ndarray]:
        if self.steps is None:
            return self._build(x, on_op)
        if on_op is None and self.calls is not None:
            values = dict(self.values)
            values[self.graph.input_index] = x
            for fn, args in self.calls:
                if fn is None:                    # a step whose arrays change: as below
                    step, reads, write, out = args
                    values[write] = step([values[k] for k in reads], out)
                else:
                    fn(*args)
            return self._results(values)
        values = dict(self.constants)
        values[self.graph.input_index] = x
        for i, op, step, reads, write, out in self.steps:
            y = values[write] = step([values[k] for k in reads], out)
            if on_op is not None and op is not None:
                on_op(i, op, _flip(y) if write in self.shifted else y)
        return self._results(values)

    def _results(self, values) -> list[np.ndarray]:
        return [_flip(values[k]) if k in self.shifted else values[k].copy() if copy else values[k]
                for k, copy in zip(self.outputs, self.copies)]

    def _build(self, x: np.ndarray, on_op) -> list[np.ndarray]:
        """The first run, binding each op's step as it goes (the input values give the shapes)."""
        graph = self.graph
        ops = graph.sub.operators[:graph.ops_needed(self.outputs)]
        last = {k: i for i, op in enumerate(ops) for k in op.inputs}          # the last op reading each tensor
        last.update({k: len(ops) for k in self.outputs})
        self.constants = {k: c for op, row in zip(ops, graph._constants) for k, c in zip(op.inputs, row)
                          if c is not None or k < 0}
        values = dict(self.constants)
        values[graph.input_index] = x
        buffers, held = Buffers(), {}            # held: tensor -> the buffers its value lives in
        scratch = (calls.Scratch(), calls.Scratch())    # the kernels' working memory, shared by the steps
        steps, shifted, flipped = [], set(), {}   # shifted: tensors held as uint8 + 128; flipped: their other form
        for i, op in enumerate(ops):
            prepare = _PREPARE.get(op.opcode)
            prepared = None if prepare is None else prepare(graph, op, graph.options[i], [values[k] for k in op.inputs],
                                                            scratch)
            step, shape, dtype, form = prepared or _unprepared(graph, op, graph.options[i])
            reads = []
            for k in op.inputs:                   # each activation input in the form the step takes
                if form is not None and k not in self.constants and (k in shifted) != form:
                    if k not in flipped:
                        flipped[k] = ("flipped", k)
                        buffer = None if self.fresh else buffers.take(values[k].shape, _FLIPPED[values[k].dtype])
                        if buffer is not None:
                            held.setdefault(k, []).append(buffer)   # lives as long as k's value
                        values[flipped[k]] = _flip(values[k], buffer)
                        steps.append((i, None, _flip_step, (k,), flipped[k], buffer))
                    k = flipped[k]
                reads.append(k)
            inputs = [values[k] for k in reads]
            write, out = op.outputs[0], None
            if form or (form is None and op.inputs[0] in shifted):
                shifted.add(write)
            if shape is None:                     # the step allocates its result, maybe a view of an input
                held[write] = [b for k in set(op.inputs) for b in held.get(k, ())]
                for b in held[write]:
                    buffers.hold(b)
            elif self.fresh:
                step = _allocating(step, shape, dtype)
            else:
                out = buffers.take(shape, dtype)
                held[write] = [out]
            values[write] = y = step(inputs, out)
            steps.append((i, op, step, tuple(reads), write, out))
            if on_op is not None:
                on_op(i, op, _flip(y) if write in shifted else y)
            for k in set(op.inputs) | {write}:
                if last.get(k, i) <= i:
                    for b in held.pop(k, ()):
                        buffers.drop(b)
        self.copies = [bool(held.get(k)) for k in self.outputs]
        self.shifted = frozenset(shifted)
        self.calls, self.values = (None, None) if self.fresh else (self._compiled_calls(steps, values), values)
        self.steps = steps                        # only now: a run that raised leaves no half plan
        return self._results(values)

    def _compiled_calls(self, steps, values) -> list:
        """The plan as one list of compiled calls, [(function, arguments)], for the steps that read and write
        the same arrays on every run (their buffers; ``_Bound.calls``), and (None, (step, reads, write,
        out)) for the others (those reading the input or a new array): ~0.5-1 us less per step at batch 1
        than the step, its wrapper and the argument checks (``run``)."""
        fixed, made, self.owners = set(self.constants), [], []    # owners: each call's op index (a profile's)
        for i, op, step, reads, write, out in steps:
            bound = None
            if isinstance(step, _Bound) and out is not None and all(k in fixed for k in reads):
                bound = step.calls([values[k] for k in reads], out)
            if bound is None:
                made.append((None, (step, reads, write, out)))
            else:
                made.extend((calls.direct(fn, args), args) for fn, args in bound)
            self.owners += [i] * (len(made) - len(self.owners))
            if out is not None and values[write] is out:
                fixed.add(write)                  # its value is the buffer on every run
        return made


class _Bound:
    """A kernel step: the bound kernel called on the step's first ``arity`` inputs and its output buffer;
    ``calls`` gives the compiled calls that this makes for the same arrays (``_Plan._compiled_calls``)."""

    __slots__ = ("kernel", "arity")

    def __init__(self, kernel, arity: int = 1):
        self.kernel, self.arity = kernel, arity

    def __call__(self, inputs, out):
        return self.kernel(*inputs[:self.arity], out)

    def calls(self, inputs, out):
        return self.kernel.calls(*inputs[:self.arity], out)


def _allocating(step, shape, dtype):
    return lambda inputs, out: step(inputs, np.empty(shape, dtype))


def _single(graph: FastQuantizedGraph, op, options, inputs):
    """One op on its own (``graph.ops``): its step bound for these inputs and run once, into a new array
    (int8 in and out, a step on uint8 + 128 between two flips)."""
    prepared = _PREPARE[op.opcode](graph, op, options, inputs, (None, None))
    if prepared is None:
        return OPS[op.opcode](graph, op, options, inputs)
    step, shape, dtype, form = prepared
    if form:
        inputs = [v if graph.constant(k) is not None else _flip(v) for k, v in zip(op.inputs, inputs)]
    y = step(inputs, None if shape is None else np.empty(shape, dtype))
    return _flip(y) if form else y


# An op's form: True, its step takes and gives int8 tensors as uint8 + 128 (the kernel steps of int8 ops);
# False, as they are (the NumPy ops); None, either, the output in the input's (RESHAPE, SQUEEZE).
_EITHER = (tfl.RESHAPE, tfl.SQUEEZE)
_FLIPPED = {np.dtype(np.int8): np.dtype(np.uint8), np.dtype(np.uint8): np.dtype(np.int8)}


def _unprepared(graph: FastQuantizedGraph, op, options):
    """The step of an op left to the NumPy op: called as it is, allocating its result."""
    fn = OPS[op.opcode]
    return (lambda inputs, out: fn(graph, op, options, inputs)), None, None, None if op.opcode in _EITHER else False


def _flip(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """int8 x -> uint8 x + 128, and back: the same bytes with the top bit flipped (into ``out`` if given)."""
    if out is None:
        out = np.empty(x.shape, _FLIPPED[x.dtype])
    np.bitwise_xor(x.view(np.uint8), np.uint8(0x80), out=out.view(np.uint8))
    return out


def _flip_step(inputs, out):
    return _flip(inputs[0], out)


def _shift(graph: QuantizedGraph, op) -> int:
    """128 when the op's input and output are int8 (its kernel step runs on uint8 + 128), else 0."""
    int8 = np.dtype(np.int8)
    return 128 if graph.dtype(op.inputs[0]) == int8 and graph.dtype(op.outputs[0]) == int8 else 0


def _pack(graph: QuantizedGraph, op) -> dict:
    """Weights in the kernels' layouts and the requantization parameters of one conv op (an int8
    op's zero points and clamp + 128: its step runs on uint8 + 128, ``_shift``)."""
    w = graph.constant(op.inputs[1])
    w_q = graph.tensor(op.inputs[1]).quantization
    depthwise = op.opcode == tfl.DEPTHWISE_CONV_2D
    c_out = w.shape[3] if depthwise else w.shape[0]
    bias = graph.constant(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else np.zeros(c_out, np.int32)
    in_scale, out_scale = graph.scale(op.inputs[0]), graph.scale(op.outputs[0])
    multiplier, shift = iref.conv_multipliers(in_scale, w_q.scale, out_scale,
                                              per_tensor=graph.dtype(op.inputs[0]) == np.uint8)
    out_zp, out_dtype = graph.zero_point(op.outputs[0]), graph.dtype(op.outputs[0])
    clamp = iref.activation_range(tfl.ACTIVATION_NAMES[op.conv_options.activation], out_scale, out_zp, out_dtype)
    params = ig.requantization_params(bias, multiplier, shift, c_out)
    up = _shift(graph, op)
    packed = {"c_out": c_out, "kernel": w.shape[1], "depthwise": depthwise, "params": params,
              "scales": ig.xnnpack_scales(ixnn.conv_scales(in_scale, w_q.scale, out_scale), c_out),
              "clamp": (clamp[0] + up, clamp[1] + up), "in_zp": graph.zero_point(op.inputs[0]) + up,
              "out_zp": out_zp + up, "out_dtype": np.dtype(np.uint8) if up else out_dtype, "form": bool(up)}
    if depthwise:      # TFLite [1, kh, kw, C] -> [kh, kw, C, 1]
        packed["weights"] = idw.pack_depthwise(w.transpose(1, 2, 3, 0), w_q.zero_point)
        packed["folded"] = idw.fold_zero_point(packed["weights"], params, w.shape[1], packed["in_zp"])
    else:              # TFLite OHWI -> [kh * kw * C_in, C_out], the order of the gathered patches
        packed["weights"] = ig.pack_pairs(w.reshape(c_out, -1).T, w_q.zero_point)
        packed["folded"] = ig.fold_zero_point(packed["weights"], params, packed["in_zp"])
    return packed


# --- each op's step: (step(inputs, out) -> out, the output's shape, dtype, form), or None for the NumPy op
# (form: True when it runs on uint8 + 128, ``_shift``; ``scratch``: the plan's two
# ``integer_calls.Scratch``, or (None, None) for buffers of the step's own)

def _prepare_conv(graph: FastQuantizedGraph, op, options, inputs, scratch):
    p = graph.packed[id(op)]
    x, opts = inputs[0], op.conv_options
    k, stride = p["kernel"], opts.stride_h
    out_hw, pad = _padding(opts.padding, x.shape[1:3], (k, k), (opts.stride_h, opts.stride_w))
    requantize = (p["params"], p["out_zp"], p["clamp"], graph.kernels, p["scales"], p["folded"])
    if p["depthwise"]:
        kernel = idw.Depthwise(x.shape, p["in_zp"], p["weights"], k, stride, pad, out_hw, *requantize)
    elif (k, stride) == (1, 1):
        params, out_zp, clamp, rounding, scales, folded = requantize
        kernel = ig.Pointwise(x.size // x.shape[3], x.shape[3], p["in_zp"], p["weights"], params, p["c_out"], out_zp,
                              clamp, rounding, scales, folded, scratch)
    else:
        params, *others = requantize
        x_dtype = np.dtype(np.uint8) if p["form"] else x.dtype
        kernel = iconv.Conv(x.shape, x_dtype, p["in_zp"], p["weights"], k, stride, pad, out_hw, params, p["c_out"],
                         *others, scratch)
    return _Bound(kernel), (x.shape[0], *out_hw, p["c_out"]), p["out_dtype"], p["form"]


def _prepare_softmax(graph: FastQuantizedGraph, op, options, inputs, scratch):
    """``integer_softmax.Softmax``: the bytes of the NumPy op, its tables made once per op."""
    fast = graph.packed.get(id(op))
    if fast is None:
        fast = isoft.Softmax(options["beta"], graph.scale(op.inputs[0]), graph.dtype(op.outputs[0]))
        graph.packed[id(op)] = fast
    return (lambda inputs, out: fast(inputs[0])), None, None, False


# The ADD in Numba (XNNPACK's, or else LiteRT's reference one); XNNPACK's global pools (other sets: NumPy)

def _prepare_add(graph: FastQuantizedGraph, op, options, inputs, scratch):
    a, b = inputs
    k, up = op.outputs[0], _shift(graph, op) if graph.dtype(op.inputs[1]) == graph.dtype(op.inputs[0]) else 0
    scales = (graph.scale(op.inputs[0]), graph.scale(op.inputs[1]), graph.scale(k))
    reference = graph.kernels != "xnnpack"
    if a.shape != b.shape or (reference and iref.add_multipliers(*scales)[2][1] > 0):
        return None         # broadcasting, or an output multiplier >= 1 (the NumPy op checks the int32 range)
    out_zp, out_dtype = graph.zero_point(k), graph.dtype(k)
    lo, hi = iref.activation_range(options["activation"], scales[2], out_zp, out_dtype)
    # the plan flips activations only: a constant operand keeps its int8 values and zero point
    ups = [0 if graph.constant(j) is not None else up for j in op.inputs]
    zero_points = (graph.zero_point(op.inputs[0]) + ups[0], graph.zero_point(op.inputs[1]) + ups[1])
    if reference:
        kernel = iadd.ReferenceAdd(scales, zero_points, (lo + up, hi + up), out_zp + up)
    else:
        kernel = iadd.Add(iadd.add_params(scales[0], zero_points[0], scales[1], zero_points[1], scales[2]),
                          (lo + up, hi + up), out_zp + up)
    return _Bound(kernel, 2), a.shape, np.uint8 if up else out_dtype, bool(up)


def _global(graph: FastQuantizedGraph, op, x, out_shape):
    k, up = op.outputs[0], _shift(graph, op)
    dtype = np.dtype(np.uint8) if up else graph.dtype(k)
    kernel = iadd.GlobalAverage(x.shape, graph.scale(op.inputs[0]), graph.zero_point(op.inputs[0]) + up, graph.scale(k),
                                graph.zero_point(k) + up, iref.DTYPE_RANGES[dtype])
    return _Bound(kernel), out_shape, dtype, bool(up)


def _prepare_average_pool(graph: FastQuantizedGraph, op, options, inputs, scratch):
    x = inputs[0]
    window, stride = (options["filter_h"], options["filter_w"]), (options["stride_h"], options["stride_w"])
    out_hw, pad = _padding(options["padding"], x.shape[1:3], window, stride)
    if graph.kernels != "xnnpack" or out_hw != (1, 1) or pad != (0, 0, 0, 0) or x.ndim != 4:
        return None
    return _global(graph, op, x, (x.shape[0], 1, 1, x.shape[3]))


def _prepare_mean(graph: FastQuantizedGraph, op, options, inputs, scratch):
    x, axes = inputs
    if graph.kernels != "xnnpack" or x.ndim != 4 or sorted(int(a) % 4 for a in np.reshape(axes, -1)) != [1, 2]:
        return None                                             # the NumPy op (which refuses others by name)
    keep = bool(options["keep_dims"])
    return _global(graph, op, x, (x.shape[0], 1, 1, x.shape[3]) if keep else (x.shape[0], x.shape[3]))


_PREPARE = {tfl.CONV_2D: _prepare_conv, tfl.DEPTHWISE_CONV_2D: _prepare_conv, tfl.SOFTMAX: _prepare_softmax,
            tfl.ADD: _prepare_add, tfl.AVERAGE_POOL_2D: _prepare_average_pool, tfl.MEAN: _prepare_mean}
