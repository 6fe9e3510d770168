"""The peer engines of the benchmark, all fed the SAME weights as a mobilenet-np model.

Every peer gets its network from a mobilenet-np model's ``tensors`` (TF-Slim names, unfolded
BatchNorm), never from a download:

* **ONNX** (run by ONNX Runtime and OpenVINO): a graph written node by node with ``onnx.helper``
  from ``model.arch.layers``: x*2-1, NHWC->NCHW, one Conv per layer with BatchNorm folded in
  (in float64, then cast to float32) and explicit TF-SAME pads from ``spec.geometry`` (so they
  are right for the export's input size), Clip(0, 6) for ReLU6, Add for V2's residuals,
  GlobalAveragePool + Flatten.  The batch dimension is dynamic.
* **Keras** (run by TensorFlow, and converted for LiteRT): ``keras.applications.MobileNet`` /
  ``MobileNetV2`` with ``Rescaling(2, -1)`` in front; our tensors are copied in layer by layer
  through a name map (every Keras layer that has weights must be filled, or the export fails).
* **TFLite** (run by LiteRT with its default XNNPACK delegate): that Keras model through
  ``tf.lite.TFLiteConverter`` in float32, no quantization, no optimisation flags.

Each export is compared with ``model(x)`` on seeded random inputs and must agree to
``TOLERANCE`` before anything is timed (``check``); ``run.py`` refuses to time one that does not.
Exports are cached under ``benchmarks/results/.cache/<key>/``, keyed by a hash of the weights,
the input size and ``EXPORT_VERSION``.

The engines (``ENGINES``) share one interface: ``engine.load(model, batch, threads)`` returns
a function ``images [batch, H, W, 3] float32 in [0, 1] -> features [batch, D] float32``; what
each call costs includes the engine's own input and output copies, as a user would see it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import mobilenet_np as mnp
from mobilenet_np import spec

SEED = 20261122                 # weights of the benchmark models
INPUT_SEED = 7                  # the images every engine sees
TOLERANCE = 1e-4                # max |peer - mobilenet-np| allowed before timing
EXPORT_VERSION = 1              # bump when an exporter changes: invalidates the cache
ONNX_OPSET = 17
RESULTS = Path(__file__).resolve().parent / "results"
CACHE = RESULTS / ".cache"


@dataclass(frozen=True)
class ModelConfig:
    key: str
    architecture: str
    depth_multiplier: float
    input_size: int

    @property
    def label(self) -> str:
        version = "V1" if self.architecture == "mobilenet_v1" else "V2"
        return f"{version} {self.depth_multiplier:g}_{self.input_size}"


MODELS = {
    "v1": ModelConfig("v1", "mobilenet_v1", 0.5, 160),
    "v2": ModelConfig("v2", "mobilenet_v2", 0.5, 96),
    # the rest of the family (``run.py --family``): same seed, same exports, fewer engines
    "v1_100_224": ModelConfig("v1_100_224", "mobilenet_v1", 1.0, 224),
    "v2_100_224": ModelConfig("v2_100_224", "mobilenet_v2", 1.0, 224),
    "v2_140_224": ModelConfig("v2_140_224", "mobilenet_v2", 1.4, 224),
    "v1_025_128": ModelConfig("v1_025_128", "mobilenet_v1", 0.25, 128),
    "v2_035_96": ModelConfig("v2_035_96", "mobilenet_v2", 0.35, 96),
}
SEED_MODELS = ("v1", "v2")
FAMILY = ("v1_100_224", "v2_100_224", "v2_140_224", "v1_025_128", "v2_035_96")
FAMILY_ENGINES = ("numba", "litert", "onnxruntime")     # the family is timed against these only


def build_model(key: str, backend: str = "numba") -> mnp.MobileNet:
    """The benchmark's mobilenet-np model (feature-vector head, seeded random weights)."""
    cfg = MODELS[key]
    return mnp.build(cfg.architecture, cfg.depth_multiplier, cfg.input_size, num_classes=0, seed=SEED,
                     backend=backend)


def images(model: mnp.MobileNet, batch: int, seed: int = INPUT_SEED) -> np.ndarray:
    h, w = model.input_size
    return np.random.default_rng(seed).random((batch, h, w, 3), dtype=np.float32)


def cache_dir(model: mnp.MobileNet) -> Path:
    key = hashlib.sha256(f"{EXPORT_VERSION}:{model.weights_sha256}:{model.input_size}".encode()).hexdigest()[:16]
    path = CACHE / f"{model.name}-{key}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"output shape {a.shape} differs from mobilenet-np's {b.shape}")
    return float(np.max(np.abs(a - b)))


def check(run, model: mnp.MobileNet, batch: int, what: str) -> float:
    """Run an export on seeded images and compare with ``model(x)``; raise if it disagrees."""
    x = images(model, batch, seed=INPUT_SEED + 1000 + batch)
    diff = max_abs_diff(run(x), model(x))
    if not diff <= TOLERANCE:        # also catches NaN
        raise ExportMismatch(f"{what}: max |diff| {diff:.3g} against mobilenet-np exceeds {TOLERANCE:g}")
    return diff


class ExportMismatch(RuntimeError):
    """An export whose output disagrees with mobilenet-np: it must not be timed."""


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def installed(*modules: str) -> str | None:
    """None if every module imports, else the reason why not."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


# --- BatchNorm folded, in float64 -----------------------------------------------------------

def folded_layers(model: mnp.MobileNet, input_hw=None):
    """(geometry, weight in the layer's TF layout, bias) per layer, BatchNorm folded in float64."""
    arch = model.arch
    epsilon = float(model.attrs.get("batchnorm_epsilon", spec.TF_BATCHNORM_EPSILON))
    out = []
    for g in spec.geometry(arch, tuple(input_hw or model.input_size)):
        layer = g.layer
        prefix = f"{arch.scope}/{layer.scope}"
        w = model.tensors[f"{prefix}/{layer.weight_name}"].astype(np.float64)
        if model.folded:
            out.append((g, w.astype(np.float32), model.tensors[f"{prefix}/biases"].astype(np.float32)))
            continue
        gamma, beta, mean, var = (model.tensors[f"{prefix}/BatchNorm/{s}"].astype(np.float64)
                                  for s in ("gamma", "beta", "moving_mean", "moving_variance"))
        scale = gamma / np.sqrt(var + epsilon)
        w = w * (scale[:, None] if layer.kind == "depthwise" else scale)   # output-channel axis
        out.append((g, w.astype(np.float32), (beta - mean * scale).astype(np.float32)))
    return out


# --- ONNX -----------------------------------------------------------------------------------

def onnx_model(model: mnp.MobileNet, input_hw=None):
    """The feature-vector network as an ONNX graph: images [N, H, W, 3] in [0, 1] -> [N, D]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, w = tuple(input_hw or model.input_size)
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    const("two", 2.0)
    const("one", 1.0)
    const("zero", 0.0)
    const("six", 6.0)
    nodes.append(helper.make_node("Mul", ["images", "two"], ["scaled"]))
    nodes.append(helper.make_node("Sub", ["scaled", "one"], ["centered"]))      # hub_input: x*2-1
    nodes.append(helper.make_node("Transpose", ["centered"], ["x_nchw"], perm=[0, 3, 1, 2]))
    x = "x_nchw"
    block_input = None
    for i, (g, weight, bias) in enumerate(folded_layers(model, (h, w))):
        layer = g.layer
        if layer.block_start:
            block_input = x
        name = layer.scope.replace("/", "_")
        if layer.kind == "depthwise":                     # [k,k,C,1] -> [C,1,k,k], group=C
            w_oihw = weight.transpose(2, 3, 0, 1)
            group = layer.in_depth
        else:                                             # HWIO -> OIHW
            w_oihw = weight.transpose(3, 2, 0, 1)
            group = 1
        top, bottom, left, right = g.pad
        y = f"{name}_conv"
        nodes.append(helper.make_node(
            "Conv", [x, const(f"{name}_w", np.ascontiguousarray(w_oihw)), const(f"{name}_b", bias)], [y],
            kernel_shape=[layer.kernel, layer.kernel], strides=[layer.stride, layer.stride],
            pads=[top, left, bottom, right], group=group, name=f"{name}/Conv"))
        if layer.relu6:
            nodes.append(helper.make_node("Clip", [y, "zero", "six"], [f"{name}_relu6"]))
            y = f"{name}_relu6"
        if layer.adds_residual:
            nodes.append(helper.make_node("Add", [y, block_input], [f"{name}_add"]))
            y = f"{name}_add"
        x = y
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], axis=1))
    graph = helper.make_graph(
        nodes, f"{model.name}_feature_vector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", h, w, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", model.num_features])],
        inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="mobilenet-np benchmarks", ir_version=8)
    onnx.checker.check_model(proto)
    return proto


def export_onnx(model: mnp.MobileNet) -> Path:
    path = cache_dir(model) / "model.onnx"
    if not path.exists():
        _atomic_write(path, onnx_model(model).SerializeToString())
    return path


# --- Keras and TFLite ------------------------------------------------------------------------

def keras_names(architecture: str, scope: str) -> tuple[str, str]:
    """(conv layer, BatchNorm layer) of keras.applications for one of our TF-Slim scopes."""
    if architecture == "mobilenet_v1":
        if scope == "Conv2d_0":
            return "conv1", "conv1_bn"
        unit, kind = scope[len("Conv2d_"):].split("_")            # "3_depthwise" -> 3, depthwise
        conv = f"conv_{'dw' if kind == 'depthwise' else 'pw'}_{unit}"
        return conv, f"{conv}_bn"
    if scope == "Conv":
        return "Conv1", "bn_Conv1"
    if scope == "Conv_1":
        return "Conv_1", "Conv_1_bn"
    block, part = scope.split("/")                                  # expanded_conv_3/expand
    conv = "expanded_conv_" + part if block == "expanded_conv" else f"block_{block.rsplit('_', 1)[1]}_{part}"
    return conv, f"{conv}_BN"


def keras_model(model: mnp.MobileNet):
    """keras.applications MobileNet/MobileNetV2 (feature vector, average pool) behind
    Rescaling(2, -1), holding our tensors.  Input [N, H, W, 3] in [0, 1] -> [N, D]."""
    import keras

    arch = model.arch
    if model.folded:
        raise ValueError("the Keras export needs unfolded BatchNorm tensors")
    h, w = model.input_size
    builder = keras.applications.MobileNet if arch.name == "mobilenet_v1" else keras.applications.MobileNetV2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = builder(alpha=arch.depth_multiplier, input_shape=(h, w, 3), include_top=False,
                       pooling="avg", weights=None)
    layers = {layer.name: layer for layer in base.layers}
    filled = set()
    for layer in arch.layers:
        prefix = f"{arch.scope}/{layer.scope}"
        conv, bn = keras_names(arch.name, layer.scope)
        if conv not in layers or bn not in layers:
            raise KeyError(f"{layer.scope}: Keras has no layer {conv!r} / {bn!r}")
        layers[conv].set_weights([model.tensors[f"{prefix}/{layer.weight_name}"]])
        layers[bn].set_weights([model.tensors[f"{prefix}/BatchNorm/{s}"]
                                for s in ("gamma", "beta", "moving_mean", "moving_variance")])
        filled.update((conv, bn))
    unfilled = [l.name for l in base.layers if l.weights and l.name not in filled]
    if unfilled:
        raise KeyError(f"Keras layers left with random weights: {unfilled}")
    inputs = keras.Input((h, w, 3), name="images")
    outputs = base(keras.layers.Rescaling(2.0, offset=-1.0, name="hub_input")(inputs))
    return keras.Model(inputs, outputs, name=f"{model.name}_keras")


def keras_runner(keras_net):
    """A tf.function over the Keras model with a dynamic batch: numpy in, numpy out."""
    import tensorflow as tf

    h, w = keras_net.input_shape[1:3]
    fn = tf.function(lambda x: keras_net(x, training=False),
                     input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32)])
    return lambda x: fn(x).numpy()


def export_tflite(model: mnp.MobileNet) -> Path:
    """Keras model (checked against ours), converted to a float32 .tflite (cached)."""
    path = cache_dir(model) / "model.tflite"
    if path.exists():
        return path
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    net = keras_model(model)
    check(keras_runner(net), model, 2, "Keras model")
    try:
        converter = tf.lite.TFLiteConverter.from_keras_model(net)
    except Exception:            # Keras 3 versions where from_keras_model is unsupported
        h, w = model.input_size
        fn = tf.function(lambda x: net(x, training=False)).get_concrete_function(
            tf.TensorSpec([None, h, w, 3], tf.float32))
        converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], net)
    converter.optimizations = []
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")           # the converter prints the saved signature
        data = converter.convert()
    _atomic_write(path, data)
    return path


# --- the engines -----------------------------------------------------------------------------

class Engine:
    id = ""
    label = ""
    needs: tuple[str, ...] = ()          # modules to run it
    export_needs: tuple[str, ...] = ()   # further modules to create its export (unless cached)
    batch1_only = False

    def unavailable(self) -> str | None:
        return installed(*self.needs)

    def export(self, model: mnp.MobileNet) -> None:
        """Create (or find cached) whatever this engine loads; runs in the parent process."""

    def load(self, model: mnp.MobileNet, batch: int, threads: int):
        raise NotImplementedError

    def settings(self, threads: int, batch: int) -> str:
        return ""


class NumbaEngine(Engine):
    """mobilenet-np's fast path.  The worker process has already set Numba's and BLAS's thread
    counts to T once (``run.configure_threads``), so the call is plain ``model(x)``."""
    id, label, needs = "numba", "mobilenet-np (numba)", ("numba",)

    def load(self, model, batch, threads):
        return model

    def settings(self, threads, batch):
        return f"numba.set_num_threads({threads}) + BLAS {threads} thread(s) set once per process"


class NumbaThreadsArgEngine(NumbaEngine):
    """The same model, called as the docs show it: ``model(x, threads=T)`` each call, which
    sets and restores Numba's and BLAS's thread counts (threadpoolctl) around every call."""
    id, label = "numba-threads-arg", "mobilenet-np (numba, threads=T per call)"
    batch1_only = True           # a fixed cost per call: batch 1 shows it

    def load(self, model, batch, threads):
        return lambda x: model(x, threads=threads)

    def settings(self, threads, batch):
        return f"model(x, threads={threads}) on every call"


class NumpyEngine(Engine):
    """The reference path: slow by design, timed at batch 1 only."""
    id, label, needs = "numpy", "mobilenet-np (numpy reference)", ()
    batch1_only = True

    def load(self, model, batch, threads):
        ref = mnp.MobileNet(model.arch, model.tensors, num_classes=model.num_classes, folded=model.folded,
                            input_size=model.input_size, backend="numpy")
        return ref

    def settings(self, threads, batch):
        return f"OpenBLAS {threads} thread(s)"


class OnnxRuntimeEngine(Engine):
    id, label, needs, export_needs = "onnxruntime", "ONNX Runtime", ("onnxruntime",), ("onnx",)
    spinning = True

    def export(self, model):
        export_onnx(model)

    def load(self, model, batch, threads):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not self.spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(export_onnx(model)), opts, providers=["CPUExecutionProvider"])
        out = session.get_outputs()[0].name
        return lambda x: session.run([out], {"images": x})[0]

    def settings(self, threads, batch):
        spin = "" if self.spinning else ", session.intra_op.allow_spinning=0"
        return f"intra_op {threads}, inter_op 1, ORT_ENABLE_ALL{spin}"


class OnnxRuntimeNoSpinEngine(OnnxRuntimeEngine):
    """ONNX Runtime with its worker threads told not to spin after a call (documented session
    option).  Only differs from the default when intra_op > 1."""
    id, label = "onnxruntime-nospin", "ONNX Runtime (no spin)"
    spinning = False


class OpenVinoEngine(Engine):
    """OpenVINO CPU plugin, read from the same ONNX file, reshaped to a static batch.
    PERFORMANCE_HINT=LATENCY for both batch sizes: we make one synchronous call at a time, and
    THROUGHPUT only pays off with several requests in flight (it splits the cores into streams)."""
    id, label, needs, export_needs = "openvino", "OpenVINO", ("openvino",), ("onnx",)

    def export(self, model):
        export_onnx(model)

    def load(self, model, batch, threads):
        import openvino as ov

        core = ov.Core()
        net = core.read_model(str(export_onnx(model)))
        h, w = model.input_size
        net.reshape([batch, h, w, 3])
        compiled = core.compile_model(net, "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        out = compiled.output(0)

        def run(x):
            request.infer({0: x})
            return request.get_tensor(out).data.copy()
        return run

    def settings(self, threads, batch):
        return f"INFERENCE_NUM_THREADS {threads}, PERFORMANCE_HINT LATENCY, 1 stream, f32"


class LiteRtEngine(Engine):
    id, label, needs, export_needs = "litert", "LiteRT + XNNPACK", ("ai_edge_litert",), ("tensorflow", "keras")

    def export(self, model):
        export_tflite(model)

    def load(self, model, batch, threads):
        from ai_edge_litert.interpreter import Interpreter

        h, w = model.input_size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interp = Interpreter(model_path=str(export_tflite(model)), num_threads=threads)
        source = interp.get_input_details()[0]["index"]
        interp.resize_tensor_input(source, [batch, h, w, 3])
        interp.allocate_tensors()
        target = interp.get_output_details()[0]["index"]

        def run(x):
            interp.set_tensor(source, x)
            interp.invoke()
            return interp.get_tensor(target)
        return run

    def settings(self, threads, batch):
        return f"num_threads {threads}, default XNNPACK delegate, float32"


class TensorFlowEngine(Engine):
    """TensorFlow running the Keras model through a tf.function.  Its thread pools are sized
    when TF initialises, so the worker process (one per thread count) calls
    ``tf.config.threading`` before anything else touches TF."""
    id, label, needs = "tensorflow", "TensorFlow (Keras, tf.function)", ("tensorflow", "keras")

    def __init__(self):
        self._nets = {}

    def load(self, model, batch, threads):
        key = model.weights_sha256
        if key not in self._nets:
            self._nets = {key: keras_runner(keras_model(model))}
        return self._nets[key]

    def settings(self, threads, batch):
        return f"intra_op {threads}, inter_op 1 (set before TF initialises)"


ENGINES: dict[str, Engine] = {e.id: e for e in (
    NumbaEngine(), NumbaThreadsArgEngine(), NumpyEngine(), OnnxRuntimeEngine(), OnnxRuntimeNoSpinEngine(),
    OpenVinoEngine(), LiteRtEngine(), TensorFlowEngine())}


def export_all(model: mnp.MobileNet, engine_ids) -> dict[str, str]:
    """Create the cached exports the engines need; returns {engine id: error} for failures."""
    errors = {}
    for eid in engine_ids:
        try:
            ENGINES[eid].export(model)       # a cached export needs none of the export modules
        except ImportError as exc:
            errors[eid] = f"export needs a module that is not installed: {exc.name or exc}"
        except Exception as exc:     # noqa: BLE001  (reported; the other engines still run)
            errors[eid] = f"export failed: {type(exc).__name__}: {exc}"
    return errors
