"""benchmarks/results/quantize.md: how close `weights-tools quantize` comes to the float model, and
to the TFLite converter's full-integer quantization of the same float weights and calibration images.

    PYTHONPATH=$PWD python -m benchmarks.quantize_report [--out benchmarks/results/quantize.md]

Models: the real float weights in ../shared/weights, V1 0.25/160 (the jevois float .tflite, a
1001-class classifier) and V2 0.5/96 (the TF.js feature vector, no classifier).  Images: the
photos in ../shared/images (sorted by name), split in two halves A (even positions) and B (odd):
calibrate on one half, evaluate on the other, both ways; and calibrate on seeded synthetic images
(uniform noise and smooth random gradients) and evaluate on all photos.  For each: our int8 model
(per-channel and per-tensor weights), and the converter's (per-channel, the converter's default;
per-tensor with its ``_experimental_disable_per_channel``), calibrated on the same images.
Measures, against the float model on the evaluation images: top-1 agreement (classifier only), the
cosine similarity of the pooled features (min and mean) and of the logits.

Both int8 models run with LiteRT's reference-kernel semantics (kernels/integer_reference.py,
bit-exact to LiteRT in tests/test_quantized_forward.py): ours as ``QuantizedMobileNet`` (the
version-2 model in memory, exactly what `weights-tools quantize` writes), the converter's .tflite
with ``forward/quantized.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OUT = REPO / "benchmarks" / "results" / "quantize.md"
SYNTHETIC_SEED, SYNTHETIC_IMAGES = 20261201, 16


# --- our int8 model ----------------------------------------------------------------------------

def int8_outputs(qw, images: np.ndarray, backend: str = "numba") -> dict:
    """Our quantized model (a ``weights_file_v2.QuantizedWeightsFile``) run by ``QuantizedMobileNet``
    (the integer kernels, equal to LiteRT's reference kernels): dequantized features and logits."""
    from mobilenet_np.quantized_model import QuantizedMobileNet
    model = QuantizedMobileNet(qw, input_size=tuple(images.shape[1:3]), backend=backend)
    out = {"features": model(images)}
    if model.num_classes:
        out["logits"] = model.logits(images)
    return out


# --- the converter's int8 model ---------------------------------------------------------------

def converter_tflite(model, images: np.ndarray, per_channel: bool) -> bytes:
    """The TFLite converter's full-integer int8 model of ``model`` (input the [-1, 1] image, int8
    in and out; logits out with a classifier, else the pooled features), calibrated on ``images``
    in [0, 1] one at a time, as tests/int8_models.py builds it but with these images."""
    import contextlib
    import io
    import warnings
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO / "tests"))
    import tensorflow as tf
    from int8_models import tf_network

    def calibration():
        for image in images:
            yield [(image[None] * np.float32(2) - np.float32(1)).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([tf_network(model, images.shape[1:3])])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = calibration
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    if not per_channel:
        converter._experimental_disable_per_channel = True
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return converter.convert()


def converter_forward(path, images: np.ndarray, num_classes: int) -> dict:
    """The converter's model run with LiteRT's reference semantics (forward/quantized.py)."""
    from mobilenet_np.forward.quantized import QuantizedGraph
    from mobilenet_np.kernels import integer_reference as iref
    graph = QuantizedGraph(path)
    k_in = graph.input_index
    x = iref.quantize(images * np.float32(2) - np.float32(1), graph.scale(k_in), graph.zero_point(k_in), np.int8)
    pool = graph.endpoint_tensors()["global_pool"]
    seen = {}
    outputs = graph.run(x, on_op=lambda i, op, y: seen.update({op.outputs[0]: y}) if op.outputs[0] == pool else None)
    k_out = graph.sub.outputs[0]
    out = {"features": iref.dequantize(seen[pool], graph.scale(pool), graph.zero_point(pool)).reshape(len(images), -1)}
    if num_classes:
        out["logits"] = iref.dequantize(outputs[0], graph.scale(k_out), graph.zero_point(k_out)).reshape(len(images), -1)
    return out


def converter_params(path, arch) -> dict:
    """The converter's (scale, zero point) per activation name that has a TF-Slim endpoint, and its
    int8 weights (in our layouts) and int32 biases per layer: for comparing the two quantizers' choices."""
    from mobilenet_np.forward.quantized import QuantizedGraph
    from weights_tools import tflite_ops as tfl
    from weights_tools.quantize import add_name
    graph = QuantizedGraph(path)
    ops = graph.sub.operators
    convs = [op for op in ops if op.opcode in (tfl.CONV_2D, tfl.DEPTHWISE_CONV_2D)]
    acts, weights, biases = {"input": graph.input_index}, {}, {}
    adds = {k: op.outputs[0] for op in ops if op.opcode == tfl.ADD for k in op.inputs}
    for op, layer in zip(convs, arch.layers):
        acts[layer.scope] = op.outputs[0]
        if layer.adds_residual:
            acts[add_name(layer)] = adds[op.outputs[0]]
        w = graph.constant(op.inputs[1])
        weights[arch.names(layer).weights] = w.transpose(1, 2, 3, 0)
        biases[arch.names(layer).biases] = graph.constant(op.inputs[2])
    acts["global_pool"] = graph.endpoint_tensors()["global_pool"]
    return ({name: (graph.scale(k), graph.zero_point(k)) for name, k in acts.items()}, weights, biases)


# --- measurements ---------------------------------------------------------------------------

def photo_paths() -> list[Path]:
    return sorted(p for p in (SHARED / "images").iterdir() if p.is_file())


def views(paths, size) -> np.ndarray:
    """Three views of each photo, [3 * len(paths), H, W, 3] in [0, 1]: the whole image (hub
    preset, undrafted), its mirror image, and TF-Slim's 0.875 central crop."""
    from mobilenet_np.preprocess import preprocess
    out = []
    for p in paths:
        whole = preprocess(str(p), size, "hub", draft=False)
        out += [whole, whole[:, ::-1], preprocess(str(p), size, "slim")]
    return np.stack(out).astype(np.float32)


def synthetic(size, n=SYNTHETIC_IMAGES, seed=SYNTHETIC_SEED) -> np.ndarray:
    """Seeded synthetic calibration images: half uniform noise, half smooth random colour fields
    (8x8 noise upsampled bilinearly), all in [0, 1]."""
    from mobilenet_np.preprocess import preprocess
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 1, (n // 2, *size, 3)).astype(np.float32)
    smooth = [preprocess(rng.uniform(0, 1, (8, 8, 3)).astype(np.float32), size, "hub") for _ in range(n - n // 2)]
    return np.concatenate([noise, np.clip(np.stack(smooth), 0, 1)]).astype(np.float32)


def cosine(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def compare(reference: dict, quantized: dict) -> dict:
    row = {"cos_min": float(cosine(reference["features"], quantized["features"]).min()),
           "cos_mean": float(cosine(reference["features"], quantized["features"]).mean())}
    if "logits" in reference:
        row["top1"] = float(np.mean(reference["logits"].argmax(1) == quantized["logits"].argmax(1)))
        row["top1_n"] = len(reference["logits"])
        top5 = np.argsort(-quantized["logits"], axis=1)[:, :5]
        row["in_top5"] = float(np.mean([t in five for t, five in zip(reference["logits"].argmax(1), top5)]))
        row["logits_cos_min"] = float(cosine(reference["logits"], quantized["logits"]).min())
    return row


def float_outputs(model, images) -> dict:
    out = {"features": model(images)}
    if model.num_classes:
        out["logits"] = model.logits(images)
    return out


MODELS = (("V1 0.25/160 (jevois float .tflite, 1001 classes)", "mobilenet_v1_025_160/tflite_float/mobilenet_v1_0.25_160.jevois.tflite"),
          ("V2 0.5/96 (TF.js feature vector)", "mobilenet_v2_050_96/tfjs_graph_feature_vector/model.json"))


def splits(paths, size):
    """(label, calibration images, evaluation images): halves of the photos, and synthetic images."""
    a, b = paths[0::2], paths[1::2]
    return [(f"photos A ({len(a)}) -> views of B ({3 * len(b)})", views(a, size)[0::3], views(b, size)),
            (f"photos B ({len(b)}) -> views of A ({3 * len(a)})", views(b, size)[0::3], views(a, size)),
            (f"synthetic ({SYNTHETIC_IMAGES}, seed {SYNTHETIC_SEED}) -> views of all ({3 * len(paths)})",
             synthetic(size), views(paths, size))]


def measure(label, source, work: Path, log=print) -> list[dict]:
    import mobilenet_np as mnp
    from mobilenet_np.calibrate import quantize_float_model
    from weights_tools.convert import convert
    h5 = work / (Path(source).parent.parent.name + ".h5")
    convert(str(SHARED / "weights" / source), str(h5))
    model = mnp.load(str(h5))
    size = tuple(model.input_size)
    rows = []
    variants = [("per-channel", True, "union"), ("per-tensor", False, "union")]
    if any(layer.adds_residual for layer in model.arch.layers):
        variants.append(("per-channel, projections' own ranges", True, "own"))
    for split, calib, evaluation in splits(photo_paths(), size):
        reference = float_outputs(model, evaluation)
        converted = {}
        for kind, per_channel, projection in variants:
            t0 = time.perf_counter()
            qm = quantize_float_model(model, calib, per_channel, projection=projection)
            t_ours = time.perf_counter() - t0
            ours = int8_outputs(qm, evaluation)
            if per_channel not in converted:
                t0 = time.perf_counter()
                tfl_path = work / f"{h5.stem}-{per_channel}.tflite"
                tfl_path.write_bytes(converter_tflite(model, calib, per_channel))
                t_conv = time.perf_counter() - t0
                converted[per_channel] = (converter_forward(tfl_path, evaluation, model.num_classes),
                                          converter_params(tfl_path, model.arch), t_conv)
            theirs, (acts, weights, biases), t_conv = converted[per_channel]
            same_zp = sum(qm.activations[n].zero_point == zp for n, (_, zp) in acts.items())
            scale_diff = max(abs(qm.activations[n].scale / s - 1) for n, (s, _) in acts.items())
            w_equal = np.mean(np.concatenate([(qm.tensors[n].values == w).reshape(-1) for n, w in weights.items()]))
            w_maxdiff = max(int(np.abs(qm.tensors[n].values.astype(int) - w).max()) for n, w in weights.items())
            b_diff = np.concatenate([qm.tensors[n].values.astype(np.int64) - b for n, b in biases.items()])
            row = {"model": label, "split": split, "weights": kind, "calib_n": len(calib),
                   "ours": compare(reference, ours), "converter": compare(reference, theirs),
                   "features_equal": float(np.mean(ours["features"] == theirs["features"])),
                   "vs_converter_cos_min": float(cosine(ours["features"], theirs["features"]).min()),
                   "vs_converter_top1": (float(np.mean(ours["logits"].argmax(1) == theirs["logits"].argmax(1)))
                                         if "logits" in ours else None),
                   "zp_equal": f"{same_zp}/{len(acts)}", "scale_rel_diff": scale_diff,
                   "weights_equal": float(w_equal), "weights_maxdiff": w_maxdiff,
                   "bias_equal": float(np.mean(b_diff == 0)), "bias_maxdiff": int(np.abs(b_diff).max()),
                   "t_ours": t_ours, "t_converter": t_conv}
            log(f"{label} | {split} | {kind}: ours {row['ours']}, converter {row['converter']}, "
                f"params zp {row['zp_equal']} scale {scale_diff:.2e} weights {w_equal:.4f} (max diff {w_maxdiff}) "
                f"biases {row['bias_equal']:.4f} (max diff {row['bias_maxdiff']}); {t_ours:.1f} s vs converter {t_conv:.1f} s",
                file=sys.stderr)
            rows.append(row)
    return rows


def _fmt(r: dict) -> str:
    top1 = (f"{r['top1'] * r['top1_n']:.0f}/{r['top1_n']} ({r['in_top5'] * r['top1_n']:.0f})"
            if "top1" in r else "-")
    logits = f"{r['logits_cos_min']:.4f}" if "logits_cos_min" in r else "-"
    return f"{top1} | {r['cos_min']:.4f} / {r['cos_mean']:.4f} | {logits}"


def _share(x) -> str:
    return "-" if x is None else f"{x:.0%}"


def report(rows: list[dict], seconds: float) -> str:
    lines = [
        "# Post-training int8 quantization: `weights-tools quantize` against the float model and the TFLite converter",
        "",
        "Regenerate: `PYTHONPATH=$PWD python -m benchmarks.quantize_report` "
        f"(this run: {seconds:.0f} s on the shared 2-core VM, TensorFlow {_tf_version()}).  It converts the "
        "float sources as `weights-tools convert SRC OUT.h5` does, then quantizes in memory with the "
        "function behind `weights-tools quantize IN.h5 OUT.h5 --calibration DIR [--per-channel]` "
        "(`calibrate.quantize_float_model`; tests/test_quantize.py checks that the command's file equals it).",
        "",
        "Images: the 9 photos of ../shared/images sorted by name, A = positions 0, 2, 4, 6, 8 and B = 1, 3, 5, 7; "
        "calibration uses each photo once (whole image, hub preset); evaluation uses three views of each "
        "photo (whole, mirrored, TF-Slim 0.875 central crop) so no calibration photo is in its evaluation set. "
        "Synthetic calibration: 8 uniform-noise images and 8 smooth random colour fields (seeded).  No other "
        "real images were available.",
        "",
        "## Findings",
        "",
    ] + _findings(rows) + [
        "",
        "## The measurements",
        "",
        "Columns: top-1 agreement with the float model (classifier only: agreeing / images, in parentheses "
        "the images whose float top-1 is among the int8 model's top 5), cosine similarity of the pooled "
        "features to the float model's (min / mean over the evaluation images), min cosine of the logits; "
        "then ours against the converter's int8 model: min feature cosine and top-1 equality, the fraction "
        "of dequantized features exactly equal, activation zero points equal, the largest relative difference "
        "of an activation scale, int8 weights equal (largest difference), int32 biases equal (largest difference).",
        "",
        "| model | calibration -> evaluation | weights | ours: top-1 | ours: feature cos min / mean | ours: logits cos min "
        "| converter: top-1 | converter: feature cos min / mean | converter: logits cos min "
        "| ours vs converter: feature cos min, top-1 equal | features equal | zero points equal | max scale diff "
        "| weights equal (max diff) | biases equal (max diff) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['split']} | {r['weights']} | {_fmt(r['ours'])} | {_fmt(r['converter'])} "
                     f"| {r['vs_converter_cos_min']:.5f}, {_share(r['vs_converter_top1'])} | {r['features_equal']:.3f} "
                     f"| {r['zp_equal']} | {r['scale_rel_diff']:.1e} "
                     f"| {r['weights_equal']:.4f} ({r['weights_maxdiff']}) | {r['bias_equal']:.4f} ({r['bias_maxdiff']}) |")
    return "\n".join(lines) + "\n"


def _tf_version() -> str:
    import tensorflow as tf
    return tf.__version__


def _findings(rows: list[dict]) -> list[str]:
    def pick(kind):
        return [r for r in rows if r["weights"] == kind]

    channel, tensor, own = pick("per-channel"), pick("per-tensor"), pick("per-channel, projections' own ranges")
    same = [r for r in channel + tensor if r["zp_equal"].split("/")[0] == r["zp_equal"].split("/")[1]]
    out = [
        f"* **Same choices as the converter.** In {len(same)} of {len(channel + tensor)} runs every activation zero "
        "point is the converter's; int8 weights are equal in every run "
        f"(min {min(r['weights_equal'] for r in channel + tensor):.4f}), int32 biases within "
        f"{max(r['bias_maxdiff'] for r in channel + tensor)} step(s) (those steps come from activation scales that "
        f"differ by at most {max(r['scale_rel_diff'] for r in channel + tensor):.1e}: the converter calibrates with "
        "TensorFlow's float kernels, we with ours).  Ours and the converter's int8 features have cosine >= "
        f"{min(r['vs_converter_cos_min'] for r in channel + tensor):.4f} with each other, and the same top-1 on "
        f"{_count(channel + tensor, 'vs_converter_top1')} classifier evaluations (all runs).  Reproducing the "
        "converter took five rules beyond the "
        "textbook ones (weights_tools/quantize.py): BatchNorm folded and weights divided in float32; per-tensor "
        "weights multiplied by 127 / max|w|; dead channels (|w| ~ 1e-20 in real V2 0.5) widened to |w| 5e-7; "
        "a weight scale raised where the bias would exceed 2^30 steps; and a residual projection quantized over "
        "the union of its range and its add's.",
        "* **Per-channel weights are required for these MobileNets.** Per-tensor weights (the command's default, "
        "as the converter's `_experimental_disable_per_channel`) collapse: feature cosine "
        f"{min(r['ours']['cos_mean'] for r in tensor):.2f}-{max(r['ours']['cos_mean'] for r in tensor):.2f} "
        "(mean), top-1 agreement 0, for the converter too.  Folded BatchNorm leaves depthwise channels whose "
        "ranges differ by orders of magnitude, so one scale per tensor rounds most of them to a few levels (the "
        "known per-layer PTQ failure of MobileNets, Krishnamoorthi 2018, table 2).",
    ]
    v1 = [r for r in channel if "logits" in r["ours"] or "top1" in r["ours"]]
    if v1:
        agree = sum(r["ours"]["top1"] * r["ours"]["top1_n"] for r in v1)
        total = sum(r["ours"]["top1_n"] for r in v1)
        top5 = sum(r["ours"]["in_top5"] * r["ours"]["top1_n"] for r in v1)
        out.append(f"* **V1 0.25/160 classifier, per-channel:** top-1 agreement {agree:.0f} of {total} evaluation "
                   f"views over the three calibrations ({agree / total:.0%}), the float top-1 in the int8 top 5 for "
                   f"{top5:.0f} of {total}; feature cosine >= {min(r['ours']['cos_min'] for r in v1):.3f}.  The "
                   "0.25-wide classifier's top-1 margins are small; the photos are few, so these are rough figures.")
    v2 = [r for r in channel if "top1" not in r["ours"]]
    if v2:
        out.append(f"* **V2 0.5/96 features, per-channel:** cosine to the float features "
                   f"{min(r['ours']['cos_min'] for r in v2):.3f} (min) to {max(r['ours']['cos_mean'] for r in v2):.3f} "
                   "(best mean).  Its activations are wide (projection outputs span about -60..60 on the photos), "
                   "so an int8 step is large.")
    if own:
        pairs = [(o, c) for o in own for c in channel if (o["model"], o["split"]) == (c["model"], c["split"])]
        out.append("* **Residual projections with their own range** (`projection=\"own\"`, not the converter's "
                   "rule): mean feature cosine " + ", ".join(f"{o['ours']['cos_mean']:.4f} vs {c['ours']['cos_mean']:.4f}"
                                                          for o, c in pairs)
                   + f" (own vs union); own is better on the mean in {sum(o['ours']['cos_mean'] > c['ours']['cos_mean'] for o, c in pairs)}"
                   f" of {len(pairs)} runs, on the min in {sum(o['ours']['cos_min'] > c['ours']['cos_min'] for o, c in pairs)}"
                   f" of {len(pairs)}: the difference is within the noise of so few images, so the command keeps "
                   "the converter's rule (comparable results).")
    for model in sorted({r["model"] for r in channel}):
        synth = [r["ours"]["cos_mean"] for r in channel if r["model"] == model and r["split"].startswith("synthetic")]
        photo = [r["ours"]["cos_mean"] for r in channel if r["model"] == model and r["split"].startswith("photos")]
        out.append(f"* Calibration, {model.split(' (')[0]} per-channel: mean feature cosine "
                   f"{np.mean(synth):.4f} calibrated on synthetic images, {np.mean(photo):.4f} on half of the photos "
                   "(evaluated on different sets; the calibration sets are small, 4-16 images, as the shared photos "
                   "are few).")
    return out


def _count(rows, key) -> str:
    """'agreeing of total' over the rows with a classifier, from per-row shares."""
    rows = [r for r in rows if r[key] is not None]
    agree = sum(round(r[key] * r["ours"]["top1_n"]) for r in rows)
    return f"{agree} of {sum(r['ours']['top1_n'] for r in rows)}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--models", default="v1,v2", help="v1, v2 or both")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="quantize-report-") as work:
        for key, (label, source) in zip(("v1", "v2"), MODELS):
            if key in args.models.split(","):
                rows += measure(label, source, Path(work))
    Path(args.out).write_text(report(rows, time.perf_counter() - start))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
