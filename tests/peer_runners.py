"""Test-side helpers that run the *other* engines on the real weight files.

Golden parity tests compare mobilenet-np against what TensorFlow, LiteRT and Keras compute from
the same files.  Each helper hands the file to that engine and returns its output; none of them
uses our reimplementation, so a shared mistake cannot hide.  TensorFlow, Keras and LiteRT are
imported inside the functions, so importing this module costs nothing and tests can
``pytest.importorskip`` what they need.

Deliberately not here: image decoding/resizing policy (callers pass arrays), and any tolerance.
"""

from __future__ import annotations

from pathlib import Path

import json
import warnings

import h5py
import numpy as np


def _tfjs_float32_weights(model_json: Path, model: dict) -> dict[str, np.ndarray]:
    """The shard values by name; kept apart from weights_tools.tfjs so the two check each other.
    Only plain float32 manifests (what the TF-Hub exports use)."""
    weights = {}
    for group in model["weightsManifest"]:
        data = b"".join((model_json.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            if spec["dtype"] != "float32" or "quantization" in spec:
                raise ValueError(f"{model_json}: {spec['name']} is not plain float32")
            count = int(np.prod(spec["shape"], dtype=np.int64))
            weights[spec["name"]] = np.frombuffer(data, "<f4", count, offset).reshape(spec["shape"])
            offset += 4 * count
        if offset != len(data):
            raise ValueError(f"{model_json}: shards hold {len(data)} bytes, manifest {offset}")
    return weights


def _tfjs_graph_def(model_json: Path):
    """The TF.js topology as a tf.compat.v1.GraphDef with the shard values in its Const nodes."""
    import tensorflow as tf
    from google.protobuf import json_format

    model = json.loads(model_json.read_text())
    weights = _tfjs_float32_weights(model_json, model)
    graph_def = tf.compat.v1.GraphDef()
    # modelTopology is a GraphDef in protobuf-JSON form (camelCase keys, base64 bytes).
    json_format.ParseDict(model["modelTopology"], graph_def)
    for node in graph_def.node:
        if node.name in weights:
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(weights[node.name]))
        # TF >= 2.x declares _FusedConv2D's extra inputs with a TArgs type list; the TF 1.14
        # exporter predates it. The extra inputs (the BiasAdd bias) are float32, so fill it in.
        if node.op == "_FusedConv2D" and "TArgs" not in node.attr:
            node.attr["TArgs"].list.type.extend([tf.float32.as_datatype_enum] * node.attr["num_args"].i)
    return graph_def


def run_tfjs_graph_in_tf(model_dir: str | Path, images01: np.ndarray) -> np.ndarray:
    """TensorFlow executes the exported TF.js graph: images [N, H, W, 3] in [0, 1] -> its output
    (for the V2 feature-vector graph, [N, 1280])."""
    import tensorflow as tf

    model_json = Path(model_dir) / "model.json" if Path(model_dir).is_dir() else Path(model_dir)
    graph_def = _tfjs_graph_def(model_json)
    consumed = {ref.lstrip("^").split(":")[0] for node in graph_def.node for ref in node.input}
    inputs = [n.name for n in graph_def.node if n.op == "Placeholder"]
    outputs = [n.name for n in graph_def.node if n.name not in consumed and n.op != "Const"]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"{model_json}: expected one input and one output node, got {inputs} and {outputs}")
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(f"{outputs[0]}:0", {f"{inputs[0]}:0": np.asarray(images01, np.float32)})


def run_tflite(path: str | Path, inputs: np.ndarray, num_threads: int = 1,
               tensor_name: str | None = None) -> np.ndarray:
    """LiteRT runs the .tflite on each image of ``inputs`` [N, H, W, 3] (float32 in the model's
    range, or uint8 for a uint8 model) and returns the model output, or the tensor called
    ``tensor_name`` (e.g. the logits before the softmax), dequantized to float32."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():             # keeping intermediates is for debugging: we are
        warnings.simplefilter("ignore")         # reading one, so LiteRT's warning is not news
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads,
                                  experimental_preserve_all_tensors=tensor_name is not None)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    if np.asarray(inputs).dtype != source["dtype"]:
        raise ValueError(f"{path}: the model takes {source['dtype'].__name__} input, got {inputs.dtype}")
    if tuple(source["shape"][1:]) != inputs.shape[1:]:
        interpreter.resize_tensor_input(source["index"], [1, *inputs.shape[1:]])
        interpreter.allocate_tensors()
    if tensor_name is None:
        target = interpreter.get_output_details()[0]
    else:
        target = next(d for d in interpreter.get_tensor_details() if d["name"] == tensor_name)
    results = []
    for image in inputs:                       # the converted models have a fixed batch of 1
        interpreter.set_tensor(source["index"], image[None])
        interpreter.invoke()
        results.append(interpreter.get_tensor(target["index"])[0].copy())
    out = np.stack(results)
    scale, zero_point = target["quantization"]
    if out.dtype in (np.uint8, np.int8):       # real = scale * (q - zero_point)
        return (scale * (out.astype(np.float64) - zero_point)).astype(np.float32)
    return out


def keras_mobilenet_v1(alpha: float, size: int, h5_path: str | Path):
    """keras.applications.MobileNet(alpha, size) with the weights of a legacy Keras .h5 file,
    copied layer by layer and variable by variable by name. It expects input in [-1, 1]."""
    import keras

    model = keras.applications.MobileNet(alpha=alpha, input_shape=(size, size, 3), weights=None,
                                         classes=1000)
    with h5py.File(h5_path, "r") as f:
        root = f.get("model_weights", f)
        stored = {name for name in root if len(root[name])}
        for layer in model.layers:
            if not layer.weights:
                continue
            group = root[layer.name][layer.name]
            # Keras 2 files say "depthwise_kernel:0" where Keras 3 says "kernel".
            values = {key.split(":")[0].replace("depthwise_kernel", "kernel"): group[key][()] for key in group}
            for variable in layer.weights:
                variable.assign(values[variable.name])
            stored.discard(layer.name)
    if stored:
        raise ValueError(f"{h5_path}: layers {sorted(stored)} of the file are not in the Keras model")
    return model
