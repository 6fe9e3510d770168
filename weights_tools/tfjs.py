"""Read MobileNet weights out of a TensorFlow.js *graph model* (model.json + binary shards).

A TF.js graph model is a GraphDef in JSON (``modelTopology``) whose Const nodes are empty; their
values sit in the shard files, concatenated in ``weightsManifest`` order.  The TF-Hub exports
fold BatchNorm into the convolutions: ``module/MobilenetV2/<scope>/weights`` (HWIO) or
``depthwise_weights`` ([kh, kw, C, 1]) are the folded kernels and constants such as
``module_apply_default/MobilenetV2/<scope>/Conv2D_bn_offset`` are the folded biases.  Both are
already in TF-Slim layout, so no transposes are needed; the bias of each kernel is found by
following the graph (the fused conv's third input, or the BiasAdd fed by a depthwise conv),
not by guessing from names.

It deliberately does not: run the graph (tests/peer_runners.py lets TensorFlow do that), read
TF.js *layers* models, or accept constants it cannot place; anything left over is refused.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import numpy as np

from mobilenet_np.errors import (ArchitectureError, CorruptFileError, MissingFileError,
                                 UnsupportedFormatError)
from mobilenet_np.weights_file import read_regular_file, require_regular_file
from weights_tools.source import SourceTensors

# Manifest dtypes as stored (after any quantization) and the NumPy dtype of each.
MAX_DIM = 1 << 16                      # far above any MobileNet channel count (1280 * 3)
STORED_DTYPES = {"float32": np.dtype("<f4"), "int32": np.dtype("<i4"), "uint8": np.dtype("u1"),
                 "uint16": np.dtype("<u2"), "float16": np.dtype("<f2")}
KERNEL_NAME = re.compile(r"^module/(MobilenetV[12])/(.+)/(weights|depthwise_weights)$")
CONV_OPS = {"Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"}
BIAS_OPS = {"BiasAdd", "Add", "AddV2"}
# The hub input conversion x * 2 - 1 [SPEC.md §1.5]: constants we check and then leave out.
HUB_INPUT_CONSTANTS = {"module_apply_default/hub_input/Mul/y": ("Mul", 2.0),
                       "module_apply_default/hub_input/Sub/y": ("Sub", 1.0)}


def _model_json_path(model_dir_or_model_json: str | Path) -> Path:
    path = Path(model_dir_or_model_json)
    return path / "model.json" if path.is_dir() else path


def load_model_json(model_json: Path) -> dict:
    """The parsed model.json, refusing anything that is not a TF.js graph model."""
    text = read_regular_file(model_json, "TF.js model.json")
    try:
        model = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:   # deep nesting: RecursionError
        raise CorruptFileError(f"{model_json}: not valid JSON ({err})") from None
    if not isinstance(model, dict) or not isinstance(model.get("modelTopology"), dict):
        raise UnsupportedFormatError(f"{model_json}: no modelTopology object; not a TF.js model")
    if model.get("format", "graph-model") != "graph-model" or "node" not in model["modelTopology"]:
        raise UnsupportedFormatError(f"{model_json}: format {model.get('format')!r}; only TF.js graph "
                                     "models (a GraphDef topology) are supported")
    if not isinstance(model.get("weightsManifest"), list):
        raise CorruptFileError(f"{model_json}: weightsManifest is missing or not a list")
    return model


def _spec_layout(spec, model_json: Path) -> tuple[str, tuple[int, ...], np.dtype, dict | None]:
    """(name, shape, stored dtype, quantization) of one manifest entry, validated."""
    try:
        name, shape, dtype = spec["name"], tuple(spec["shape"]), spec["dtype"]
        quant = spec.get("quantization")
        if quant is not None and not isinstance(quant, dict):
            raise TypeError("quantization is not an object")
        stored = quant["dtype"] if quant is not None else dtype
    except (KeyError, TypeError, AttributeError):
        raise CorruptFileError(f"{model_json}: malformed weightsManifest entry {str(spec)[:200]}") from None
    if not isinstance(name, str) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                            for d in shape):
        raise CorruptFileError(f"{model_json}: weight {name!r} has a bad name or shape {list(shape)[:8]}")
    # No MobileNet tensor has more than 4 dimensions or a dimension past MAX_DIM; checked before
    # any size is computed or any shard is read.
    if len(shape) > 4 or any(d > MAX_DIM for d in shape):
        raise ArchitectureError(f"{model_json}: weight {name!r} declares shape {list(shape)[:8]}, "
                                "which no MobileNet tensor has")
    if not isinstance(dtype, str) or not isinstance(stored, str) or dtype not in ("float32", "int32") \
            or stored not in STORED_DTYPES:
        raise UnsupportedFormatError(f"{model_json}: weight {name!r} has dtype {dtype!r} stored as "
                                     f"{stored!r}; supported: float32/int32, optionally quantized to "
                                     "uint8/uint16/float16")
    return name, shape, STORED_DTYPES[stored], quant


def _decode(raw: np.ndarray, dtype: str, quant: dict | None, name: str, model_json: Path) -> np.ndarray:
    """The weight's values from its stored form, as TF.js decodes them."""
    if quant is None:
        return raw.copy()
    if quant["dtype"] == "float16":
        values = raw.astype(np.float32)                        # float16 -> float32 is exact
    else:
        try:
            scale, minimum = float(quant["scale"]), float(quant["min"])
        except (KeyError, TypeError, ValueError):
            raise CorruptFileError(f"{model_json}: weight {name!r} lacks a numeric quantization "
                                   "scale/min") from None
        # TF.js affine quantization: value = q * scale + min, evaluated in double precision.
        values = raw.astype(np.float64) * scale + minimum
    # TF.js rounds dequantized int32 weights to the nearest integer.
    return np.round(values).astype(np.int32) if dtype == "int32" else values.astype(np.float32)


def read_manifest_weights(model_json: Path, model: dict) -> dict[str, np.ndarray]:
    """Every weight of the manifest by name, read from the shards in manifest order."""
    weights: dict[str, np.ndarray] = {}
    for group in model["weightsManifest"]:
        if not isinstance(group, dict) or not isinstance(group.get("weights"), list) \
                or not isinstance(group.get("paths"), list) or not all(isinstance(p, str) for p in group["paths"]):
            raise CorruptFileError(f"{model_json}: a weightsManifest group lacks paths or weights")
        layouts = [_spec_layout(spec, model_json) for spec in group["weights"]]
        sizes = [int(np.prod(shape, dtype=object)) * stored.itemsize for _, shape, stored, _ in layouts]
        shards = [shard_path(model_json, p) for p in group["paths"]]
        actual = sum(s.stat().st_size for s in shards)
        if actual != sum(sizes):
            raise CorruptFileError(f"{', '.join(map(str, shards))}: the shards hold {actual} bytes but "
                                   f"{model_json} describes {sum(sizes)}; truncated or wrong shard")
        data = b"".join(read_regular_file(s, "weight shard") for s in shards)
        offset = 0
        for (name, shape, stored, quant), size, spec in zip(layouts, sizes, group["weights"], strict=True):
            raw = np.frombuffer(data, dtype=stored, count=size // stored.itemsize, offset=offset)
            if name in weights:
                raise CorruptFileError(f"{model_json}: weight {name!r} appears twice in the manifest")
            weights[name] = _decode(raw, spec["dtype"], quant, name, model_json).reshape(shape)
            offset += size
    return weights


def shard_path(model_json: Path, name: str) -> Path:
    """A shard listed in model.json, which must be a regular file inside the model's folder:
    no absolute path, no '..', and no symlink that leads out of it (realpath is checked)."""
    folder = model_json.parent
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or "\\" in name or "\x00" in name:
        raise CorruptFileError(f"{model_json}: weight shard path {name!r} leaves the model folder; "
                               "only files inside it may be read")
    path = folder / name
    real, root = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([real, root]) != root:
        raise CorruptFileError(f"{model_json}: weight shard {name!r} is a link that leaves the model "
                               "folder; only files inside it may be read")
    try:
        require_regular_file(path, "weight shard")
    except MissingFileError:
        raise MissingFileError(f"{path}: weight shard listed in {model_json} is missing") from None
    return path


def _input_name(ref: str) -> str:
    """Graph input reference -> producing node name ('^x' is a control edge, 'x:1' an output)."""
    return ref.lstrip("^").split(":")[0]


class _Graph:
    """Nodes by name and, for each node, the nodes that consume it (with the input position)."""

    def __init__(self, topology: dict, model_json: Path):
        self.model_json = model_json
        nodes = topology["node"]
        if not isinstance(nodes, list) or not all(
                isinstance(n, dict) and isinstance(n.get("name"), str) and isinstance(n.get("op"), str)
                and isinstance(n.get("attr", {}), dict) and isinstance(n.get("input", []), list)
                and all(isinstance(ref, str) for ref in n.get("input", [])) for n in nodes):
            raise CorruptFileError(f"{model_json}: modelTopology.node is not a list of GraphDef nodes")
        self.nodes = {n["name"]: n for n in nodes}
        self.consumers: dict[str, list[tuple[dict, int]]] = {}
        for node in nodes:
            for position, ref in enumerate(node.get("input", [])):
                if not ref.startswith("^"):
                    self.consumers.setdefault(_input_name(ref), []).append((node, position))

    def only_consumer(self, name: str, ops: set[str], position: int) -> dict | None:
        """The single node of one of ``ops`` that takes ``name`` at input ``position``, if any."""
        found = [n for n, pos in self.consumers.get(name, []) if n["op"] in ops and pos == position]
        if len(found) > 1:
            raise ArchitectureError(f"{self.model_json}: {name!r} feeds {len(found)} {sorted(ops)} nodes; "
                                    "expected one")
        return found[0] if found else None

    def _attr(self, node: dict, key: str, read):
        try:
            return read(node.get("attr", {}).get(key, {}))
        except (AttributeError, TypeError, ValueError, OverflowError) as err:   # binascii.Error is a ValueError
            raise CorruptFileError(f"{self.model_json}: attr {key!r} of node {node['name']!r} is "
                                   f"malformed ({err})") from None

    def strings(self, node: dict, key: str) -> list[str]:
        """A string or list(string) attr; GraphDef JSON stores bytes base64-encoded."""
        def read(attr):
            values = attr["list"].get("s", []) if "list" in attr else [attr["s"]] if "s" in attr else []
            return [base64.b64decode(v, validate=True).decode("ascii", "replace") for v in values]
        return self._attr(node, key, read)

    def ints(self, node: dict, key: str) -> list[int]:
        return self._attr(node, key, lambda attr: [int(i) for i in attr.get("list", {}).get("i", [])])

    def const_shape(self, node: dict) -> tuple[int, ...]:
        """The tensorShape of a Const node's value attr."""
        return self._attr(node, "value", lambda attr: tuple(
            int(d.get("size", 0)) for d in attr.get("tensor", {}).get("tensorShape", {}).get("dim", [])))


def _bias_and_activation(graph: _Graph, conv: dict) -> tuple[str | None, bool]:
    """The bias constant of a conv node (fused input 2, or the BiasAdd it feeds) and whether a
    Relu6 follows it (fused into the conv, or the node after the BiasAdd)."""
    fused = graph.strings(conv, "fused_ops")
    if fused:
        if fused[0] != "BiasAdd" or len(conv.get("input", [])) < 3:
            raise ArchitectureError(f"{graph.model_json}: node {conv['name']!r} fuses {fused}; "
                                    "expected BiasAdd first")
        return _input_name(conv["input"][2]), "Relu6" in fused[1:]
    bias_add = graph.only_consumer(conv["name"], BIAS_OPS, 0)
    if bias_add is None:
        return None, graph.only_consumer(conv["name"], {"Relu6"}, 0) is not None
    if len(bias_add.get("input", [])) < 2:
        raise ArchitectureError(f"{graph.model_json}: node {bias_add['name']!r} has no bias input")
    relu6 = graph.only_consumer(bias_add["name"], {"Relu6"}, 0) is not None
    return _input_name(bias_add["input"][1]), relu6


def _check_conv(graph: _Graph, conv: dict, relu6: bool, net: str, scope: str) -> None:
    model_json = graph.model_json
    padding = graph.strings(conv, "padding")
    dilations = graph.ints(conv, "dilations")
    if padding != ["SAME"] or any(d != 1 for d in dilations):
        raise ArchitectureError(f"{model_json}: conv {conv['name']!r} has padding {padding} and dilations "
                                f"{dilations}; MobileNet uses SAME and 1")
    linear = scope.endswith("/project") or scope.startswith("Logits/")   # SPEC.md §1.4
    if relu6 == linear:
        raise ArchitectureError(f"{model_json}: {net}/{scope} is {'followed' if relu6 else 'not followed'} "
                                f"by Relu6; SPEC.md has it {'linear' if linear else 'with ReLU6'}")


def read_tfjs_graph(model_dir_or_model_json: str | Path) -> SourceTensors:
    """Import a TF-Hub MobileNet exported as a TF.js graph model (folded BatchNorm)."""
    model_json = _model_json_path(model_dir_or_model_json)
    model = load_model_json(model_json)
    weights = read_manifest_weights(model_json, model)
    graph = _Graph(model["modelTopology"], model_json)

    for name, value in weights.items():                 # the topology must agree with the manifest
        node = graph.nodes.get(name)
        if node is None or node.get("op") != "Const":
            raise ArchitectureError(f"{model_json}: weight {name!r} has no Const node in the topology")
        if graph.const_shape(node) != value.shape:
            raise CorruptFileError(f"{model_json}: weight {name!r} has shape {list(value.shape)} in the "
                                   f"manifest but {list(graph.const_shape(node))} in the topology")

    ignored: dict[str, str] = {}
    placed: dict[str, str] = {}                          # manifest name -> TF-Slim name
    nets = set()
    for name in weights:
        match = KERNEL_NAME.match(name)
        if not match:
            continue
        net, scope, variable = match.groups()
        nets.add(net)
        conv = graph.only_consumer(name, CONV_OPS, 1)
        if conv is None:
            raise ArchitectureError(f"{model_json}: kernel {name!r} feeds no convolution")
        if (variable == "depthwise_weights") != ("Depthwise" in conv["op"]):
            raise ArchitectureError(f"{model_json}: {name!r} feeds a {conv['op']} node")
        bias, relu6 = _bias_and_activation(graph, conv)
        _check_conv(graph, conv, relu6, net, scope)
        # Both kernel layouts are TF-Slim's already (HWIO; depthwise [kh, kw, C, 1]): no transpose.
        placed[name] = f"{net}/{scope}/{variable}"
        if bias is None:
            raise ArchitectureError(f"{model_json}: conv {conv['name']!r} has no bias (folded BatchNorm "
                                    "offset) after it")
        if bias not in weights or bias in placed:
            raise ArchitectureError(f"{model_json}: bias {bias!r} of conv {conv['name']!r} is not a "
                                    "weight of the manifest or is shared with another conv")
        placed[bias] = f"{net}/{scope}/biases"
    if len(nets) != 1:
        raise ArchitectureError(f"{model_json}: expected the kernels of one MobileNet "
                                f"(module/MobilenetV1/... or module/MobilenetV2/...), found {sorted(nets)}")

    for name, (op, expected) in HUB_INPUT_CONSTANTS.items():
        if name in weights:
            consumer = graph.only_consumer(name, {op}, 1)
            if consumer is None or weights[name].shape != () or float(weights[name]) != expected:
                raise ArchitectureError(f"{model_json}: {name!r} should be the {op} by {expected} of the "
                                        "hub input conversion x * 2 - 1")
            ignored[name] = f"hub input conversion ({op} by {expected}); built into the model"
    unplaced = [name for name in weights if name not in placed and name not in ignored]
    if unplaced:
        raise ArchitectureError(f"{model_json}: weights with no place in a MobileNet: {unplaced}")
    tensors = {slim_name: weights[name] for name, slim_name in placed.items()}

    notes = ["BatchNorm is folded in this graph: each conv's bias (the exporter's *_bn_offset "
             "constant) is the folded BatchNorm offset"]
    if not any(name.endswith("/biases") and "/Logits/" in name for name in tensors):
        notes.append("feature-vector graph: no logits")
    if len(ignored) == len(HUB_INPUT_CONSTANTS):
        notes.append("the graph takes [0, 1] images and applies x * 2 - 1 itself (hub_input Mul/Sub)")
    shards = [str(model_json.parent / p) for group in model["weightsManifest"] for p in group["paths"]]
    return SourceTensors(tensors=tensors, source_format="tfjs-graph",
                         source_files=[str(model_json)] + shards, batchnorm_folded=True,
                         ignored=ignored, notes=notes, input_size=_input_size(model))


def _input_size(model: dict) -> tuple[int, int] | None:
    """(height, width) of the graph's image placeholder, when the graph fixes it."""
    for node in model["modelTopology"]["node"]:
        if node.get("op") == "Placeholder":
            try:
                dims = node.get("attr", {}).get("shape", {}).get("shape", {}).get("dim", [])
                sizes = [int(d.get("size", -1)) for d in dims]
            except (AttributeError, TypeError, ValueError, OverflowError):
                return None                  # an unreadable placeholder shape: no size declared
            if len(sizes) == 4 and min(sizes[1:3]) > 0:
                return sizes[1], sizes[2]
    return None
