"""Test helper: small MobileNet weight sources written from scratch, in every format we read
that needs no TensorFlow to write (weights file, TF.js graph model, Keras .h5).

The values are random; the names, shapes, graph wiring and layouts are those the readers
expect, taken from ``mobilenet_np.spec``.  The hostile-file and fuzz tests start from these
and then break them.  TF checkpoints come from ``tf_checkpoints.py`` (TensorFlow writes them),
TFLite files from ../shared.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import h5py
import numpy as np

from mobilenet_np import spec, weights_file

SMALL = ("mobilenet_v1", 0.25)          # the smallest network: 0.2 M values


def random_tensors(arch: spec.Architecture, rng, num_classes: int = 0, folded: bool = False) -> dict:
    """Plausible values for every tensor of ``arch`` (variances positive)."""
    out = {}
    for name, shape in arch.variables(num_classes, folded).items():
        value = rng.standard_normal(shape).astype(np.float32) * 0.1
        if name.endswith(("moving_variance", "gamma")):
            value = np.abs(value) + 0.5
        out[name] = value
    return out


def weights_attrs(arch: spec.Architecture, num_classes: int = 0, folded: bool = False) -> dict:
    return {"architecture": arch.name, "depth_multiplier": arch.depth_multiplier,
            "default_input_size": [128, 128], "input_range": "[-1, 1]", "num_classes": num_classes,
            "labels_offset": 1 if num_classes == 1001 else 0, "batchnorm_folded": folded,
            "batchnorm_epsilon": spec.TF_BATCHNORM_EPSILON, "weights_choice": "n/a",
            "source_format": "mobilenet-np", "source_files": [], "converter_version": "test"}


def write_weights_file(path, rng, num_classes: int = 0, folded: bool = False) -> Path:
    arch = spec.build(*SMALL)
    weights_file.write(path, random_tensors(arch, rng, num_classes, folded), weights_attrs(arch, num_classes, folded))
    return Path(path)


# --- TF.js graph model ---------------------------------------------------------------------

def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _const(name: str, shape) -> dict:
    dims = [{"size": str(d)} for d in shape]
    return {"name": name, "op": "Const", "attr": {"dtype": {"type": "DT_FLOAT"},
                                                  "value": {"tensor": {"dtype": "DT_FLOAT", "tensorShape": {"dim": dims}}}}}


def write_tfjs(folder, rng, shard: str = "group1-shard1of1.bin") -> Path:
    """A TF.js graph model of SMALL with folded BatchNorm, wired as the TF-Hub exports are:
    each kernel feeds a fused conv whose third input is its bias.  Returns model.json's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arch = spec.build(*SMALL)
    size = 128
    nodes = [{"name": "images", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": [
        {"size": "-1"}, {"size": str(size)}, {"size": str(size)}, {"size": "3"}]}}}}]
    manifest, blobs, previous = [], [], "images"
    for k, layer in enumerate(arch.layers):
        kernel = f"module/{arch.scope}/{layer.scope}/{layer.weight_name}"
        bias = f"module_apply_default/{arch.scope}/{layer.scope}/Conv2D_bn_offset"
        for name, shape in ((kernel, layer.weight_shape), (bias, (layer.out_depth,))):
            nodes.append(_const(name, shape))
            manifest.append({"name": name, "shape": list(shape), "dtype": "float32"})
            blobs.append(rng.standard_normal(shape).astype("<f4") * 0.1)
        conv = f"module_apply_default/{arch.scope}/{layer.scope}/conv{k}"
        fused = ["BiasAdd", "Relu6"] if layer.relu6 else ["BiasAdd"]
        nodes.append({"name": conv, "op": "FusedDepthwiseConv2dNative" if layer.kind == "depthwise" else "_FusedConv2D",
                      "input": [previous, kernel, bias],
                      "attr": {"fused_ops": {"list": {"s": [_b64(op) for op in fused]}},
                               "padding": {"s": _b64("SAME")},
                               "strides": {"list": {"i": ["1", str(layer.stride), str(layer.stride), "1"]}},
                               "dilations": {"list": {"i": ["1", "1", "1", "1"]}}}})
        previous = conv
    model = {"format": "graph-model", "generatedBy": "test", "convertedBy": "test",
             "modelTopology": {"node": nodes, "library": {}, "versions": {}},
             "weightsManifest": [{"paths": [shard], "weights": manifest}]}
    (folder / shard).parent.mkdir(parents=True, exist_ok=True)
    (folder / shard).write_bytes(b"".join(b.tobytes() for b in blobs))
    path = folder / "model.json"
    path.write_text(json.dumps(model))
    return path


# --- Keras .h5 -----------------------------------------------------------------------------

def keras_names() -> dict[str, tuple[str, str]]:
    """TF-Slim name -> (Keras layer, Keras variable) for SMALL, by inverting the reader's table."""
    from weights_tools.keras_h5 import NETWORKS, _slim_name

    arch = spec.build(*SMALL)
    out = {}
    for layer in NETWORKS[arch.scope]:
        for variable in ("kernel", "depthwise_kernel", "bias", *spec.BATCHNORM_STATS):
            slim = _slim_name(arch.scope, layer, variable)
            if slim and (variable == "depthwise_kernel") == slim.endswith("/depthwise_weights"):
                out[slim] = (layer, variable)
    return out


def write_keras_h5(path, rng) -> Path:
    """A Keras 2 ``model.save`` file of SMALL (no classifier), with a short model config."""
    arch = spec.build(*SMALL)
    names = keras_names()
    config = {"class_name": "Model", "config": {"layers": [
        {"class_name": "InputLayer", "config": {"name": "input_1", "batch_input_shape": [None, 128, 128, 3]}},
        {"class_name": "BatchNormalization", "config": {"name": "conv1_bn", "epsilon": spec.TF_BATCHNORM_EPSILON}},
        {"class_name": "ReLU", "config": {"name": "conv1_relu", "max_value": 6.0}}]}}
    with h5py.File(path, "w") as f:
        f.attrs.update({"keras_version": "2.2.4", "backend": "tensorflow", "model_config": json.dumps(config)})
        group = f.create_group("model_weights")
        for slim, value in random_tensors(arch, rng).items():
            layer, variable = names[slim]
            group.create_dataset(f"{layer}/{layer}/{variable}:0", data=value)
    return Path(path)
