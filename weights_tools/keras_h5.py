"""Read keras.applications MobileNet (V1) and MobileNetV2 weights from a legacy Keras HDF5 file.

Handles the two layouts of the legacy format: a whole-model ``model.save("x.h5")`` file
(``model_weights/<layer>/<layer>/<var>:0``, Keras 2 and Keras 3 alike; Keras 3 drops the ``:0``)
and a Keras 2 ``save_weights("x.h5")`` file (the same groups at the root).  Layer names follow
keras.applications (``conv_dw_3_bn``, ``block_5_expand``) and are mapped onto TF-Slim names.
The kernels are already in TF-Slim layout (HWIO, depthwise [kh, kw, C, 1]); BatchNorm stays
unfolded.  The Keras heads have 1000 classes (no background class) and are kept that way.

It deliberately does not: read Keras 3 ``.weights.h5`` files (they key weights by layer class
and creation order, not by layer name), rebuild the Keras model, or accept datasets it cannot
place; those are refused with the names that did not map.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np

from mobilenet_np.errors import ArchitectureError, CorruptFileError, UnsupportedFormatError
from mobilenet_np.weights_file import open_hdf5
from weights_tools.source import SourceTensors

TF_BATCHNORM_EPSILON = 1e-3
BATCHNORM_VARIABLES = {"gamma", "beta", "moving_mean", "moving_variance"}

# keras.applications layer name -> TF-Slim scope, one table per network; group "bn" marks the
# BatchNormalization layer that follows a conv.
V1_LAYERS = [(re.compile(r"conv1(?P<bn>_bn)?"), lambda m: "Conv2d_0"),
             (re.compile(r"conv_dw_(\d+)(?P<bn>_bn)?"), lambda m: f"Conv2d_{m[1]}_depthwise"),
             (re.compile(r"conv_pw_(\d+)(?P<bn>_bn)?"), lambda m: f"Conv2d_{m[1]}_pointwise"),
             (re.compile(r"conv_preds"), lambda m: "Logits/Conv2d_1c_1x1")]
V2_LAYERS = [(re.compile(r"(?P<bn>bn_)?Conv1"), lambda m: "Conv"),
             (re.compile(r"expanded_conv_(depthwise|project)(?P<bn>_BN)?"), lambda m: f"expanded_conv/{m[1]}"),
             (re.compile(r"block_(\d+)_(expand|depthwise|project)(?P<bn>_BN)?"),
              lambda m: f"expanded_conv_{m[1]}/{m[2]}"),
             (re.compile(r"Conv_1(?P<bn>_bn)?"), lambda m: "Conv_1"),
             (re.compile(r"predictions"), lambda m: "Logits/Conv2d_1c_1x1")]
NETWORKS = {"MobilenetV1": V1_LAYERS, "MobilenetV2": V2_LAYERS}
LOGITS_SCOPE = "Logits/Conv2d_1c_1x1"


def _slim_name(net: str, layer: str, variable: str) -> str | None:
    """TF-Slim name of dataset ``variable`` of Keras layer ``layer``, or None if it has no place."""
    for pattern, scope_of in NETWORKS[net]:
        match = pattern.fullmatch(layer)
        if match is None:
            continue
        scope = scope_of(match)
        if match.groupdict().get("bn"):
            return f"{net}/{scope}/BatchNorm/{variable}" if variable in BATCHNORM_VARIABLES else None
        if variable in ("kernel", "depthwise_kernel"):     # Keras 2 says depthwise_kernel, Keras 3 kernel
            return f"{net}/{scope}/{'depthwise_weights' if 'depthwise' in scope else 'weights'}"
        if variable == "bias" and scope == LOGITS_SCOPE:
            return f"{net}/{scope}/biases"
    return None


def _weights_group(f: h5py.File, file: str) -> h5py.Group:
    if "model_weights" in f:                       # model.save(): weights beside the config
        return f["model_weights"]
    if "layer_names" in f.attrs:                   # Keras 2 save_weights(): layer groups at the root
        return f
    if "layers" in f and "vars" in f:
        raise UnsupportedFormatError(f"{file}: a Keras 3 .weights.h5 file, which keys weights by layer "
                                     "class and order; save the model with model.save('x.h5') instead")
    raise UnsupportedFormatError(f"{file}: no model_weights group and no layer_names attribute; "
                                 "not a Keras HDF5 weights file")


def _datasets(group: h5py.Group) -> list[tuple[str, str, h5py.Dataset]]:
    """(layer, variable, dataset) for every dataset: ``<layer>/.../<variable>[:0]``."""
    found = []

    def visit(path: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            parts = path.split("/")
            found.append((parts[0], parts[-1].split(":")[0], obj))
    group.visititems(visit)
    return found


def _check_config(f: h5py.File, file: str) -> list[str]:
    """BatchNorm epsilon and activations from the saved model config, when there is one."""
    if "model_config" not in f.attrs:
        return ["no model config in the file: BatchNorm epsilon 1e-3 and ReLU6 assumed"]
    raw = f.attrs["model_config"]
    try:
        layers = json.loads(raw.decode() if isinstance(raw, bytes) else raw)["config"]["layers"]
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptFileError(f"{file}: unreadable model_config attribute ({err})") from None
    bad_eps = [layer["config"]["name"] for layer in layers if layer.get("class_name") == "BatchNormalization"
               and layer["config"].get("epsilon") != TF_BATCHNORM_EPSILON]
    if bad_eps:
        raise ArchitectureError(f"{file}: BatchNorm layers {bad_eps} do not use epsilon 1e-3")
    activations = sorted({_activation_name(layer) for layer in layers} - {None, "softmax"})
    return [f"model config: activations {activations} (the weights are used with ReLU6 regardless)"]


def _activation_name(layer: dict) -> str | None:
    """What an Activation or ReLU layer of the config computes (ReLU layers carry max_value)."""
    if layer.get("class_name") == "Activation":
        return str(layer["config"].get("activation"))
    if layer.get("class_name") == "ReLU":
        max_value = layer["config"].get("max_value")
        return "relu6" if max_value == 6 else f"relu(max_value={max_value})"
    return None


def read_keras_h5(path: str | Path) -> SourceTensors:
    """Import keras.applications MobileNet / MobileNetV2 weights from a legacy .h5 file."""
    file = str(path)
    with open_hdf5(file) as f:
        try:
            return _read(f, file)
        except OSError as err:                      # HDF5 raises OSError on damaged datasets
            raise CorruptFileError(f"{file}: cannot read a dataset ({err})") from None


def _read(f: h5py.File, file: str) -> SourceTensors:
    datasets = _datasets(_weights_group(f, file))
    layers = {layer for layer, _, _ in datasets}
    nets = [net for net, table in NETWORKS.items()
            if any(p.fullmatch(layer) for p, _ in table for layer in layers)]
    if len(nets) != 1:
        raise ArchitectureError(f"{file}: layer names match {nets or 'neither'} of keras.applications "
                                "MobileNet / MobileNetV2")
    net = nets[0]
    tensors: dict[str, np.ndarray] = {}
    unmapped = []
    for layer, variable, dataset in datasets:
        slim = _slim_name(net, layer, variable)
        if slim is None or slim in tensors:
            unmapped.append(dataset.name)
            continue
        value = np.asarray(dataset[()], dtype=np.float32)
        if slim.endswith(f"{LOGITS_SCOPE}/weights") and value.ndim == 2:
            value = value.reshape(1, 1, *value.shape)        # Dense kernel [C, K] -> 1x1 conv HWIO
        tensors[slim] = value
    if unmapped:
        raise ArchitectureError(f"{file}: datasets with no (or a second) place in {net}: {unmapped}")
    notes = _check_config(f, file)
    logits = f"{net}/{LOGITS_SCOPE}/weights"
    if logits in tensors:
        notes.append(f"Keras head with {tensors[logits].shape[-1]} classes and no background class, "
                     "kept as is: class k is line k + 1 of the 1001-line ImageNet labels file")
    ignored = {"optimizer_weights": "optimizer state, not model weights"} if "optimizer_weights" in f else {}
    return SourceTensors(tensors=tensors, source_format="keras-h5", source_files=[file],
                         batchnorm_folded=False, ignored=ignored, notes=notes, input_size=_input_size(f))


def _input_size(f: h5py.File) -> tuple[int, int] | None:
    """(height, width) of the saved model's input layer, when the file has a model config."""
    raw = f.attrs.get("model_config")
    if raw is None:
        return None
    try:
        layers = json.loads(raw.decode() if isinstance(raw, bytes) else raw)["config"]["layers"]
        shape = layers[0]["config"].get("batch_input_shape") or layers[0]["config"].get("batch_shape")
        return (int(shape[1]), int(shape[2]))
    except (ValueError, KeyError, TypeError, IndexError):
        return None
