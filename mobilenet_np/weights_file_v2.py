"""Version 2 of the weights file: a quantized MobileNet, exactly (docs/weights-format.md, "Version 2").

The datasets keep version 1's TF-Slim names and layouts with integer values: uint8 or int8
kernels and int32 biases, each carrying its ``scale``, ``zero_point``, ``quantized_axis`` and
(kernels) ``fused_activation`` as dataset attributes; ``activations/<name>`` groups carry each
activation tensor's scale, zero point and dtype.  This module holds the in-memory form
(``QuantizedTensor``, ``ActivationQuantization``, ``QuantizedWeightsFile``), the names a file
must hold (``activation_names``), every check of attributes and values (``check_quantized``),
and the HDF5 reading and writing of the datasets and groups.  ``weights_file`` opens the file,
checks the version and the shapes, and calls these; requantization multipliers, shifts and
clamps are not stored: the integer forward pass derives them from the scales.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import spec
from .errors import ArchitectureError, CorruptFileError

FORMAT_VERSION = 2
# quantization attribute -> the dtype of kernels and activations
QUANTIZATIONS = {"uint8-per-tensor": "uint8", "int8-per-channel": "int8"}
GLOBAL_POOL_OPS = ("AVERAGE_POOL_2D", "MEAN")
LOGITS_OPS = ("CONV_2D", "FULLY_CONNECTED")
OUTPUT_OPS = ("SOFTMAX", "NONE")
FUSED_ACTIVATIONS = ("NONE", "RELU", "RELU6")
ACTIVATIONS_GROUP = "activations"


@dataclass
class QuantizedTensor:
    """One stored integer tensor: real = scale * (values - zero_point), per tensor (one scale)
    or per channel along ``quantized_axis`` of ``values`` (in the TF-Slim layout).
    ``fused_activation`` ("RELU6", "RELU", "NONE") belongs to a kernel's layer; None on biases."""

    values: np.ndarray
    scale: np.ndarray                   # float32 [1] or [C]
    zero_point: np.ndarray              # int32, as long as scale
    quantized_axis: int = 0
    fused_activation: str | None = None

    def __post_init__(self):
        self.scale = np.asarray(self.scale, np.float32).reshape(-1)
        self.zero_point = np.asarray(self.zero_point).astype(np.int32).reshape(-1)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype


@dataclass(frozen=True)
class ActivationQuantization:
    """An activation tensor's quantization: real = scale * (q - zero_point), q of ``dtype``."""

    scale: float
    zero_point: int
    dtype: str                          # "uint8" or "int8"


@dataclass
class QuantizedWeightsFile:
    """A version-2 file read into memory (``weights_file.read`` returns it for version 2)."""

    path: str
    tensors: dict[str, QuantizedTensor]
    activations: dict[str, ActivationQuantization]
    attrs: dict = field(default_factory=dict)

    @property
    def architecture(self) -> spec.Architecture:
        return spec.build(self.attrs["architecture"], float(self.attrs["depth_multiplier"]))


def residual_add_name(layer: spec.ConvLayer) -> str:
    """The activation name of the residual ADD after ``layer`` (a V2 project conv):
    ``expanded_conv_4/project`` -> ``expanded_conv_4/add``."""
    return f"{layer.scope.rsplit('/', 1)[0]}/add"


def activation_names(arch: spec.Architecture, num_classes: int, output_op: str) -> list[str]:
    """Every ``activations/<name>`` a file of this model holds, in execution order."""
    names = ["input"]
    for layer in arch.layers:
        names.append(layer.scope)
        if layer.adds_residual:
            names.append(residual_add_name(layer))
    names.append("global_pool")
    if num_classes:
        names.append("Logits")
        if output_op == "SOFTMAX":
            names.append("Predictions")
    return names


def check_v2_attrs(attrs: dict, where: str) -> None:
    """The root attributes version 2 adds (after ``check_attrs`` of version 1's)."""
    def bad(name: str, expected: str) -> CorruptFileError:
        return CorruptFileError(f"{where}: root attribute {name}={attrs.get(name)!r} is not {expected}")

    for name, allowed in (("quantization", tuple(QUANTIZATIONS)), ("global_pool_op", GLOBAL_POOL_OPS),
                          ("output_op", OUTPUT_OPS)):
        if attrs.get(name) not in allowed:
            raise bad(name, " or ".join(allowed))
    if int(attrs["num_classes"]) and attrs.get("logits_op") not in LOGITS_OPS:
        raise bad("logits_op", " or ".join(LOGITS_OPS) + " (the model has a classifier)")
    if attrs["output_op"] == "SOFTMAX":
        if not int(attrs["num_classes"]):
            raise bad("output_op", "NONE for a model without a classifier")
        beta = attrs.get("softmax_beta")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (math.isfinite(beta) and beta > 0):
            raise bad("softmax_beta", "a positive finite number (output_op is SOFTMAX)")
    if attrs.get("global_pool_keep_dims", True) not in (True, False, 0, 1):
        raise bad("global_pool_keep_dims", "a boolean")
    if attrs["batchnorm_folded"] not in (True, 1):
        raise bad("batchnorm_folded", "true (quantized models fold BatchNorm)")


def _check_params(name: str, t: QuantizedTensor, dtype: np.dtype, channels: int, per_tensor: bool,
                  where: str) -> None:
    scale, zero_point = t.scale, t.zero_point
    if len(scale) not in ((1,) if per_tensor else (1, channels)) or len(zero_point) != len(scale):
        raise CorruptFileError(f"{where}: tensor {name} has {len(scale)} scales and {len(zero_point)} zero "
                               f"points; expected {'1' if per_tensor else f'1 or {channels}'} of each")
    if not np.all(np.isfinite(scale) & (scale > 0)):
        raise CorruptFileError(f"{where}: tensor {name} has a scale that is not positive and finite")
    info = np.iinfo(dtype)
    if np.any(zero_point < info.min) or np.any(zero_point > info.max):
        raise CorruptFileError(f"{where}: tensor {name} has a zero point outside the {dtype} range")


def check_quantized(arch: spec.Architecture, tensors: dict[str, QuantizedTensor],
                    activations: dict[str, ActivationQuantization], attrs: dict, where: str) -> None:
    """Every value of a version-2 model: dtypes, scales, zero points, axes, fused activations,
    and the activation parameters of every tensor the integer graph computes.  Run by
    ``weights_file.read`` and ``weights_file.write_quantized`` alike.  Names and shapes are
    ``weights_file.check_tensors``'s (version 1's, folded)."""
    dtype = np.dtype(QUANTIZATIONS[attrs["quantization"]])
    per_tensor = attrs["quantization"] == "uint8-per-tensor"
    for name in sorted(tensors):
        t = tensors[name]
        if not isinstance(t, QuantizedTensor):
            raise ArchitectureError(f"{where}: tensor {name} is not a quantized tensor")
        bias = name.endswith("/biases")
        want = np.dtype(np.int32) if bias else dtype
        if t.values.dtype != want:
            raise ArchitectureError(f"{where}: tensor {name} has dtype {t.values.dtype}; a {attrs['quantization']} "
                                    f"model stores {want}")
        depthwise = name.endswith("/depthwise_weights")
        axis = 0 if bias else 2 if depthwise else 3
        if t.quantized_axis != axis:
            raise CorruptFileError(f"{where}: tensor {name} has quantized_axis {t.quantized_axis}; expected {axis}")
        channels = t.values.shape[axis]
        _check_params(name, t, want, channels, per_tensor and not bias, where)
        if bias:
            if np.any(t.zero_point != 0):
                raise CorruptFileError(f"{where}: tensor {name} (an int32 bias) has a non-zero zero point")
            if t.fused_activation is not None:
                raise CorruptFileError(f"{where}: tensor {name} (a bias) has a fused_activation")
        elif t.fused_activation not in FUSED_ACTIVATIONS:
            raise CorruptFileError(f"{where}: tensor {name} has fused_activation {t.fused_activation!r}; expected "
                                   f"one of {', '.join(FUSED_ACTIVATIONS)}")
    expected = activation_names(arch, int(attrs["num_classes"]), attrs["output_op"])
    missing = [n for n in expected if n not in activations]
    unknown = sorted(set(activations) - set(expected))
    if missing or unknown:
        problem = (f"lacks {ACTIVATIONS_GROUP}/{missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                   if missing else f"has an unknown {ACTIVATIONS_GROUP}/{unknown[0]}")
        raise ArchitectureError(f"{where}: {problem} (a {arch.name} version-2 file has one group per activation "
                                "tensor with its scale, zero point and dtype)")
    for name in expected:
        a = activations[name]
        if a.dtype != dtype.name:
            raise CorruptFileError(f"{where}: activation {name} is {a.dtype}; a {attrs['quantization']} model's "
                                   f"activations are {dtype.name}")
        if isinstance(a.scale, bool) or not isinstance(a.scale, (int, float)) or not (math.isfinite(a.scale) and a.scale > 0):
            raise CorruptFileError(f"{where}: activation {name} has scale {a.scale!r}; expected a positive finite number")
        info = np.iinfo(dtype)
        if isinstance(a.zero_point, bool) or not isinstance(a.zero_point, int) or not info.min <= a.zero_point <= info.max:
            raise CorruptFileError(f"{where}: activation {name} has zero point {a.zero_point!r}; expected an "
                                   f"integer in the {dtype.name} range")


# --- HDF5 -----------------------------------------------------------------------------------

def write_datasets(f, tensors: dict[str, QuantizedTensor], activations: dict[str, ActivationQuantization]) -> None:
    """The datasets (one Fletcher-32 chunk each) and the activation groups, into an open h5py file."""
    for name in sorted(tensors):
        t = tensors[name]
        value = np.ascontiguousarray(t.values)
        checked = {"chunks": value.shape, "fletcher32": True} if value.size else {}
        d = f.create_dataset(name, data=value, **checked)
        d.attrs["scale"] = np.asarray(t.scale, np.float32)
        d.attrs["zero_point"] = np.asarray(t.zero_point, np.int32)
        d.attrs["quantized_axis"] = int(t.quantized_axis)
        if t.fused_activation is not None:
            d.attrs["fused_activation"] = t.fused_activation
    for name, a in activations.items():
        g = f.create_group(f"{ACTIVATIONS_GROUP}/{name}")
        g.attrs["scale"] = np.float32(a.scale)
        g.attrs["zero_point"] = np.int32(a.zero_point)
        g.attrs["dtype"] = a.dtype


def _scalar(value, kind, what: str, where: str):
    value = np.asarray(value)
    if value.size != 1 or value.dtype.kind not in kind:
        raise CorruptFileError(f"{where}: {what} is not a single {'integer' if kind == 'iu' else 'number'}")
    return value.reshape(-1)[0].item()


def read_tensor(dataset, name: str, where: str) -> QuantizedTensor:
    """One integer dataset with its attributes; its shape and storage were checked."""
    import h5py

    if dataset.dtype.kind not in "iu":
        raise ArchitectureError(f"{where}: tensor {name} has dtype {dataset.dtype}; a version-2 file stores "
                                "integers")
    # As for floats (weights_common.standard_float): a damaged integer type (precision, offset)
    # converts every value wrongly, and the data checksum cannot see it.
    if not any(dataset.id.get_type().equal(t) for t in (
            h5py.h5t.STD_U8LE, h5py.h5t.STD_U8BE, h5py.h5t.STD_I8LE, h5py.h5t.STD_I8BE,
            h5py.h5t.STD_I32LE, h5py.h5t.STD_I32BE)):
        raise CorruptFileError(f"{where}: dataset {dataset.name} has a non-standard integer type (a damaged "
                               "datatype?); refused")
    a = dataset.attrs
    missing = [k for k in ("scale", "zero_point", "quantized_axis") if k not in a]
    if missing:
        raise CorruptFileError(f"{where}: tensor {name} lacks the attribute(s) {', '.join(missing)}")
    scale, zero_point = np.asarray(a["scale"]).reshape(-1), np.asarray(a["zero_point"]).reshape(-1)
    if scale.dtype.kind != "f" or zero_point.dtype.kind not in "iu" or len(scale) > 1 << 20:
        raise CorruptFileError(f"{where}: tensor {name} has a scale of {scale.dtype} or a zero point of "
                               f"{zero_point.dtype}; expected float32 and int32")
    activation = a.get("fused_activation")
    if isinstance(activation, bytes):
        activation = activation.decode()
    return QuantizedTensor(np.asarray(dataset[()]), scale, zero_point,
                           int(_scalar(a["quantized_axis"], "iu", f"tensor {name}'s quantized_axis", where)),
                           None if activation is None else str(activation))


def read_activations(f, where: str) -> dict[str, ActivationQuantization]:
    """Every group below ``activations/`` that carries a scale, by its name below it."""
    import h5py

    root = f.get(ACTIVATIONS_GROUP)
    if not isinstance(root, h5py.Group):
        raise ArchitectureError(f"{where}: no {ACTIVATIONS_GROUP} group (a version-2 file needs one)")
    found: dict[str, ActivationQuantization] = {}

    def visit(name, obj):        # (a dataset here is an unknown tensor to weights_file.check_tensors)
        if "scale" in obj.attrs or "zero_point" in obj.attrs or "dtype" in obj.attrs:
            what = f"activation {name}"
            missing = [k for k in ("scale", "zero_point", "dtype") if k not in obj.attrs]
            if missing:
                raise CorruptFileError(f"{where}: {what} lacks the attribute(s) {', '.join(missing)}")
            dtype = obj.attrs["dtype"]
            dtype = dtype.decode() if isinstance(dtype, bytes) else str(dtype)
            found[name] = ActivationQuantization(float(_scalar(obj.attrs["scale"], "f", f"{what}'s scale", where)),
                                                 int(_scalar(obj.attrs["zero_point"], "iu", f"{what}'s zero point",
                                                             where)), dtype)

    root.visititems(visit)
    return found

