"""The int8 benchmark (issue 17, speed): our integer engine against LiteRT's int8 on the same .tflite.

    python -m benchmarks.int8_bench [--quick] [--threads 1,2] [--batches 1,32] [--models v1,v2]
                                    [--engines ours-xnnpack,...] [--rounds N] [--calls N] [--no-profile] [--out DIR]

Models: V1 0.5/160, Google's uint8 QAT file (the Coral copy in ../shared), and V2 0.5/96, a
full-integer int8 file that the TFLite converter makes from the real V2 0.5/96 hub weights
(``tests/int8_models.int8_tflite``; built once, kept in the temp folder, ~20 s with TensorFlow).

Engines, each timed in the same process, in interleaved rounds (shuffled order each round):

* ``ours-xnnpack`` -- ``FastQuantizedGraph(path, kernels="xnnpack")``: bytes equal to LiteRT's default;
* ``ours-reference`` -- the same with ``kernels="reference"`` (TFLite's reference requantization);
* ``litert`` -- ``ai_edge_litert`` ``Interpreter(num_threads=T)``, its default XNNPACK delegate;
  batch 32 resizes the input when the graph allows it, else 32 calls of batch 1 (said in the report);
* ``float`` -- our float path, ``mnp.load`` of the same weights (V1: the uint8 file dequantized;
  V2: the hub weights) called as ``model(x)`` on [0, 1] float images, backend numba.

One worker process per thread count T, pinned with ``os.sched_setaffinity`` to T CPUs and with
Numba / BLAS set to T threads (``benchmarks.run.pin`` / ``configure_threads``).  Batch 1 is
reported as median latency, batch 32 as images per second (median call); ratios are ours over
LiteRT in speed (> 1: we are faster).  Then a per-op profile of ``ours-xnnpack`` at batch 1 and
32 (T = 1): median CPU time per op, its multiply-adds and GMAC/s, against the integer peak of this
CPU measured with a tight ``vpmaddwd`` loop, or ``vpdpbusd`` where the CPU has AVX-512 VNNI
(``integer_peak``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOBILENET_NP_SHARED", REPO.parent / "shared"))
V1_FILE = SHARED / "weights" / "mobilenet_v1_050_160" / "tflite_uint8_quant" / "mobilenet_v1_0.5_160_quant.coral.tflite"
V2_HUB = SHARED / "weights" / "mobilenet_v2_050_96" / "tfjs_graph_feature_vector"
CACHE = Path(tempfile.gettempdir()) / "mobilenet-np-int8-bench"
ENGINES = ("ours-xnnpack", "ours-reference", "litert", "float")
SEED = 17


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def model_files() -> dict[str, dict]:
    """{key: tflite path, float source, input size}; V2's int8 file is built once and cached."""
    v2 = CACHE / "mobilenet_v2_050_96_hub_int8.tflite"
    if not v2.exists():
        log(f"building {v2} with the TFLite converter (once)")
        sys.path.insert(0, str(REPO / "tests"))
        import mobilenet_np as mnp
        from int8_models import int8_tflite
        CACHE.mkdir(parents=True, exist_ok=True)
        data = int8_tflite(mnp.load(V2_HUB), (96, 96))
        tmp = v2.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(v2)
    return {"v1": {"label": "V1 0.5/160 uint8 (Coral)", "tflite": V1_FILE, "float": V1_FILE, "size": 160},
            "v2": {"label": "V2 0.5/96 int8 (converter, hub weights)", "tflite": v2, "float": V2_HUB, "size": 96}}


# --- engines: each load returns fn(x_int) ------------------------------------------------------

def load_engine(eid: str, m: dict, batch: int, threads: int):
    path = m["tflite"]
    if eid.startswith("ours-"):
        from mobilenet_np.forward.quantized_engine import FastQuantizedGraph
        graph = FastQuantizedGraph(path, kernels=eid.split("-", 1)[1])
        return (lambda x: graph.run(x)[0]), {}
    if eid == "litert":
        from ai_edge_litert.interpreter import Interpreter
        it = Interpreter(model_path=str(path), num_threads=threads)
        inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
        mode = "one call of batch 1"
        if batch > 1:
            try:
                it.resize_tensor_input(inp, [batch, m["size"], m["size"], 3])
                it.allocate_tensors()
                mode = f"one call of batch {batch}"
            except Exception:  # noqa: BLE001  (a graph with a fixed batch in a RESHAPE)
                it = Interpreter(model_path=str(path), num_threads=threads)
                mode = f"{batch} calls of batch 1"
        it.allocate_tensors()

        def run(x):
            if len(x) == 1 or mode.startswith("one"):
                it.set_tensor(inp, x)
                it.invoke()
                return it.get_tensor(out)
            ys = []
            for i in range(len(x)):
                it.set_tensor(inp, x[i:i + 1])
                it.invoke()
                ys.append(it.get_tensor(out))
            return np.concatenate(ys)
        return run, {"litert_batch": mode}
    if eid == "float":
        import mobilenet_np as mnp
        # dequantize: a quantized .tflite loads quantized since format version 2 (this column ran
        # the integer path on float input until 2026-12-01)
        model = mnp.load(m["float"], dequantize=True)
        if model.quantized:
            raise RuntimeError(f"{m['float']}: the float column got a quantized model")
        return (lambda x: model(x)), {"float_input": "float32 [0, 1]"}
    raise ValueError(eid)


def inputs(m: dict, dtype, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded quantized images and the same images as float32 in [0, 1] (the float path's input)."""
    rng = np.random.default_rng(SEED)
    x01 = rng.random((batch, m["size"], m["size"], 3), dtype=np.float32)
    if dtype == np.uint8:
        return np.round(x01 * 255).astype(np.uint8), x01
    return np.round(x01 * 255 - 128).astype(np.int8), x01


# --- the per-op profile and the integer peak -------------------------------------------------

def op_macs(graph, op) -> int:
    """Multiply-adds of one op per image (convolutions and fully connected; 0 for the rest)."""
    from weights_tools import tflite_ops as tfl
    if op.opcode not in (tfl.CONV_2D, tfl.DEPTHWISE_CONV_2D, tfl.FULLY_CONNECTED):
        return 0
    out = graph.tensor(op.outputs[0]).shape
    w = graph.tensor(op.inputs[1]).shape
    if op.opcode == tfl.FULLY_CONNECTED:
        return int(np.prod(w))
    pixels = int(out[1] * out[2])
    if op.opcode == tfl.DEPTHWISE_CONV_2D:
        return pixels * int(w[1] * w[2] * w[3])
    return pixels * int(np.prod(w))


def profile(path, x: np.ndarray, rounds: int) -> list[dict]:
    """Median seconds per op of ``ours-xnnpack`` over ``rounds`` runs of ``x``: the plan's compiled calls
    (what ``run`` executes) with the calling thread's CPU time read around each, summed per op (at T=1
    every kernel runs on that thread, and time lost to other processes on a busy machine is not
    counted; each reading adds ~0.5 us).  Timing through ``on_op`` instead ran another plan (new arrays,
    the bound steps, each output flipped back to int8 for the callback): 3.1 ms at V2 batch 1 where the
    run takes 1.3."""
    from mobilenet_np.forward.quantized_engine import FastQuantizedGraph
    from weights_tools import tflite_ops as tfl
    graph = FastQuantizedGraph(path, kernels="xnnpack")
    graph.run(x)
    graph.run(x)
    plan = next(p for p in graph._local.plans.values() if not p.fresh)
    times = []
    for _ in range(rounds):
        values = dict(plan.values)
        values[graph.input_index] = x
        stamps = [time.thread_time()]
        for fn, args in plan.calls:            # as _Plan.run
            if fn is None:
                step, reads, write, out = args
                values[write] = step([values[k] for k in reads], out)
            else:
                fn(*args)
            stamps.append(time.thread_time())
        per_op = np.zeros(len(graph.sub.operators))
        np.add.at(per_op, plan.owners, np.diff(stamps))
        times.append(per_op)
    med = np.median(np.array(times), axis=0)
    rows = []
    for i, op in enumerate(graph.sub.operators):
        shape = graph.tensor(op.outputs[0]).shape
        w = graph.tensor(op.inputs[1]).shape if op.opcode in (tfl.CONV_2D, tfl.DEPTHWISE_CONV_2D) else None
        rows.append({"op": i, "name": tfl.OP_NAMES.get(op.opcode, str(op.opcode)),
                     "kernel": f"{w[1]}x{w[2]}/{op.conv_options.stride_h}" if w is not None else "",
                     "out": "x".join(str(s) for s in shape[1:]), "s": float(med[i]),
                     "macs": op_macs(graph, op) * len(x)})
    return rows


def integer_peak(seconds: float = 0.3) -> tuple[float, str]:
    """(GMAC/s of one core on independent chains from registers, which instruction): ``madd``
    (vpmaddwd), or ``dot4`` (vpdpbusd) where the CPU has AVX-512 VNNI, the faster of the two."""
    from mobilenet_np.kernels import integer_wide
    from mobilenet_np.kernels.integer_peak import dot4_loop, madd_loop
    w = (np.arange(512) % 64).astype(np.int16)
    x = (np.arange(288) % 251).astype(np.uint8)
    out8, out16 = np.zeros(8, np.int32), np.zeros(16, np.uint8)
    loops = {"vpmaddwd chains, 16 MAC each": (lambda n: madd_loop(w, n, out8), 8 * 16)}
    if integer_wide.DOT4_VNNI:
        loops["vpdpbusd chains, 64 MAC each"] = (lambda n: dot4_loop(w, x, n, out16), 8 * 64)
    best = {}
    for name, (run, macs) in loops.items():
        run(1000)
        n, top = 1 << 20, 0.0
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            run(n)
            top = max(top, n * macs / (time.perf_counter() - t0) / 1e9)
        best[name] = top
    name = max(best, key=best.get)
    return best[name], name


# --- the worker --------------------------------------------------------------------------------

def worker(cfg: dict) -> dict:
    from benchmarks.run import configure_threads, pin
    threads = cfg["threads"]
    cpus = pin(threads)
    configure_threads(threads, [])
    models = model_files()
    rng = random.Random(SEED + threads)
    out = {"threads": threads, "cpus": cpus, "configs": []}
    for key in cfg["models"]:
        m = models[key]
        from mobilenet_np.forward.quantized import QuantizedGraph
        dtype = QuantizedGraph(m["tflite"]).dtype(QuantizedGraph(m["tflite"]).input_index)
        for batch in cfg["batches"]:
            xq, x01 = inputs(m, dtype, batch)
            runs, notes, check = {}, {}, {}
            for eid in cfg["engines"]:
                fn, note = load_engine(eid, m, batch, threads)
                notes.update(note)
                y = fn(x01 if eid == "float" else xq)     # compile / warm up outside the timing
                check[eid] = y
                runs[eid] = fn
            if "ours-xnnpack" in check and "litert" in check:
                notes["ours_xnnpack_equals_litert"] = bool(np.array_equal(check["ours-xnnpack"],
                                                                          check["litert"].reshape(check["ours-xnnpack"].shape)))
            times = {eid: [] for eid in runs}
            order = list(runs)
            for _ in range(cfg["rounds"]):
                rng.shuffle(order)
                for eid in order:
                    x = x01 if eid == "float" else xq
                    runs[eid](x)
                    for _ in range(cfg["calls"]):
                        t0 = time.perf_counter()
                        runs[eid](x)
                        times[eid].append(time.perf_counter() - t0)
            stats = {eid: {"median_ms": 1e3 * float(np.median(t)), "images_per_s": batch / float(np.median(t)),
                           "calls": len(t)} for eid, t in times.items()}
            out["configs"].append({"model": key, "label": m["label"], "batch": batch, "threads": threads,
                                   "stats": stats, "notes": notes, "loadavg": os.getloadavg()})
            log(f"[T={threads}] {key} batch {batch}: " + ", ".join(f"{e} {s['median_ms']:.2f} ms" for e, s in stats.items()))
    if cfg["profile"] and threads == 1:
        out["peak_gmacs"], out["peak_loop"] = integer_peak()
        out["profiles"] = {f"{key} batch {b}": profile(models[key]["tflite"],
                                                        inputs(models[key], np.uint8 if key == "v1" else np.int8, b)[0],
                                                        cfg["profile_rounds"])
                           for key in cfg["models"] for b in cfg["batches"]}
    return out


# --- the report --------------------------------------------------------------------------------

def report(results: list[dict], cfg: dict) -> str:
    lines = ["# Int8 benchmark: our integer engine vs LiteRT int8 (XNNPACK) and our float path", "",
             f"Command: `python -m benchmarks.int8_bench {' '.join(cfg['argv'])}`; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs.",
             f"Rounds {cfg['rounds']} x {cfg['calls']} calls per engine, interleaved (shuffled order each round), "
             "one pinned worker process per thread count. Batch 1: median latency; batch 32: images/s of the "
             "median call. Ratio = our speed / LiteRT's speed (> 1: faster).", "",
             "| model | batch | T | ours-xnnpack | ours-reference | LiteRT int8 | our float | "
             "ours/LiteRT | ours/float | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for c in r["configs"]:
            s = c["stats"]

            def fig(e):
                if e not in s:
                    return "-"
                return f"{s[e]['median_ms']:.2f} ms" if c["batch"] == 1 else f"{s[e]['images_per_s']:.0f} img/s"

            def ratio(a, b):
                return f"{s[b]['median_ms'] / s[a]['median_ms']:.2f}x" if a in s and b in s else "-"
            lines.append(f"| {c['label']} | {c['batch']} | {c['threads']} | {fig('ours-xnnpack')} | "
                         f"{fig('ours-reference')} | {fig('litert')} | {fig('float')} | "
                         f"{ratio('ours-xnnpack', 'litert')} | {ratio('ours-xnnpack', 'float')} | "
                         f"{' '.join(f'{x:.1f}' for x in c['loadavg'])} |")
    notes = {k: v for r in results for c in r["configs"] for k, v in c["notes"].items()}
    lines += ["", "Notes: " + "; ".join(f"{k}: {v}" for k, v in sorted(notes.items())), ""]
    for r in results:
        if "profiles" not in r:
            continue
        peak = r["peak_gmacs"]
        lines += ["## Per-op profile of ours-xnnpack (T=1, CPU time of the calling thread per op)", "",
                  f"Integer peak of one core, measured (`integer_peak`: independent "
                  f"{r.get('peak_loop', 'vpmaddwd chains, 16 MAC each')}): **{peak:.1f} GMAC/s**.", ""]
        for name, rows in r["profiles"].items():
            total = sum(x["s"] for x in rows)
            macs = sum(x["macs"] for x in rows)
            lines += [f"### {name}: {total * 1e3:.2f} ms, {macs / 1e6:.0f} M MACs, "
                      f"{macs / total / 1e9:.1f} GMAC/s ({100 * macs / total / 1e9 / peak:.0f}% of peak)", "",
                      "| op | kind | out | ms | % time | GMAC/s | % peak |", "|---|---|---|---|---|---|---|"]
            for x in rows:
                g = x["macs"] / x["s"] / 1e9 if x["macs"] and x["s"] > 0 else 0
                lines.append(f"| {x['op']} | {x['name']} {x['kernel']} | {x['out']} | {x['s'] * 1e3:.3f} | "
                             f"{100 * x['s'] / total:.1f} | {g:.1f} | {100 * g / peak:.0f} |" if g else
                             f"| {x['op']} | {x['name']} {x['kernel']} | {x['out']} | {x['s'] * 1e3:.3f} | "
                             f"{100 * x['s'] / total:.1f} | | |")
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.int8_bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few rounds: a smoke test, not a measurement")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--models", default="v1,v2")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 15, --quick 3)")
    p.add_argument("--calls", type=int, help="timed calls per engine per round (default 5, --quick 2)")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return
    cfg = {"models": a.models.split(","), "batches": [int(b) for b in a.batches.split(",")],
           "engines": a.engines.split(","), "rounds": a.rounds or (3 if a.quick else 15),
           "calls": a.calls or (2 if a.quick else 5),
           "profile": not a.no_profile, "profile_rounds": 3 if a.quick else 15, "argv": argv}
    model_files()                              # build V2's file before the timed workers
    results = []
    for t in (int(t) for t in a.threads.split(",")):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, "-m", "benchmarks.int8_bench", "--worker", json.dumps({**cfg, "threads": t})],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, check=True)
        results.append(json.loads(proc.stdout))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "int8-quick" if a.quick else "int8"
    (out / f"{name}.json").write_text(json.dumps(results, indent=1))
    text = report(results, cfg)
    (out / f"{name}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
