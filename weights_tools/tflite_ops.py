"""The options of a .tflite graph's non-conv operators, for running the graph (forward/quantized.py).

``tflite.parse_model`` reads what the float importer needs: tensors, quantization, buffers and
the conv options.  Running a quantized graph also needs the pool window, ADD's fused activation,
softmax's beta and MEAN's keep_dims.  This module reads those, with the same bounds-checked
FlatBuffers access, and pairs them with the parsed model.  The options table of an operator is
read by the operator's code (AVERAGE_POOL_2D has Pool2DOptions), never by the union's type number.

It deliberately reads only the operators a MobileNet contains (see ``OPTION_FIELDS``).
"""

from __future__ import annotations

from dataclasses import dataclass

# The schema names the integer forward pass uses, re-exported from here so that it has one import
# of the flatbuffer reader (forward/quantized.py and quantized_engine.py import this module only).
from weights_tools.tflite_schema import (ACTIVATION_NAMES, ADD, AVERAGE_POOL_2D, CONV_2D,  # noqa: F401
                                         DEPTHWISE_CONV_2D, DEQUANTIZE, MEAN, OP_NAMES, QUANTIZE, RESHAPE,
                                         SOFTMAX, SQUEEZE, TENSOR_DTYPES, Model, Tensor, _Buffer, parse_model,
                                         read_model_bytes)

FULLY_CONNECTED = 9
# Per operator code: the options fields we read, as (name, field number, struct format, default).
OPTION_FIELDS = {
    AVERAGE_POOL_2D: [("padding", 0, "b", 0), ("stride_w", 1, "i", 0), ("stride_h", 2, "i", 0),
                      ("filter_w", 3, "i", 0), ("filter_h", 4, "i", 0), ("activation", 5, "b", 0)],
    ADD: [("activation", 0, "b", 0)],
    SOFTMAX: [("beta", 0, "f", 0.0)],
    MEAN: [("keep_dims", 0, "B", 0)],
    FULLY_CONNECTED: [("activation", 0, "b", 0), ("weights_format", 1, "b", 0), ("keep_num_dims", 2, "B", 0)],
}


@dataclass(frozen=True)
class Graph:
    model: Model
    options: tuple[dict, ...]      # per operator of subgraph 0: the fields of OPTION_FIELDS, by name


def operator_options(model: Model, data: bytes, file: str) -> tuple[dict, ...]:
    """The options of every operator of the first subgraph of ``model`` (parsed from ``data``);
    an empty dict for the operators without fields in OPTION_FIELDS."""
    buf = _Buffer(data, file)
    root = buf.table(buf.uoffset(0, "root table offset"), "model")
    subgraph = root.tables(2, "subgraph")[0]
    out = []
    for index, (op, table) in enumerate(zip(model.subgraphs[0].operators,
                                            subgraph.tables(3, "subgraph 0 operators"), strict=True)):
        fields = OPTION_FIELDS.get(op.opcode, [])
        options = table.table(4, f"operator {index} options") if fields else None
        values = {name: (default if options is None else options.scalar(number, fmt, default))
                  for name, number, fmt, default in fields}
        if "activation" in values:
            values["activation"] = ACTIVATION_NAMES.get(values["activation"], str(values["activation"]))
        out.append(values)
    return tuple(out)


def read_graph(data: bytes, file: str) -> Graph:
    """The parsed model and the options of its operators."""
    model = parse_model(data, file)                     # validates the file first
    return Graph(model, operator_options(model, data, file))
