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
from pathlib import Path

import h5py
import numpy as np

from mobilenet_np import spec
from mobilenet_np.errors import ArchitectureError, CorruptFileError, UnsupportedFormatError, WeightsError
from mobilenet_np.weights_file import check_layout, hdf5_datasets, open_hdf5
from weights_tools.recognise import Declared, detect
from weights_tools.source import SourceTensors

BATCHNORM_VARIABLES = set(spec.BATCHNORM_STATS)
LOGITS = spec.ConvLayer(spec.LOGITS_SCOPE, "pointwise", 1, 1, 0, 0, relu6=False)


def _v1_keras_names(scope: str) -> tuple[str, str]:
    """keras.applications MobileNet's (conv, BatchNorm) layer names for a TF-Slim V1 scope:
    Conv2d_0 -> conv1, conv1_bn; Conv2d_3_depthwise -> conv_dw_3, conv_dw_3_bn."""
    if scope == "Conv2d_0":
        return "conv1", "conv1_bn"
    index, kind = scope.split("_")[1:3]
    name = f"conv_{'dw' if kind == 'depthwise' else 'pw'}_{index}"
    return name, f"{name}_bn"


def _v2_keras_names(scope: str) -> tuple[str, str]:
    """keras.applications MobileNetV2's names: Conv -> Conv1, bn_Conv1; expanded_conv/depthwise ->
    expanded_conv_depthwise(_BN); expanded_conv_5/expand -> block_5_expand(_BN); Conv_1 -> Conv_1(_bn)."""
    if scope == "Conv":
        return "Conv1", "bn_Conv1"
    if scope == "Conv_1":
        return "Conv_1", "Conv_1_bn"
    block, op = scope.split("/")
    name = f"expanded_conv_{op}" if block == "expanded_conv" else f"block_{block.rsplit('_', 1)[1]}_{op}"
    return name, f"{name}_BN"


def _keras_layers(name: str, names_of, logits: str) -> dict[str, tuple[spec.ConvLayer, bool]]:
    """Keras layer name -> (the spec layer it holds, whether it is that layer's BatchNorm), for
    every layer of the architecture (the width does not change names) and the classifier."""
    table = {logits: (LOGITS, False)}
    for layer in spec.build(name, 1.0).layers:
        conv, bn = names_of(layer.scope)
        table[conv], table[bn] = (layer, False), (layer, True)
    return table


NETWORKS = {spec.SCOPES["mobilenet_v1"]: _keras_layers("mobilenet_v1", _v1_keras_names, "conv_preds"),
            spec.SCOPES["mobilenet_v2"]: _keras_layers("mobilenet_v2", _v2_keras_names, "predictions")}


def _slim_name(net: str, layer: str, variable: str) -> str | None:
    """TF-Slim name of dataset ``variable`` of Keras layer ``layer``, or None if it has no place."""
    if layer not in NETWORKS[net]:
        return None
    conv, is_bn = NETWORKS[net][layer]
    names = spec.tensor_names(net, conv.scope, conv.weight_name)
    if is_bn:
        return f"{net}/{conv.scope}/BatchNorm/{variable}" if variable in BATCHNORM_VARIABLES else None
    if variable in ("kernel", "depthwise_kernel"):     # Keras 2 says depthwise_kernel, Keras 3 kernel
        return names.weights
    if variable == "bias" and conv is LOGITS:
        return names.biases
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


def _datasets(group: h5py.Group, file: str) -> list[tuple[str, str, h5py.Dataset]]:
    """(layer, variable, dataset) for every dataset: ``<layer>/.../<variable>[:0]``; each one
    stored in the file itself (``hdf5_datasets`` refuses external and virtual storage)."""
    return [(path.split("/")[0], path.split("/")[-1].split(":")[0], obj)
            for path, obj in hdf5_datasets(group, file).items()]


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
               and layer["config"].get("epsilon") != spec.TF_BATCHNORM_EPSILON]
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
        except WeightsError:
            raise
        except (OSError, RuntimeError, KeyError, TypeError, ValueError, UnicodeDecodeError, RecursionError) as err:
            # h5py raises these on damaged object headers, attributes and datasets.
            raise CorruptFileError(f"{file}: damaged Keras HDF5 file ({type(err).__name__}: {err})") from None


def _read(f: h5py.File, file: str) -> SourceTensors:
    datasets = _datasets(_weights_group(f, file), file)
    layers = {layer for layer, _, _ in datasets}
    nets = [net for net, table in NETWORKS.items() if layers & set(table)]
    if len(nets) != 1:
        raise ArchitectureError(f"{file}: layer names match {nets or 'neither'} of keras.applications "
                                "MobileNet / MobileNetV2")
    net = nets[0]
    logits = spec.tensor_names(net, spec.LOGITS_SCOPE).weights
    placed: dict[str, h5py.Dataset] = {}
    unmapped = []
    for layer, variable, dataset in datasets:
        slim = _slim_name(net, layer, variable)
        if slim is None or slim in placed:
            unmapped.append(dataset.name)
        else:
            placed[slim] = dataset
    if unmapped:
        raise ArchitectureError(f"{file}: datasets with no place (or a second one) in {net}: {unmapped}")
    # Every declared shape and dtype is checked against the architecture before any data is read,
    # so no damaged or hostile shape can size an allocation.
    declared = {}
    for slim, dataset in placed.items():
        if dataset.dtype.kind != "f":
            raise ArchitectureError(f"{file}: dataset {dataset.name} has dtype {dataset.dtype}; "
                                    "weights must be floating point")
        shape = dataset.shape
        if slim == logits and len(shape) == 2:
            shape = (1, 1, *shape)                       # Dense kernel [C, K] -> 1x1 conv HWIO
        declared[slim] = Declared(shape)
    detect(declared, file)
    check_layout(placed.values(), file)
    notes = _check_config(f, file)
    tensors = {slim: np.asarray(dataset[()], dtype=np.float32).reshape(declared[slim].shape)
               for slim, dataset in placed.items()}
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
