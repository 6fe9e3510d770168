"""The integer forward pass on the Numba integer kernels: ``QuantizedGraph`` with its
convolutions replaced by ``kernels/integer_gemm.py`` / ``integer_dot4.py``, ``integer_conv.py`` /
``integer_conv4.py`` and ``integer_depthwise.py`` / ``integer_depthwise4.py`` (the second of
each pair on AVX-512 VNNI's four-byte dot products).

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
most of the difference.  Since 2026-12-02 those calls are rows of one program
(``kernels/integer_program.py``, ``_Plan._program_calls``): a pass with no NumPy op between its
kernels is one compiled call, whose threads share each kernel's tasks in one parallel region
(V2 0.5/96 int8 at batch 1 on two threads took 0.78x the time of the calls one by one, each
split over the threads on its own).  Each op is bound to its kernel by ``quantized_steps.py``.
1x1 convolutions at stride 1 go straight to the GEMM, which multiplies the input bytes as they
are (the input zero point folded into the bias at load); other full convolutions (the 3x3 stem)
read their patches in place (``integer_conv.bound``: ``Conv``, or ``Conv4`` on VNNI); depthwise
convolutions read the input bytes directly (``integer_depthwise.Depthwise``).  Called on their own (a pass with ``on_op``), the kernels split
their rows over Numba's threads (``numba.set_num_threads``).  The ADD of same-shape inputs runs
in Numba too (``kernels/integer_add.py``: XNNPACK's with ``kernels="xnnpack"``, else LiteRT's
reference one), and with ``kernels="xnnpack"`` the global pools; softmax is
``integer_softmax.Softmax`` (tabled exponentials, the same bytes); reshapes and the other kernel
sets' pools stay the NumPy reference ops.

int8 activations run as uint8: a plan holds an int8 tensor that a kernel step reads or writes as
its bytes with the top bit flipped, uint8 = int8 + 128, and the step's zero points and clamps
+ 128.  The convolutions, the ADD and the global pool depend on values only through q - zero
point, so they give the same bytes + 128 (constant operands are not flipped: an ADD of one keeps
its zero point); the kernels then need one compiled form (uint8) instead of two, ~4 s less of
the integer kernels' cold compile.  Steps that are not shift-invariant (the NumPy ops: the
reference pools' rounding, softmax, FULLY_CONNECTED, a broadcasting ADD) get their inputs flipped
back (``_flip``, inserted into the plan), and ``on_op`` and the outputs see int8 as always.  Not
here yet: fused layers.
"""

from __future__ import annotations

import contextlib
import threading

import numba
import numpy as np

from .. import threads as _threads
from ..kernels import integer_calls as calls
from ..kernels import integer_program as iprog
from .choice import Chooser
from .plan_buffers import Buffers
from .quantized import OPS, QuantizedGraph
from .quantized_steps import _PREPARE, _Bound, _pack
from weights_tools import tflite_ops as tfl


# Run each plan's kernel calls as one compiled program (``integer_program``; False: one Python call
# per kernel, the kernels splitting their own work, as before 2026-12-02; kept to compare the two).
PROGRAM = True
# Batches below this many images per thread take the faster of one thread and all of them
# (``adaptive``); larger ones share every kernel's tasks among the threads, a thread slowed by a
# busy neighbour taking fewer of them.
CHOOSE_BELOW = 2
PLANS_PER_THREAD = 6        # plans (input shape, thread count, ...) whose buffers a thread keeps


class FastQuantizedGraph(QuantizedGraph):
    """``QuantizedGraph`` whose CONV_2D and DEPTHWISE_CONV_2D run on the Numba kernels."""

    def __init__(self, path, kernels: str = "reference"):
        super().__init__(path, kernels)
        self.packed = {id(op): _pack(self, op) for op in self.sub.operators
                       if op.opcode in (tfl.CONV_2D, tfl.DEPTHWISE_CONV_2D)}
        self._ops = {**OPS, **{code: _single for code in _PREPARE}}
        self._constants = [[self.constant(k) for k in op.inputs] for op in self.sub.operators]
        self._pools = _threads.Pools("mnp-int8")       # for batch splits, by size
        # Small batches on several threads: the program on all of them or on the calling thread
        # alone, whichever has been faster lately (``choice.py``).  False: always all of them.
        self.adaptive = True
        self._choice = Chooser()
        self._local = threading.local()         # each thread's plans: their buffers are not shared

    @property
    def ops(self) -> dict:
        """Each op on its own, as ``QuantizedGraph.run`` calls them (``_single``)."""
        return self._ops

    def run(self, x: np.ndarray, on_op=None, outputs=None) -> list[np.ndarray]:
        """As ``QuantizedGraph.run``, through the plan of the input's shape (``_Plan``): the arrays
        returned, and those ``on_op`` sees, are the caller's to keep.  The plan's program shares
        each kernel's tasks among Numba's threads, at any batch size.  (Without a program,
        ``PROGRAM`` off: with T > 1 threads and a batch of at least 2T images, the batch is split in
        T parts, each run through the whole graph on a thread of its own.  The program's shared
        tasks ran 1.09-1.25x (V1 0.5/160 uint8) and 1.50-1.60x (V2 0.5/96 int8) its speed at batch
        4, 8 and 32 on two threads, in one process: a thread slowed by a busy neighbour takes
        fewer tasks instead of finishing its half last.)"""
        x = np.asarray(x)
        if x.dtype != self.dtype(self.input_index):
            raise TypeError(f"{self.file}: the input is {self.dtype(self.input_index)}, got {x.dtype}")
        outputs = tuple(self.sub.outputs if outputs is None else outputs)
        threads = numba.get_num_threads()
        if on_op is None and threads > 1 and not PROGRAM and len(x) >= 2 * threads:
            return self._run_split(x, threads, outputs)
        if on_op is None and threads > 1 and PROGRAM and self.adaptive and len(x) < CHOOSE_BELOW * threads \
                and not calls.on_one_thread():
            # the calling thread first: a process's first call starts no thread pool (``choice.py``)
            ways = (lambda: self._run(x, None, outputs, 1), lambda: self._run(x, None, outputs, threads))
            return self._choice.run((x.shape, outputs, threads), ways)
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
        parts = 1 if calls.on_one_thread() else threads
        key = (x.shape, outputs, on_op is not None, parts, calls.SERIAL_BELOW, PROGRAM)
        plans = self._local.__dict__.setdefault("plans", {})
        plan = plans.get(key)
        if plan is None:
            if len(plans) >= PLANS_PER_THREAD:
                del plans[next(iter(plans))]                        # the oldest
            plan = plans[key] = _Plan(self, outputs, fresh=on_op is not None, parts=parts if PROGRAM else 0)
        return plan.run(x, on_op)


class _Plan:
    """One input shape's forward pass, worked out on its first run: for each op the step that its
    ``_PREPARE`` function binds (or the NumPy op, called as it is) and where its output goes.
    Outputs go to preallocated buffers, a buffer passing to a later tensor once every op reading
    the earlier one has run (``fresh``: new arrays instead, for an ``on_op`` that keeps them); the
    outputs asked for are copied out of them.  A step that allocates its own result (the NumPy
    ops) may return a view of its input (RESHAPE): its inputs' buffers are then kept as long as
    its output.  With ``parts`` (and not ``fresh``), later runs go through a program
    (``_program_calls``) on that many threads.  Used by one thread (``FastQuantizedGraph._local``)."""

    def __init__(self, graph: FastQuantizedGraph, outputs: tuple, fresh: bool, parts: int = 0):
        self.graph, self.outputs, self.fresh = graph, outputs, fresh
        self.parts = 0 if fresh else parts        # > 0: run as a program on this many threads
        self.steps = self.calls = self.program = None

    def run(self, x: np.ndarray, on_op) -> list[np.ndarray]:
        if self.steps is None:
            return self._build(x, on_op)
        if on_op is None and self.calls is not None:
            values = dict(self.values)
            values[self.graph.input_index] = x
            if self.program is not None:
                self.program.patch(x)
            for fn, args in self.runs:
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
        """The first run, binding each op's step as it goes (the input values give the shapes); for
        a program, the kernels bound to run on one thread (the program shares out their tasks)."""
        with calls.serial() if self.parts else contextlib.nullcontext():
            return self._bind(x, on_op)

    def _bind(self, x: np.ndarray, on_op) -> list[np.ndarray]:
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
        self.runs = self.calls if self.fresh or not self.parts else self._program_calls(steps, values)
        self.steps = steps                        # only now: a run that raised leaves no half plan
        return self._results(values)

    def _compiled_calls(self, steps, values, program=None) -> list | None:
        """The plan as one list of compiled calls, [(function, arguments)], for the steps that read and write
        the same arrays on every run (their buffers; ``_Bound.calls``), and (None, (step, reads, write,
        out)) for the others (those reading the input or a new array): ~0.5-1 us less per step at batch 1
        than the step, its wrapper and the argument checks (``run``).  With an ``integer_program.Program``,
        the input counts as the same array too (the program patches its addresses), the flips are calls,
        and each call the program takes becomes a row of it, listed as (Program, its row); None if a
        call that reads the input cannot be a row."""
        x = values[self.graph.input_index]
        fixed, made, owners = set(self.constants), [], []      # owners: each call's op index (a profile's)
        if program is not None:
            fixed.add(self.graph.input_index)
        for i, op, step, reads, write, out in steps:
            bound = None
            if out is not None and all(k in fixed for k in reads):
                if isinstance(step, _Bound):
                    bound = step.calls([values[k] for k in reads], out)
                elif step is _flip_step and program is not None:
                    bound = [(_flip_step, (values[reads[0]], out))]
            if bound is None:
                made.append((None, (step, reads, write, out)))
            for fn, args in bound or ():
                if program is not None and (program.add_flip(*args) if fn is _flip_step else program.add(fn, args)):
                    made.append((iprog.Program, len(program.rows) - 1))
                elif program is not None and any(isinstance(a, np.ndarray) and np.may_share_memory(a, x)
                                                 for a in args):
                    return None
                else:
                    made.append((calls.direct(fn, args), args))
            owners += [i] * (len(made) - len(owners))
            if out is not None and values[write] is out:
                fixed.add(write)                  # its value is the buffer on every run
        if program is None:
            self.owners = owners
        return made

    def _program_calls(self, steps, values) -> list:
        """The plan as ``_compiled_calls`` makes it with a program, each run of consecutive rows run
        by one compiled call (on ``parts`` threads sharing each row's tasks); ``_compiled_calls``'
        plain list if no call could be a row, or one that reads the input could not."""
        program = iprog.Program(values[self.graph.input_index])
        items = self._compiled_calls(steps, values, program)
        if items is None or not program.rows:
            return self.calls
        program.finish(self.parts)
        self.program, runs, start = program, [], None
        for n, (fn, args) in enumerate(items + [(None, None)]):
            if fn is iprog.Program:
                start = args if start is None else start
                continue
            if start is not None:         # the rows since ``start`` as one compiled call
                run_fn, run_args = program.call(start, items[n - 1][1] + 1)
                runs.append((calls.direct(run_fn, run_args), run_args))
                start = None
            if args is not None or fn is not None:
                runs.append((fn, args))
        return runs


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
