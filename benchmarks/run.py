"""Measure mobilenet-np against every installed peer engine on the same weights.

    python -m benchmarks.run [--quick] [--models v1,v2] [--family] [--batches 1,32] [--threads 1,2]
                             [--repeats N] [--engines numba,onnxruntime,...]
                             [--skip coldstart,memory,profile,contended,chart] [--out DIR]

What happens (details in benchmarks/README.md):

1. The parent process builds the two seeded random-weight models and creates (or finds cached)
   every peer's export of them (``peers.export_all``).
2. For each thread count T it starts a fresh **worker** process, pinned with
   ``os.sched_setaffinity`` to T CPUs before any library starts a thread, with every engine set
   to T threads (Numba and BLAS once per process, TensorFlow before it initialises).  For each
   (model, batch) the worker loads every engine, checks its output against ``model(x)``
   (max |diff| <= 1e-4, or the engine is not timed), then times the engines **interleaved**:
   ``rounds`` rounds, engine order shuffled each round with a fixed seed, a short sleep
   before each engine's block, warm-up calls excluded, every call timed on its own.
   ``--family`` adds five more models (``peers.FAMILY``), timed against LiteRT and ONNX Runtime
   only, summed up as speed ratios.  In the worker with T >= 2, the **contended** part times us,
   LiteRT and ONNX Runtime at each batch with a busy loop on one pinned CPU, alternating with
   quiet rounds (``Burner``).  The per-layer profile is set against the SGEMM peak.
3. Cold start (new process: import, load an HDF5 weights file, first inference) with Numba's
   on-disk cache warm and disabled, and peak RSS of a process doing batch-32 inference.
4. ``results/results.json`` (raw), ``results/results.md`` (tables), ``results/chart.png``.

The engine list can be cut with ``--engines`` or the environment variable
``MOBILENET_NP_BENCH_ENGINES`` (comma-separated ids, see ``peers.ENGINES``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
ORDER_SEED = 20261122
OURS = "numba"
SPREAD_FLAG = 1.2        # block-median quartile ratio above which a cell is marked "!"

# (calls per engine block at batch 1, at batch > 1), warm-up calls per block, rounds
FULL = {"calls": (25, 5), "numpy_calls": 2, "warmup": (3, 1), "rounds": 12, "sleep": 0.15,
        "profile_repeats": 30, "cold_runs": 3, "cold_nocache_runs": 2, "memory_calls": 3}
QUICK = {"calls": (5, 2), "numpy_calls": 1, "warmup": (1, 1), "rounds": 2, "sleep": 0.05,
         "profile_repeats": 3, "cold_runs": 1, "cold_nocache_runs": 1, "memory_calls": 1}

DISTRIBUTIONS = ("numpy", "numba", "llvmlite", "h5py", "threadpoolctl", "onnx", "onnxruntime", "openvino",
                 "tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "matplotlib")


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# --- statistics ------------------------------------------------------------------------------

def summarize(times_s: list[float], batch: int, blocks: list[int]) -> dict:
    t = np.asarray(times_s) * 1e3
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    # Median of each engine block: a block that ran at a different speed from the others
    # (a thread placed badly, a neighbour's job) shows up as a spread of block medians.
    block_medians, start = [], 0
    for n in blocks:
        block_medians.append(float(np.median(t[start:start + n])))
        start += n
    return {"calls": int(t.size), "median_ms": float(med), "q1_ms": float(q1), "q3_ms": float(q3),
            "iqr_ms": float(q3 - q1), "min_ms": float(t.min()), "mean_ms": float(t.mean()),
            "images_per_s": batch / (med / 1e3), "block_medians_ms": block_medians,
            # upper over lower quartile of the block medians: one disturbed block does not count
            "block_spread": (float(np.percentile(block_medians, 75) / np.percentile(block_medians, 25))
                             if block_medians else 1.0)}


def add_ratios(config: dict) -> None:
    """Our ratio to each peer: latency (ours / peer ms) at batch 1, throughput (ours / peer
    images/s) at larger batches."""
    ours = config["engines"].get(OURS, {}).get("stats")
    for eid, e in config["engines"].items():
        if eid == OURS or not ours or not e.get("stats"):
            continue
        if config["batch"] == 1:
            e["ratio"] = ours["median_ms"] / e["stats"]["median_ms"]
            e["ratio_kind"] = "latency ours/peer"
        else:
            e["ratio"] = ours["images_per_s"] / e["stats"]["images_per_s"]
            e["ratio_kind"] = "throughput ours/peer"


# --- the worker: one process per thread count -------------------------------------------------

def pin(threads: int) -> list[int]:
    allowed = sorted(os.sched_getaffinity(0))
    cpus = allowed[:threads] if threads <= len(allowed) else allowed
    os.sched_setaffinity(0, cpus)
    return cpus


def configure_threads(threads: int, engine_ids: list[str]) -> dict:
    """Set every engine's process-wide thread count to T; returns what was set."""
    info = {}
    if "tensorflow" in engine_ids:
        import tensorflow as tf     # before any op runs: the pools are sized on first use
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        info["tensorflow"] = {"intra_op": threads, "inter_op": 1}
    from threadpoolctl import threadpool_info, threadpool_limits
    global _BLAS_LIMIT
    _BLAS_LIMIT = threadpool_limits(limits=threads, user_api="blas")   # kept for the process
    import numba
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    info["numba_threads"] = numba.get_num_threads()
    info["threadpoolctl"] = threadpool_info()
    return info


_BLAS_LIMIT = None


def time_round(runs: dict, x: np.ndarray, batch: int, params: dict, rng: random.Random,
               times: dict, blocks: dict) -> None:
    """One interleaved round: every engine once, in a shuffled order, as a block of warm-up
    calls then timed calls (each call timed on its own), appended to ``times`` / ``blocks``."""
    order = list(runs)
    rng.shuffle(order)
    calls = params["calls"][0 if batch == 1 else 1]
    warmup = params["warmup"][0 if batch == 1 else 1]
    for eid in order:
        fn = runs[eid]
        n = params["numpy_calls"] if eid == "numpy" else calls
        time.sleep(params["sleep"])          # let the previous engine's threads stop spinning
        for _ in range(warmup if eid != "numpy" else 1):
            fn(x)
        for _ in range(n):
            t0 = time.perf_counter()
            fn(x)
            times[eid].append(time.perf_counter() - t0)
        blocks[eid].append(n)


def model_engines(key: str, engine_ids: list[str]) -> list[str]:
    """The engines timed on a model: all of them on the seed models, fewer on the family."""
    from benchmarks import peers
    return engine_ids if key not in peers.FAMILY else [e for e in engine_ids if e in peers.FAMILY_ENGINES]


def load_engines(model, key: str, batch: int, threads: int, engine_ids: list[str], export_errors: dict,
                 entries: dict, x: np.ndarray) -> dict:
    """{engine id: run function} for the engines that load and agree with ``model(x)``; each
    engine's entry (label, settings, status, load time, max diff) goes into ``entries``."""
    from benchmarks import peers
    runs = {}
    for eid in engine_ids:
        engine = peers.ENGINES[eid]
        entry = entries.setdefault(eid, {"label": engine.label, "settings": engine.settings(threads, batch)})
        if engine.batch1_only and batch != 1:
            entry["status"] = "batch 1 only"
            continue
        if eid in export_errors.get(key, {}):
            entry["status"] = export_errors[key][eid]
            continue
        try:
            t0 = time.perf_counter()
            fn = engine.load(model, batch, threads)
            entry["load_s"] = time.perf_counter() - t0
            entry["max_abs_diff"] = peers.check(fn, model, batch, engine.label)
            fn(x)
        except Exception as exc:  # noqa: BLE001  (a failing engine is reported, not timed)
            entry["status"] = f"not timed: {type(exc).__name__}: {exc}"
            log(f"  {eid}: {entry['status']}")
            continue
        entry["status"] = "ok"
        runs[eid] = fn
    return runs


# --- contention: a busy loop on one of the worker's CPUs -------------------------------------

BURN = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nprint('ready', flush=True)\nwhile True:\n    pass\n"
CONTENDED_ENGINES = ("numba", "litert", "onnxruntime")


class Burner:
    """A separate process spinning on one CPU, paused (SIGSTOP) and resumed (SIGCONT) between
    timing blocks, so contended and quiet blocks alternate in the same minutes."""

    def __init__(self, cpu: int):
        self.cpu = cpu
        self.proc = subprocess.Popen([sys.executable, "-S", "-c", BURN, str(cpu)], stdout=subprocess.PIPE,
                                     text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the CPU-burning process did not start")
        self.pause()

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def contended(cfg: dict, cpus: list[int], rng: random.Random) -> list[dict]:
    """Throughput of ours and the main peers at each batch, with and without a busy loop pinned
    to the worker's last CPU; rounds alternate the two states (order shuffled)."""
    from benchmarks import peers
    threads, params = cfg["threads"], cfg["params"]
    engine_ids = [e for e in cfg["engines"] if e in CONTENDED_ENGINES]
    out = []
    burner = Burner(cpus[-1])
    try:
        for key in cfg["models"]:
            if key not in peers.SEED_MODELS:
                continue
            model = peers.build_model(key)
            for batch in cfg["batches"]:
                out.append(_contended_cell(model, key, batch, threads, params, engine_ids, cfg["export_errors"],
                                           burner, rng))
    finally:
        burner.close()
    return out


def _contended_cell(model, key, batch, threads, params, engine_ids, export_errors, burner, rng) -> dict:
    from benchmarks import peers
    x = peers.images(model, batch)
    entry = {"model": key, "model_label": peers.MODELS[key].label, "batch": batch, "threads": threads,
             "burner_cpu": burner.cpu, "engines": {}}
    log(f"[T={threads}] {entry['model_label']} batch {batch}: contended vs quiet")
    runs = load_engines(model, key, batch, threads, engine_ids, export_errors, entry["engines"], x)
    times = {state: {eid: [] for eid in runs} for state in ("quiet", "contended")}
    blocks = {state: {eid: [] for eid in runs} for state in ("quiet", "contended")}
    for _ in range(params["rounds"]):
        states = ["quiet", "contended"]
        rng.shuffle(states)
        for state in states:
            burner.resume() if state == "contended" else burner.pause()
            time_round(runs, x, batch, params, rng, times[state], blocks[state])
        burner.pause()
    for eid in runs:
        e = entry["engines"][eid]
        for state in times:
            e[state] = summarize(times[state][eid], batch, blocks[state][eid])
        e["retained"] = e["contended"]["images_per_s"] / e["quiet"]["images_per_s"]
        log(f"  {eid:<20} quiet {e['quiet']['images_per_s']:8.1f} img/s, contended "
            f"{e['contended']['images_per_s']:8.1f} img/s: {e['retained']:.2f} retained")
    return entry


def worker(cfg: dict) -> dict:
    threads = cfg["threads"]
    cpus = pin(threads)
    engine_ids = cfg["engines"]
    info = configure_threads(threads, engine_ids)
    from benchmarks import peers

    params = cfg["params"]
    out = {"threads": threads, "pinned_cpus": cpus, "thread_setup": info, "configs": [], "profiles": {}}
    rng = random.Random(ORDER_SEED + threads)
    for key in cfg["models"]:
        model = peers.build_model(key)
        mcfg = peers.MODELS[key]
        x1 = peers.images(model, 1)
        model(x1)                     # compile / load the JIT cache outside any timing
        for batch in cfg["batches"]:
            log(f"[T={threads}] {mcfg.label} batch {batch}: loading engines")
            x = peers.images(model, batch)
            config = {"model": key, "model_label": mcfg.label, "batch": batch, "threads": threads, "engines": {},
                      "loadavg_before": os.getloadavg()}
            runs = load_engines(model, key, batch, threads, model_engines(key, engine_ids), cfg["export_errors"],
                                config["engines"], x)
            times = {eid: [] for eid in runs}
            blocks = {eid: [] for eid in runs}
            for _ in range(params["rounds"]):
                time_round(runs, x, batch, params, rng, times, blocks)
            for eid in runs:
                config["engines"][eid]["stats"] = summarize(times[eid], batch, blocks[eid])
                config["engines"][eid]["times_ms"] = [round(t * 1e3, 5) for t in times[eid]]
            config["loadavg_after"] = os.getloadavg()
            add_ratios(config)
            out["configs"].append(config)
            del runs
            for eid, e in config["engines"].items():
                if "stats" in e:
                    log(f"  {eid:<20} {e['stats']['median_ms']:9.3f} ms  {e['stats']['images_per_s']:9.1f} img/s")
        if params.get("profile") and hasattr(model, "profile"):
            rows = model.profile(x1, repeats=params["profile_repeats"])
            out["profiles"][key] = [{**r, "out_shape": list(r["out_shape"])} for r in rows]
            out.setdefault("sgemm_gmacs", sgemm_gmacs())
            from mobilenet_np.kernels.float_peak import fma_peak
            out.setdefault("fma_gmacs", fma_peak())
        import numba
        out["numba_threading_layer"] = numba.threading_layer()
    if cfg.get("contended") and len(cpus) >= 2:
        out["contended"] = contended(cfg, cpus, rng)
    return out


# --- cold start and memory (each in a new process) ------------------------------------------

# cold_start (warm vs disabled kernel cache) lives in benchmarks/coldstart.py, with the cold-start benchmark.


MEMORY = r"""
import json, os, resource, sys
engine_id, key, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])

def rss_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024

from benchmarks import peers
backend = "numba" if engine_id.startswith("numba") else "numpy"
model = peers.build_model(key, backend=backend)
x = peers.images(model, 32)
if engine_id == "baseline":
    run = None
else:
    if engine_id == "tensorflow":
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    run = peers.ENGINES[engine_id].load(model, 32, 1)
loaded = rss_mb("VmRSS")
for _ in range(calls if run else 0):
    run(x)
print(json.dumps({"rss_loaded_mb": loaded, "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "vmhwm_mb": rss_mb("VmHWM")}))
"""


def peak_memory(models: list[str], engine_ids: list[str], calls: int) -> dict:
    env = {**os.environ, "PYTHONPATH": _pythonpath(), "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = {}
    for key in models:
        out[key] = {}
        for eid in ["baseline", *[e for e in engine_ids if e != "numba-threads-arg"]]:
            proc = subprocess.run([sys.executable, "-c", MEMORY, eid, key, str(calls)], env=env, capture_output=True,
                                  text=True, cwd=REPO, check=False)
            if proc.returncode:
                out[key][eid] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
            else:
                out[key][eid] = json.loads(proc.stdout.strip().splitlines()[-1])
            log(f"memory {key} {eid}: {out[key][eid]}")
    return out


def engine_fingerprint() -> str:
    """sha256 of mobilenet_np's sources: tells whether the engine changed while we measured."""
    import hashlib
    h = hashlib.sha256()
    for path in sorted((REPO / "mobilenet_np").rglob("*.py")):
        h.update(str(path.relative_to(REPO)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _pythonpath() -> str:
    return os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])


# --- the machine -------------------------------------------------------------------------------

def machine_info() -> dict:
    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    versions = {}
    for dist in DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        import mobilenet_np
        versions["mobilenet-np"] = mobilenet_np.__version__
    except ImportError:
        pass
    blas = {}
    try:
        cfg = np.show_config(mode="dicts")
        blas = {k: cfg["Build Dependencies"][k] for k in ("blas", "lapack") if k in cfg.get("Build Dependencies", {})}
    except Exception:  # noqa: BLE001  (older NumPy: no dict mode)
        pass
    from threadpoolctl import threadpool_info
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=False).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                                    text=True, check=False).stdout.strip())
    except OSError:
        commit, dirty = "", False
    return {"cpu": cpu, "isa": sorted(flags & {"avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"}),
            "cpu_count": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions,
            "numpy_blas": blas, "threadpoolctl": threadpool_info(), "git_commit": commit + ("+dirty" if dirty else ""),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "loadavg_start": os.getloadavg()}


# --- reports -----------------------------------------------------------------------------------

def _fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def write_markdown(results: dict, path: Path) -> None:
    m = results["machine"]
    lines = ["# mobilenet-np vs peer engines", "",
             f"- Date: {m['date']}; commit {m['git_commit'] or 'n/a'}; command `{results['command']}`",
             f"- CPU: {m['cpu']} ({', '.join(m['isa'])}); {m['cpu_count']} logical CPUs, "
             f"{len(m['affinity'])} usable; load average at start {', '.join(f'{v:.2f}' for v in m['loadavg_start'])}",
             f"- Python {m['python']} on {m['platform']}",
             "- Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
             "- NumPy BLAS: " + "; ".join(f"{k}: {v.get('name')} {v.get('version', '')}".strip()
                                          for k, v in m["numpy_blas"].items()),
             "- threadpoolctl (parent): " + "; ".join(
                 f"{p.get('internal_api')} {p.get('version')} ({p.get('threading_layer', '')}, "
                 f"{p.get('num_threads')} threads)" for p in m["threadpoolctl"])]
    for w in results["workers"]:
        lines.append(f"- Worker T={w['threads']}: pinned with os.sched_setaffinity to CPU(s) "
                     f"{w['pinned_cpus']}; Numba threading layer {w.get('numba_threading_layer', '?')}, "
                     f"{w['thread_setup'].get('numba_threads')} Numba thread(s)")
    p = results["params"]
    lines += [f"- Method: engines interleaved, {p['rounds']} rounds, order shuffled each round (seed {ORDER_SEED}); "
              f"per engine block {p['warmup'][0]}/{p['warmup'][1]} warm-up + {p['calls'][0]}/{p['calls'][1]} timed "
              f"calls at batch 1/32 (numpy reference: {p['numpy_calls']}), {p['sleep'] * 1e3:.0f} ms sleep before "
              f"each block; each call timed alone (time.perf_counter), input already in memory, output copied "
              f"to NumPy.",
              f"- Every engine's output was checked against mobilenet-np (`model(x)`) before timing: "
              f"max |diff| <= {results['tolerance']:g} or not timed (column 'max diff').",
              "- Ratio column: at batch 1, **our latency / peer latency** (below 1: we are faster); "
              "at batch 32, **our throughput / peer throughput** (above 1: we are faster).",
              f"- `!` marks engines whose block medians spread by more than {SPREAD_FLAG}x (upper / lower quartile of "
              "the per-round block medians: bimodal or disturbed timings); "
              "`~` an IQR wider than 20 % of the median.", ""]

    configs = results["configs"]
    keys = []
    for c in configs:
        if (c["model"], c["batch"]) not in keys:
            keys.append((c["model"], c["batch"]))
    for model, batch in keys:
        group = [c for c in configs if c["model"] == model and c["batch"] == batch]
        group.sort(key=lambda c: c["threads"])
        label = group[0]["model_label"]
        ratio = "latency ratio" if batch == 1 else "throughput ratio"
        lines.append(f"## {label}, batch {batch}")
        lines.append("")
        head = "| engine | " + " | ".join(f"{c['threads']}T median ms (IQR) | {c['threads']}T img/s | "
                                          f"{c['threads']}T {ratio}" for c in group) + " | max diff |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        engine_ids = list(dict.fromkeys(e for c in group for e in c["engines"]))
        for eid in engine_ids:
            cells, diff, label_e, status = [], None, eid, None
            for c in group:
                e = c["engines"].get(eid)
                if not e:
                    cells += ["", "", ""]
                    continue
                label_e = e["label"]
                s = e.get("stats")
                if not s:
                    status = e.get("status", "")
                    cells += ["—", "—", "—"]
                    continue
                diff = max(diff or 0.0, e.get("max_abs_diff", 0.0))
                mark = ("!" if s["block_spread"] > SPREAD_FLAG else "") + ("~" if s["iqr_ms"] > 0.2 * s["median_ms"] else "")
                cells += [f"{_fmt_ms(s['median_ms'])} ({_fmt_ms(s['q1_ms'])}–{_fmt_ms(s['q3_ms'])}){mark}",
                          f"{s['images_per_s']:.0f}",
                          "(ours)" if eid == OURS else (f"{e['ratio']:.2f}" if "ratio" in e else "")]
            name = f"**{label_e}**" if eid == OURS else label_e
            tail = ("reference" if eid == OURS else f"{diff:.1e}") if diff is not None else (status or "")
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {tail} |")
        lines.append("")
        settings = {eid: c["engines"][eid].get("settings") for c in group[-1:] for eid in c["engines"]}
        lines.append("Settings (at " + f"{group[-1]['threads']}T): " + "; ".join(
            f"{results['labels'].get(eid, eid)}: {s}" for eid, s in settings.items() if s) + ".")
        lines.append("")

    if results.get("cold_start"):
        lines += ["## Cold start of mobilenet-np (new process)", "",
                  "A new Python process imports mobilenet_np, loads an HDF5 weights file written by `model.save`, "
                  "and runs one batch-1 inference. Wall = whole process as seen by the parent (interpreter start "
                  "included); not pinned. Medians of the runs shown.", "",
                  "| model | Numba cache | runs | wall s | import s | load s | first call s | second call ms |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, entry in results["cold_start"].items():
            for label, e in entry.items():
                cache = "warm" if label == "jit_cache_warm" else "disabled (MOBILENET_NP_JIT_CACHE=0)"
                lines.append(f"| {results['model_labels'][key]} | {cache} "
                             f"| {len(e['runs'])} | {e['wall_s']:.2f} | {e['import_s']:.2f} | {e['load_s']:.3f} | "
                             f"{e['first_call_s']:.2f} | {e['second_call_s'] * 1e3:.2f} |")
        lines.append("")

    if results.get("memory"):
        lines += ["## Peak memory at batch 32 (new process, 1 thread)", "",
                  "Peak resident memory (VmHWM) of a new process that builds the weights, loads the engine and "
                  f"runs {results['params']['memory_calls']} batch-32 inference(s); in brackets, the resident memory "
                  "after loading, before the first call. 'baseline' builds the weights and the input only (Python "
                  "+ NumPy + mobilenet_np + the 32-image input). The peers' processes build the weights with the "
                  "NumPy backend, so Numba is not loaded there. (`ru_maxrss` is in results.json too, but on Linux "
                  "it carries over the parent's high-water mark through fork+exec, so it reads at least the "
                  "parent's size, about 120 MB here; VmHWM is reset at exec.)", "",
                  "| engine | " + " | ".join(f"{results['model_labels'][k]} peak MB (after load MB)"
                                            for k in results["memory"]) + " |",
                  "|---|" + "---|" * len(results["memory"])]
        eids = list(dict.fromkeys(e for v in results["memory"].values() for e in v))
        for eid in eids:
            cells = []
            for v in results["memory"].values():
                r = v.get(eid, {})
                cells.append(f"{r['vmhwm_mb']:.0f} ({r['rss_loaded_mb']:.0f})" if "vmhwm_mb" in r
                             else r.get("error", ""))
            lines.append(f"| {results['labels'].get(eid, eid)} | " + " | ".join(cells) + " |")
        lines.append("")

    lines += family_lines(results) + contended_lines(results)
    if results.get("profiles"):
        from mobilenet_np.tables import format_profile
        lines += ["## Per-layer profile of mobilenet-np (numba), batch 1", "",
                  "`model.profile(x)`: median per layer over the repeats, in the pinned worker process. "
                  "Each layer is timed from the previous layer's end, as a separate compiled call, so "
                  "dispatch is included and the sum is above a real forward pass.", ""]
        lines += profile_peak_lines(results)
        for threads, profiles in results["profiles"].items():
            for key, rows in profiles.items():
                rows = [{**r, "out_shape": tuple(r["out_shape"])} for r in rows]
                lines += [f"<details><summary>{results['model_labels'][key]}, {threads} thread(s): "
                          f"{sum(r['ms'] for r in rows):.3f} ms</summary>", "", "```", format_profile(rows), "```",
                          "", "</details>", ""]
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    path.write_text("\n".join(lines))


SGEMM_PEAK_GMACS = 48.0          # the SGEMM peak per core of the AVX2 machine issue 16 was written on, GMAC/s


def sgemm_gmacs(size: int = 1024, repeats: int = 7) -> float:
    """This CPU's SGEMM speed on the worker's threads: NumPy's BLAS multiplying two float32
    size x size matrices, the best of ``repeats`` (GMAC/s); one of the two peaks ``sgemm_peak``
    takes the higher of (the issue gave 48 GMAC/s per core for the AVX2 machine)."""
    rng = np.random.default_rng(0)
    a, b = (rng.random((size, size), dtype=np.float32) for _ in range(2))
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return size ** 3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sgemm_peak(results: dict) -> tuple[float, str]:
    """(GMAC/s per core, what it is): the higher of NumPy's SGEMM (``sgemm_gmacs``) and our
    tightest FMA loop (``kernels/float_peak.py``: OpenBLAS ran its AVX2 kernels on the AMD
    AVX-512 machine, at 53 against 122 GMAC/s), both measured by the one-thread worker; else the issue's
    figure for the AVX2 machine."""
    one = next((w for w in results.get("workers", []) if w.get("threads") == 1), {})
    found = {"NumPy's SGEMM, float32 1024 x 1024": one.get("sgemm_gmacs") or 0,
             "FMA loop, kernels/float_peak.py": one.get("fma_gmacs") or 0}
    what = max(found, key=found.get)
    if not found[what]:
        return SGEMM_PEAK_GMACS, "the AVX2 machine's SGEMM, issue 16"
    return found[what], what + ", measured by the one-thread worker"


def family_lines(results: dict) -> list[str]:
    """Speed against LiteRT per model and (batch, threads): LiteRT's median time over ours at
    the same batch, so above 1 we are faster, for latency and throughput alike."""
    family = results.get("family") or []
    if not family:
        return []
    configs = results["configs"]
    cols = sorted({(c["batch"], c["threads"]) for c in configs})
    keys = list(dict.fromkeys(c["model"] for c in configs))
    lines = ["## The family: speed against LiteRT + XNNPACK", "",
             "LiteRT's median time / ours, same batch and threads (above 1: we are faster; at batch 1 it is "
             "the inverse of the latency ratio of the tables above, at batch 32 the throughput ratio). "
             "In brackets, the same against ONNX Runtime. The seed models are repeated for comparison.", "",
             "| model | " + " | ".join(f"b{b} {t}T" for b, t in cols) + " |", "|---|" + "---|" * len(cols)]
    for key in keys:
        cells = []
        for b, t in cols:
            c = next((c for c in configs if c["model"] == key and c["batch"] == b and c["threads"] == t), None)
            cells.append(_speed_cell(c))
        lines.append(f"| {results['model_labels'][key]} | " + " | ".join(cells) + " |")
    return lines + [""]


def _speed_cell(config) -> str:
    def ms(eid):
        s = (config or {}).get("engines", {}).get(eid, {}).get("stats")
        return s["median_ms"] if s else None
    ours, lite, ort = ms(OURS), ms("litert"), ms("onnxruntime")
    if ours is None:
        return "—"
    text = f"{lite / ours:.2f}" if lite else "—"
    return text + (f" ({ort / ours:.2f})" if ort else "")


def contended_lines(results: dict) -> list[str]:
    entries = results.get("contended") or []
    if not entries:
        return []
    lines = ["## Under contention: throughput with a busy loop on one of the worker's CPUs", "",
             "A separate process spins on the last pinned CPU. It is paused (SIGSTOP) and resumed (SIGCONT) "
             "so that quiet and contended rounds alternate, in a shuffled order, within the same minutes. "
             "'Retained' is contended / quiet throughput (medians). The goal is that ours keeps at least "
             "LiteRT's share.", "",
             "| model | engine | quiet img/s (IQR ms) | contended img/s (IQR ms) | retained | ours retained / its |",
             "|---|---|---|---|---|---|"]
    for entry in entries:
        ours = entry["engines"].get(OURS, {}).get("retained")
        label = f"{entry['model_label']} b{entry['batch']} {entry['threads']}T"
        for eid, e in entry["engines"].items():
            if "retained" not in e:
                lines.append(f"| {label} | {e['label']} | — | — | — | {e.get('status', '')} |")
                continue
            q, c = e["quiet"], e["contended"]
            rel = "(ours)" if eid == OURS else (f"{ours / e['retained']:.2f}" if ours else "")
            lines.append(f"| {label} | {e['label']} | {q['images_per_s']:.0f} ({_fmt_ms(q['q1_ms'])}–"
                         f"{_fmt_ms(q['q3_ms'])}) | {c['images_per_s']:.0f} ({_fmt_ms(c['q1_ms'])}–"
                         f"{_fmt_ms(c['q3_ms'])}) | {e['retained']:.2f} | {rel} |")
    return lines + [""]


def profile_peak_lines(results: dict) -> list[str]:
    """Per model and thread count: each op kind's time share and GMAC/s as a % of the SGEMM
    peak of the cores it ran on (``sgemm_peak`` per core)."""
    per_core, source = sgemm_peak(results)
    table = []
    kinds: list[str] = []
    for threads, profiles in results["profiles"].items():
        for key, rows in profiles.items():
            total = sum(r["ms"] for r in rows)
            peak = per_core * int(threads)
            by_kind: dict[str, list[float]] = {}
            for r in rows:
                if r["macs"]:
                    by_kind.setdefault(r["op"], [0.0, 0.0])
                    by_kind[r["op"]][0] += r["ms"]
                    by_kind[r["op"]][1] += r["macs"]
            kinds += [k for k in by_kind if k not in kinds]
            table.append((results["model_labels"][key], threads, total, peak, by_kind))
    lines = [f"Against the peak of {per_core:.0f} GMAC/s per core (x threads; {source}); per op kind: "
             "share of the time, GMAC/s, % of peak.", "",
             "| model | T | total ms | all: GMAC/s (% peak) | " + " | ".join(kinds) + " |",
             "|---|---|---|---|" + "---|" * len(kinds)]
    for label, threads, total, peak, by_kind in table:
        macs = sum(m for _, m in by_kind.values())
        cells = []
        for k in kinds:
            ms, m = by_kind.get(k, (0.0, 0.0))
            cells.append(f"{ms / total:.0%}, {m / ms / 1e6:.1f} ({m / ms / 1e6 / peak:.0%})" if ms else "")
        lines.append(f"| {label} | {threads} | {total:.3f} | {macs / total / 1e6:.1f} ({macs / total / 1e6 / peak:.0%}) | "
                     + " | ".join(cells) + " |")
    return lines + [""]


def write_chart(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = [c for c in results["configs"] if c["model"] not in results.get("family", [])]   # seed models
    keys = list(dict.fromkeys((c["model"], c["batch"]) for c in configs))
    engines = list(dict.fromkeys(e for c in configs for e, v in c["engines"].items() if v.get("stats")))
    fig, axes = plt.subplots(1, len(keys), figsize=(max(9.0, 4.2 * len(keys) + 1), 5.0), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, (model, batch) in zip(axes[0], keys):
        group = sorted((c for c in configs if c["model"] == model and c["batch"] == batch), key=lambda c: c["threads"])
        width = 0.8 / max(len(engines), 1)
        for j, eid in enumerate(engines):
            xs, ys, lo, hi = [], [], [], []
            for i, c in enumerate(group):
                s = c["engines"].get(eid, {}).get("stats")
                if not s:
                    continue
                ips = s["images_per_s"]
                xs.append(i + (j - (len(engines) - 1) / 2) * width)
                ys.append(ips)
                lo.append(ips - batch / (s["q3_ms"] / 1e3))
                hi.append(batch / (s["q1_ms"] / 1e3) - ips)
            if xs:
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, color=colors(j % 10),
                       label=results["labels"].get(eid, eid), edgecolor="black" if eid == OURS else None,
                       linewidth=1.2 if eid == OURS else 0)
        ax.set_xticks(range(len(group)), [f"{c['threads']} thread{'s' if c['threads'] > 1 else ''}" for c in group])
        ax.set_yscale("log")
        ax.set_title(f"{group[0]['model_label']}, batch {batch}")
        ax.set_ylabel("images / s (log)")
        ax.grid(axis="y", which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.suptitle(f"mobilenet-np vs peers — {results['machine']['cpu']}, median images/s (bars: IQR)", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def notes(results: dict) -> list[str]:
    out = []
    for c in results["configs"]:
        for e in c["engines"].values():
            s = e.get("stats")
            if s and s["block_spread"] > SPREAD_FLAG:
                out.append(f"{c['model_label']} b{c['batch']} {c['threads']}T {e['label']}: block medians range "
                           f"{min(s['block_medians_ms']):.3f}–{max(s['block_medians_ms']):.3f} ms "
                           f"(quartile ratio x{s['block_spread']:.2f}); treat its median with care.")
            elif e.get("status", "ok") not in ("ok", "batch 1 only"):
                out.append(f"{c['model_label']} b{c['batch']} {c['threads']}T {e['label']}: {e['status']}")
        la, lb = c.get("loadavg_before"), c.get("loadavg_after")
        if la and lb and max(la[0], lb[0]) > c["threads"] + 0.5:
            out.append(f"{c['model_label']} b{c['batch']} {c['threads']}T: 1-min load average {la[0]:.2f} → "
                       f"{lb[0]:.2f} on {results['machine']['cpu_count']} CPUs: other jobs were running.")
    return out


# --- main ------------------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few rounds and calls: a smoke test, not a measurement")
    ap.add_argument("--models", default="v1,v2", help="comma-separated: v1 (V1 0.5_160), v2 (V2 0.5_96)")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 12, --quick 2)")
    ap.add_argument("--engines", default=os.environ.get("MOBILENET_NP_BENCH_ENGINES", ""),
                    help="comma-separated engine ids (default: all installed; env MOBILENET_NP_BENCH_ENGINES)")
    ap.add_argument("--family", action="store_true",
                    help="also time the rest of the family (V1 1.0_224, V2 1.0_224, V2 1.4_224, V1 0.25_128, "
                         "V2 0.35_96) against LiteRT and ONNX Runtime")
    ap.add_argument("--skip", default="",
                    help="comma-separated parts to skip: coldstart, memory, profile, contended, chart")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default benchmarks/results)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        cfg = json.loads(Path(args.worker).read_text())
        result = worker(cfg)
        Path(cfg["result_path"]).write_text(json.dumps(result))
        return 0

    from benchmarks import peers

    t_start = time.perf_counter()
    params = dict(QUICK if args.quick else FULL)
    if args.repeats:
        params["rounds"] = args.repeats
    skip = set(csv(args.skip))
    params["profile"] = "profile" not in skip
    models = csv(args.models)
    if args.family:
        models += [m for m in peers.FAMILY if m not in models]
    for m in models:
        if m not in peers.MODELS:
            raise SystemExit(f"unknown model {m!r}; choose from {', '.join(peers.MODELS)}")
    batches = [int(b) for b in csv(args.batches)]
    thread_counts = [int(t) for t in csv(args.threads)]
    wanted = csv(args.engines) or list(peers.ENGINES)
    unknown = [e for e in wanted if e not in peers.ENGINES]
    if unknown:
        raise SystemExit(f"unknown engine(s) {unknown}; choose from {', '.join(peers.ENGINES)}")
    skipped = {e: peers.ENGINES[e].unavailable() for e in wanted if peers.ENGINES[e].unavailable()}
    engine_ids = [e for e in wanted if e not in skipped]
    if OURS not in engine_ids:
        raise SystemExit("the numba engine (mobilenet-np) must be among the engines")
    for eid, why in skipped.items():
        log(f"skipping {eid}: {why}")

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    fingerprint = engine_fingerprint()
    log(f"{machine['cpu']}; engines: {', '.join(engine_ids)}")

    export_errors, h5_paths = {}, {}
    for key in models:
        model = peers.build_model(key)
        t0 = time.perf_counter()
        export_errors[key] = peers.export_all(model, model_engines(key, engine_ids))
        log(f"exports for {key}: {time.perf_counter() - t0:.1f} s; failures: {export_errors[key] or 'none'}")
        if key in peers.FAMILY:          # cold start and memory: the seed models only
            continue
        h5 = peers.cache_dir(model) / "weights.h5"
        if not h5.exists():
            model.save(h5)
        h5_paths[key] = h5

    workers = []
    with tempfile.TemporaryDirectory(prefix="mnp-bench-") as tmp:
        for threads in thread_counts:
            cfg = {"threads": threads, "models": models, "batches": batches, "engines": engine_ids,
                   "params": params, "export_errors": export_errors,
                   "contended": "contended" not in skip and threads >= 2,
                   "result_path": str(Path(tmp) / f"worker-{threads}.json")}
            cfg_path = Path(tmp) / f"worker-{threads}-cfg.json"
            cfg_path.write_text(json.dumps(cfg))
            env = {**os.environ, "PYTHONPATH": _pythonpath(), "NUMBA_NUM_THREADS": str(threads),
                   "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
                   "MKL_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "2"}
            log(f"worker: {threads} thread(s)")
            proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--worker", str(cfg_path)], env=env,
                                  cwd=REPO, check=False)
            if proc.returncode:
                raise SystemExit(f"the {threads}-thread worker failed (exit {proc.returncode})")
            workers.append(json.loads(Path(cfg["result_path"]).read_text()))

    results = {
        "command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine, "params": params, "tolerance": peers.TOLERANCE, "seed": peers.SEED,
        "models": {k: vars(peers.MODELS[k]) for k in models},
        "model_labels": {k: peers.MODELS[k].label for k in peers.MODELS},
        "labels": {e.id: e.label for e in peers.ENGINES.values()} | {"baseline": "baseline (no engine)"},
        "skipped_engines": skipped, "export_errors": export_errors,
        "workers": [{k: v for k, v in w.items() if k not in ("configs", "profiles", "contended")} for w in workers],
        "configs": [c for w in workers for c in w["configs"]],
        "profiles": {str(w["threads"]): w["profiles"] for w in workers if w.get("profiles")},
        "contended": [c for w in workers for c in w.get("contended", [])],
        "family": [m for m in models if m in peers.FAMILY],
    }
    if "coldstart" not in skip:
        from benchmarks.coldstart import cold_start
        results["cold_start"] = cold_start(h5_paths, params["cold_runs"], params["cold_nocache_runs"])
    if "memory" not in skip:
        results["memory"] = peak_memory(list(h5_paths), engine_ids, params["memory_calls"])
    results["engine_source_sha256"] = {"start": fingerprint, "end": engine_fingerprint()}
    results["notes"] = notes(results) + [f"{e} not run: {why}" for e, why in skipped.items()]
    if fingerprint != results["engine_source_sha256"]["end"]:
        results["notes"].append("mobilenet_np's source files changed while this ran (another edit in the work "
                                "tree): the workers, cold-start and memory processes may have run different code.")
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = time.perf_counter() - t_start

    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    write_markdown(results, out_dir / "results.md")
    if "chart" not in skip:
        try:
            write_chart(results, out_dir / "chart.png")
        except ImportError:
            log("matplotlib is not installed: no chart")
    log(f"wrote {out_dir / 'results.md'} in {results['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
