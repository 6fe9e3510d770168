"""Test helper: ways to break a weight file, shared by the hypothesis tests and the fuzz campaign.

Byte-level operations (flip, truncate, splice, duplicate) work on any format; ``mutate_json``
replaces one value of a parsed JSON document (TF.js model.json); ``mutate_h5_attrs`` gives
HDF5 root attributes values of the wrong type or range.  Each comes as a hypothesis strategy
(for CI) and as a ``random.Random`` generator (for the campaign outside CI), both producing the
same plain-data operation lists.
"""

from __future__ import annotations

import json
import random

import tracemalloc

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from mobilenet_np.errors import WeightsError

# --- bytes --------------------------------------------------------------------------------

_positions = st.integers(min_value=0, max_value=1 << 22)
BYTE_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), _positions, st.integers(1, 255)),
        st.tuples(st.just("truncate"), _positions),
        st.tuples(st.just("splice"), _positions, st.integers(0, 32), st.binary(max_size=32)),
        st.tuples(st.just("duplicate"), _positions, st.integers(1, 300), _positions),
    ),
    min_size=1,
    max_size=4,
)


def random_byte_ops(rnd: random.Random, size: int, hot: list[tuple[int, int]] = ()) -> list[tuple]:
    """Like BYTE_OPS; positions fall in the ``hot`` (start, end) ranges half of the time."""
    def position() -> int:
        if hot and rnd.random() < 0.5:
            start, end = rnd.choice(hot)
            return rnd.randrange(start, max(end, start + 1))
        return rnd.randrange(max(size, 1))

    ops = []
    for _ in range(rnd.randint(1, 4)):
        kind = rnd.choices(["flip", "truncate", "splice", "duplicate"], weights=[6, 1, 2, 1])[0]
        if kind == "flip":
            ops.append(("flip", position(), rnd.randint(1, 255)))
        elif kind == "truncate":
            ops.append(("truncate", position()))
        elif kind == "splice":
            ops.append(("splice", position(), rnd.randint(0, 32), rnd.randbytes(rnd.randint(0, 32))))
        else:
            ops.append(("duplicate", position(), rnd.randint(1, 300), position()))
    return ops


def mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op in ops:
        at = op[1] % (len(buf) + 1)
        if op[0] == "flip" and at < len(buf):
            buf[at] ^= op[2]
        elif op[0] == "truncate":
            del buf[at:]
        elif op[0] == "splice":
            buf[at : at + op[2]] = op[3]
        elif op[0] == "duplicate":
            piece = buf[at : at + op[2]]
            dest = op[3] % (len(buf) + 1)
            buf[dest:dest] = piece
    return bytes(buf)


def touched(ops, size: int) -> list[tuple[int, int]]:
    """The byte ranges the operations change, in original-file positions when they stay put:
    only single flips keep the layout; anything else counts as touching from there on."""
    ranges = []
    for op in ops:
        at = op[1] % (size + 1)
        ranges.append((at, at + 1) if op[0] == "flip" else (at, size))
    return ranges


# --- JSON -----------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)
JSON_OPS = st.lists(st.tuples(st.integers(0, 1 << 20), JSON_VALUES), min_size=1, max_size=3)


def random_json_value(rnd: random.Random, depth: int = 0):
    makers = [lambda: None, lambda: rnd.random() < 0.5, lambda: rnd.randint(-(2**70), 2**70),
              lambda: rnd.choice([float("nan"), float("inf"), -1.0, 1e308, 0.5]),
              lambda: rnd.choice(["", "x", "float32", "../x"]), lambda: [[[[]]]] * rnd.randint(1, 3),
              lambda: [random_json_value(rnd, depth + 1) for _ in range(rnd.randint(0, 3))],
              lambda: {rnd.choice(["dtype", "shape", "name", "paths", "x"]): random_json_value(rnd, depth + 1)}]
    return rnd.choice(makers if depth < 2 else makers[:6])()


def random_json_ops(rnd: random.Random) -> list[tuple]:
    return [(rnd.randrange(1 << 20), random_json_value(rnd)) for _ in range(rnd.randint(1, 3))]


def _slots(node, out):
    """Every (container, key) in the document, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        out.append((node, key))
        _slots(value, out)
    return out


def mutate_json(text: str, ops) -> str:
    doc = json.loads(text)
    for index, value in ops:
        slots = _slots(doc, [])
        if slots:
            container, key = slots[index % len(slots)]
            container[key] = value
    return json.dumps(doc)


# --- HDF5 attributes ------------------------------------------------------------------------

ATTR_VALUES = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=12), st.booleans(),
    st.sampled_from(["[0, 0]", "[96, 1e9]", "{}", "[", "mobilenet_v3", "[-1, 1]"]),
    st.lists(st.integers(-5, 5000), max_size=3).map(lambda v: np.array(v, dtype=np.int64)),
)
ATTR_OPS = st.lists(st.tuples(st.integers(0, 63), ATTR_VALUES), min_size=1, max_size=3)


def random_attr_value(rnd: random.Random):
    return rnd.choice([
        rnd.randint(-(2**63), 2**63 - 1), rnd.choice([float("inf"), float("nan"), -1.0, 0.0, 40.0, 1e300]),
        rnd.choice(["", "[0, 0]", "[96, 1e9]", "{}", "[", "mobilenet_v3", "[-1, 1]", "\udcff" * 0 + "x"]),
        rnd.random() < 0.5, np.array([rnd.randint(-5, 5000) for _ in range(rnd.randint(0, 3))], dtype=np.int64),
    ])


def random_attr_ops(rnd: random.Random) -> list[tuple]:
    return [(rnd.randrange(64), random_attr_value(rnd)) for _ in range(rnd.randint(1, 3))]


def mutate_h5_attrs(path, ops, group: str = "/") -> None:
    """Give the ``index``-th attribute of ``group`` (cyclically) a new value, in place."""
    import h5py

    with h5py.File(path, "r+") as f:
        attrs = f[group].attrs
        for index, value in ops:
            names = sorted(attrs)
            if names:
                attrs[names[index % len(names)]] = value


# --- running a read under the fuzz tests' rules ---------------------------------------------

def fuzz(examples: int):
    return settings(FUZZ, max_examples=examples)


FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
TFLITE_FLOAT = ("weights", "mobilenet_v1_025_160", "tflite_float", "mobilenet_v1_0.25_160.jevois.tflite")
TFLITE_UINT8 = ("weights", "mobilenet_v1_050_160", "tflite_uint8_quant", "mobilenet_v1_0.5_160_quant.jevois.tflite")


def read_bounded(read, path, size: int):
    """``read(path)``: its result, or None after a WeightsError naming ``path`` in one line.
    Any other exception fails the test, and so does a peak of traced memory beyond a small
    multiple of ``size`` (the bytes on disk)."""
    tracemalloc.start()
    try:
        try:
            return read(path)
        except WeightsError as err:
            message = str(err)
            assert path.name in message and "\n" not in message, message
            return None
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < 16 * size + (32 << 20), f"peak {peak} bytes for a {size}-byte input"
    finally:
        tracemalloc.stop()


def convertible(path):
    """What convert does before writing: read, check values, recognise; for a quantized .tflite
    also read the integers and quantization a version-2 file keeps."""
    from weights_tools.convert import detect, open_source, read_quantized

    src = open_source(path)
    detect(src.tensors, str(path))
    read_quantized(path)
    return src.tensors
