"""Cold start: how long a fresh install takes to give its first feature vector, next to the peers.

    python -m benchmarks.coldstart [--quick] [--models v1,v2] [--out benchmarks/results/coldstart.md]
                                   [--venv DIR]

Every figure comes from a new process, with the kernel cache in a temporary, empty
``MOBILENET_NP_HOME`` unless said otherwise (nothing touches the user's own cache):

* **first feature, cold**: ``mnp.load(h5)(x)`` in Python (time from the interpreter's start to
  the first result, as seen by the parent) and ``mobilenet-np embed`` of one JPEG (the whole
  command), at 1 and 2 threads; tiered (the default: NumPy path while the child compiles) and,
  without ``--quick``, untiered (``MOBILENET_NP_TIERED=0``: the compile in the process).
* **total compile**: ``mobilenet-np warmup``'s work into an empty cache: wall and CPU seconds, and
  the seconds of Numba's compile events per function, for each set; and the command itself.
* **switch** (not with ``--quick``): in a cold Python process, when the compiled engine takes
  over from the NumPy path.
* **warm start**: import + load + first call with the cache filled (median of several runs),
  and the warm ``embed`` command.
* **Dask**: a LocalCluster of one 1-thread worker, cold and warm cache: cluster start, then
  ``embed_on_dask`` of 32 one-megapixel JPEGs as one partition (the worker's first partition).
* **peers**: ONNX Runtime and LiteRT (XNNPACK), import + load + first result on the same
  weights (``peers.py`` exports), 1 thread.

Before measuring (here and in ``cold_start``), the package's Python files are byte-compiled
(``compileall``), as ``pip install .`` does and as the first import does wherever bytecode may be
written: run from a checkout with ``PYTHONDONTWRITEBYTECODE=1`` (this machine sets it), every
process would otherwise compile them from source, ~0.15 s more per start (measured 2026-12-02).

With ``--venv DIR`` our processes run as after ``pip install .`` in a fresh venv (the issue's setting):
the package installed in DIR (made if absent), not this checkout.  In a large environment every start
pays more: Numba's first compile or cache load scans every installed package's entry points (67 ms in
this development environment, 3.5 ms in a fresh venv; measured 2026-12-02).

``cold_start`` (warm vs disabled Numba cache, for ``run.py``'s table) lives here too.  The
machine is shared and not quiet: single runs, so read differences below ~20 % as noise.  (The
module is longer than 400 lines because each of these paths needs its own child script.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results" / "coldstart.md"


#: How our processes run: this checkout on PYTHONPATH with this interpreter, or (``--venv``, ``use_venv``)
#: the package pip-installed in a venv, run from a folder outside the checkout.
OURS = {"python": sys.executable, "cwd": REPO, "venv": None}


def use_venv(folder: Path) -> None:
    """Run our processes in the venv ``folder`` (made, with the dependencies, if absent), this checkout
    pip-installed into it as a user installs it (not editable; reinstalled each time).  Installed from a
    copy of the files git tracks (as they are in the working tree): pip builds a local folder in place,
    and setuptools' ``build/`` there keeps modules deleted since, which went into the venv."""
    import shutil
    python = folder / "bin" / "python"
    fresh = not python.exists()
    if fresh:
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    with tempfile.TemporaryDirectory(prefix="mnp-source-") as source:
        for name in filter(None, tracked.decode().split("\0")):
            if (REPO / name).is_file():          # (a tracked file deleted in the working tree is left out)
                (Path(source) / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, Path(source) / name)
        again = [] if fresh else ["--force-reinstall", "--no-deps"]      # (a fresh venv gets the dependencies)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *again, source], check=True)
    OURS.update(python=str(python), cwd=folder, venv=str(folder))


def _pythonpath() -> str:
    return os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])


def _env(home, threads: int | None = None, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOBILENET_NP_") and k != "XDG_CACHE_HOME"}
    env.update({"MOBILENET_NP_HOME": str(home)}, **extra)
    if OURS["venv"]:
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = _pythonpath()
    if threads:
        env.update({k: str(threads) for k in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")})
    return env


def _timed(args, env, timeout=3600, cwd=None) -> tuple[float, float, str, str]:
    """Run a command (ours: ``OURS``' interpreter and folder): (wall s, CPU s of it and its children, stdout,
    stderr)."""
    if cwd is None:
        args, cwd = [OURS["python"], *args[1:]] if args[0] == sys.executable else args, OURS["cwd"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{' '.join(map(str, args[:4]))} ... failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout, proc.stderr


def _json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


# --- mobilenet-np in Python -----------------------------------------------------------------

PYTHON_FIRST = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import mobilenet_np as mnp
t1 = time.perf_counter()
model = mnp.load(sys.argv[1])
t2 = time.perf_counter()
x = np.random.default_rng(0).random((1, *model.input_size, 3), dtype=np.float32)
model(x, threads=int(sys.argv[2]))
t3 = time.perf_counter()
info = {"import_s": t1 - t0, "load_s": t2 - t1, "first_call_s": t3 - t2, "in_process_s": t3 - t0,
        "tier": getattr(model.backend, "tier", model.backend.name)}
if sys.argv[3] == "switch":
    calls = 0
    while model.backend.tier == "numpy":
        model(x, threads=int(sys.argv[2]))
        calls += 1
    info.update(switch_s=time.perf_counter() - t0, numpy_calls=calls)
t4 = time.perf_counter()
model(x, threads=int(sys.argv[2]))
info["next_call_ms"] = (time.perf_counter() - t4) * 1e3
print(json.dumps(info))
"""


def python_first(h5: Path, home, threads: int, mode: str = "-", **extra) -> dict:
    wall, cpu, out, err = _timed([sys.executable, "-c", PYTHON_FIRST, str(h5), str(threads), mode],
                                 _env(home, threads, **extra))
    return {**_json(out), "wall_s": wall, "cpu_s": cpu, "message": [l for l in err.splitlines() if "mobilenet-np" in l]}


def cli_embed(h5: Path, image: Path, home, threads: int, out_dir: Path, **extra) -> dict:
    out = out_dir / f"embed-{time.monotonic_ns()}.npy"
    wall, cpu, _, err = _timed([sys.executable, "-m", "mobilenet_np", "embed", str(image), "--model", str(h5),
                                "-o", str(out), "--threads", str(threads)], _env(home, threads, **extra))
    return {"wall_s": wall, "cpu_s": cpu, "message": [l for l in err.splitlines() if "compiling" in l]}


COMPILE = r"""
import json, sys, time
from numba.core import event
from mobilenet_np.forward.tiered import fill_cache
from mobilenet_np.quantized_model import warm_up_integer_kernels
stack, own, total = [], {}, {}
with event.install_recorder("numba:compile") as rec:
    fill_cache() if sys.argv[1] == "float" else warm_up_integer_kernels()
for stamp, ev in rec.buffer:          # inclusive and own (minus nested compiles) seconds per function
    name = ev.data["dispatcher"].py_func.__qualname__
    name = ev.data["dispatcher"].py_func.__module__.rsplit(".", 1)[-1] + "." + name
    if ev.is_start:
        stack.append([name, stamp, 0.0])
    else:
        name, start, nested = stack.pop()
        total[name] = total.get(name, 0.0) + stamp - start
        own[name] = own.get(name, 0.0) + stamp - start - nested
        if stack:
            stack[-1][2] += stamp - start
print(json.dumps({"own": own, "inclusive": total}))
"""


def total_compile(home, kind: str = "float") -> dict:
    """``mobilenet-np warmup``'s work into an empty cache, with Numba's compile events recorded:
    the float engine (``kind="float"``) or the integer kernels of quantized models ("integer")."""
    wall, cpu, out, _ = _timed([sys.executable, "-c", COMPILE, kind], _env(home, 2, MOBILENET_NP_QUIET="1"))
    return {"wall_s": wall, "cpu_s": cpu, **_json(out)}


def warmup_command(home) -> dict:
    """``mobilenet-np warmup -q`` as a user runs it, into an empty cache: both sets, the integer
    kernels in a second process (two cores here)."""
    wall, cpu, _, _ = _timed([sys.executable, "-m", "mobilenet_np", "warmup", "-q"], _env(home, 2))
    return {"wall_s": wall, "cpu_s": cpu}


# --- Dask -----------------------------------------------------------------------------------

DASK_FIRST = r"""
import json, sys, time
t0 = time.perf_counter()
from mobilenet_np.distributed import embed_on_dask, local_cluster
with local_cluster(1, 1) as client:
    t1 = time.perf_counter()
    embed_on_dask([sys.argv[2]], sys.argv[1], client, partition_size=10_000, batch_size=32, threads_per_worker=1,
                  progress=False)
    t2 = time.perf_counter()
print(json.dumps({"cluster_s": t1 - t0, "first_partition_s": t2 - t1}))
"""


def dask_first(h5: Path, images: Path, home) -> dict:
    env = {**_env(home, 1), "PYTHONPATH": _pythonpath()}     # the dask extra: this interpreter and checkout
    wall, cpu, out, _ = _timed([sys.executable, "-c", DASK_FIRST, str(h5), str(images)], env, cwd=REPO)
    return {**_json(out), "wall_s": wall, "cpu_s": cpu}


# --- peers ----------------------------------------------------------------------------------

PEER_FIRST = {
    "onnxruntime": r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import onnxruntime as ort
t1 = time.perf_counter()
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.inter_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
t2 = time.perf_counter()
h = int(sys.argv[2])
session.run(None, {"images": np.random.default_rng(0).random((1, h, h, 3), dtype=np.float32)})
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_call_s": t3 - t2, "in_process_s": t3 - t0}))
""",
    "litert": r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from ai_edge_litert.interpreter import Interpreter
t1 = time.perf_counter()
interp = Interpreter(model_path=sys.argv[1], num_threads=1)
interp.allocate_tensors()
t2 = time.perf_counter()
h = int(sys.argv[2])
interp.set_tensor(interp.get_input_details()[0]["index"], np.random.default_rng(0).random((1, h, h, 3), dtype=np.float32))
interp.invoke()
interp.get_tensor(interp.get_output_details()[0]["index"])
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_call_s": t3 - t2, "in_process_s": t3 - t0}))
""",
}


def peer_first(engine: str, path: Path, size: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    wall, cpu, out, _ = _timed([sys.executable, "-c", PEER_FIRST[engine], str(path), str(size)], env, cwd=REPO)
    return {**_json(out), "wall_s": wall, "cpu_s": cpu}


# --- for run.py: warm vs disabled Numba cache -----------------------------------------------

COLD_START = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import mobilenet_np as mnp
t1 = time.perf_counter()
model = mnp.load(sys.argv[1])
t2 = time.perf_counter()
x = np.random.default_rng(0).random((1, *model.input_size, 3), dtype=np.float32)
model(x)
t3 = time.perf_counter()
model(x)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_call_s": t3 - t2, "second_call_s": t4 - t3,
                  "in_process_s": t3 - t0}))
"""


def cold_start(paths: dict[str, Path], runs: int, nocache_runs: int) -> dict:
    """Per model: a new process with the kernel cache warm (a folder of its own, filled first),
    and with the cache disabled (every kernel compiled in the process: tiering off, so that
    this times the engine itself)."""
    import shutil
    byte_compile()
    out = {}
    kernel_home = tempfile.mkdtemp(prefix="mobilenet-np-cold-")
    for key, path in paths.items():
        entry = {}
        for label, cache, n in (("jit_cache_warm", "1", runs), ("jit_cache_disabled", "0", nocache_runs)):
            env = {**os.environ, "MOBILENET_NP_JIT_CACHE": cache, "PYTHONPATH": _pythonpath(),
                   "MOBILENET_NP_HOME": kernel_home, "MOBILENET_NP_TIERED": "0"}
            if cache == "1":          # fill the cache first, untimed
                subprocess.run([sys.executable, "-c", COLD_START, str(path)], env=env, check=True,
                               capture_output=True, cwd=REPO)
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, "-c", COLD_START, str(path)], env=env, check=True,
                                      capture_output=True, text=True, cwd=REPO)
                wall = time.perf_counter() - t0
                samples.append({**_json(proc.stdout), "wall_s": wall})
            entry[label] = {"runs": samples, **{k: float(np.median([s[k] for s in samples])) for k in samples[0]}}
            print(f"cold start {key} {label}: {entry[label]['wall_s']:.2f} s wall", file=sys.stderr, flush=True)
        out[key] = entry
    shutil.rmtree(kernel_home, ignore_errors=True)
    return out


# --- the run ----------------------------------------------------------------------------------

def _prepare(keys, folder: Path) -> dict:
    """Per model: the weights file and the peers' exports (built with the NumPy backend, so
    that this process compiles nothing), and one JPEG of 1 megapixel for ``embed``."""
    from benchmarks import peers
    from benchmarks.dask_bench import make_images
    files = {}
    for key in keys:
        model = peers.build_model(key, backend="numpy")
        h5 = peers.cache_dir(model) / "weights.h5"
        if not h5.exists():
            model.save(h5)
        errors = peers.export_all(model, ["onnxruntime", "litert"])
        files[key] = {"h5": h5, "size": model.input_size[0], "errors": errors,
                      "onnxruntime": peers.cache_dir(model) / "model.onnx",
                      "litert": peers.cache_dir(model) / "model.tflite"}
    (folder / "images").mkdir()
    make_images(folder / "images", 32)
    return files


def measure(keys, quick: bool, folder: Path) -> dict:
    files = _prepare(keys, folder)
    image = next((folder / "images").iterdir())
    fresh = iter(folder / f"home-{i}" for i in range(1000))
    results = {"models": list(keys), "quick": quick, "first": {}, "peers": {}, "warm": {}}

    def note(what, r):
        print(f"{what}: {json.dumps({k: v for k, v in r.items() if k != 'message'}, default=str)}", file=sys.stderr,
              flush=True)
        return r

    for key in keys:
        h5 = files[key]["h5"]
        for threads in (1, 2):
            results["first"][f"{key} python {threads}T"] = note(f"{key} python {threads}T",
                                                                python_first(h5, next(fresh), threads))
            results["first"][f"{key} cli {threads}T"] = note(f"{key} cli {threads}T",
                                                             cli_embed(h5, image, next(fresh), threads, folder))
        for engine in ("onnxruntime", "litert"):
            if engine in files[key]["errors"] or not files[key][engine].exists():
                results["peers"][f"{key} {engine}"] = {"error": files[key]["errors"].get(engine, "no export")}
                continue
            results["peers"][f"{key} {engine}"] = note(f"{key} {engine}",
                                                       peer_first(engine, files[key][engine], files[key]["size"]))
    warm_home = next(fresh)
    results["compile"] = note("total compile", total_compile(warm_home))
    results["compile_integer"] = note("integer compile", total_compile(next(fresh), "integer"))
    results["warmup"] = note("warmup command", warmup_command(next(fresh)))
    first_key = keys[0]
    h5 = files[first_key]["h5"]
    runs = 1 if quick else 5
    for key in keys:
        samples = [python_first(files[key]["h5"], warm_home, 1) for _ in range(runs)]
        results["warm"][f"{key} python 1T"] = note(f"{key} warm", {
            k: statistics.median(s[k] for s in samples) for k in ("import_s", "load_s", "first_call_s",
                                                                   "in_process_s", "wall_s", "next_call_ms")})
        results["warm"][f"{key} cli 1T"] = note(f"{key} warm cli", cli_embed(files[key]["h5"], image, warm_home, 1,
                                                                             folder))
    results["dask"] = {"cold": note("dask cold", dask_first(h5, folder / "images", next(fresh))),
                       "warm": note("dask warm", dask_first(h5, folder / "images", warm_home))}
    if not quick:
        results["switch"] = note("switch", python_first(h5, next(fresh), 1, "switch"))
        results["untiered"] = note("untiered", python_first(h5, next(fresh), 1, MOBILENET_NP_TIERED="0"))
    return results


def _row(name, r, cols):
    return f"| {name} | " + " | ".join(("-" if r.get(c) is None else f"{r[c]:.2f}") for c in cols) + " |"


def write_markdown(results: dict, path: Path, command: str) -> None:
    from benchmarks import peers
    label = {k: peers.MODELS[k].label for k in peers.MODELS}
    cols = ("wall_s", "in_process_s", "import_s", "load_s", "first_call_s", "next_call_ms")
    lines = ["# Cold start", "", f"`{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work was running: "
             "single runs, read differences below ~20 % as noise; the package byte-compiled first, as pip install does).  "
             + (f"Our processes ran in the venv {OURS['venv']}, the package pip-installed there (Dask's and the "
                "peers' in this checkout's environment).  " if OURS["venv"] else "")
             + "What each row is: benchmarks/coldstart.py.", "",
             "## First feature with an empty kernel cache (tiered: NumPy path while the child compiles)", "",
             "wall = the whole process as the parent sees it (interpreter start to exit; `embed` includes decoding "
             "and writing the file); in process = from the first line of the script to the first result.", "",
             "| run | wall s | in process s | import s | load s | first call s | next call ms | answered by |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results["first"].items():
        key, *rest = name.split(" ")
        lines.append(_row(f"{label[key]} {' '.join(rest)}", r, cols) + f" {r.get('tier', '(embed)')} |")
    if results.get("untiered"):
        lines.append(_row(f"{label[results['models'][0]]} python 1T, MOBILENET_NP_TIERED=0", results["untiered"],
                          cols) + " numba (compiled in the process) |")
    lines += ["", "## Peers: import + load + first result (new process, 1 thread, same weights)", "",
              "| run | wall s | in process s | import s | load s | first call s |", "|---|---|---|---|---|---|"]
    for name, r in results["peers"].items():
        key, engine = name.split(" ")
        lines.append(f"| {label[key]} {engine} | error: {r['error']} |" if "error" in r
                     else _row(f"{label[key]} {engine}", r, cols[:5]))
    c, ci = results["compile"], results.get("compile_integer")
    lines += ["", "## Total compile, warm start, switch", "",
              f"- Total compile of the float engine (`mobilenet-np warmup`'s float part, into an empty cache): "
              f"{c['wall_s']:.1f} s wall, {c['cpu_s']:.1f} CPU-s (user + system, the process and its children, "
              "import included)."]
    if ci:
        lines.append(f"- The integer kernels of quantized models (the rest of `mobilenet-np warmup`, compiled "
                     f"only when a quantized model is used), into another empty cache: {ci['wall_s']:.1f} s wall, "
                     f"{ci['cpu_s']:.1f} CPU-s.  Together: {c['cpu_s'] + ci['cpu_s']:.1f} CPU-s.")
    if results.get("warmup"):
        w = results["warmup"]
        lines.append(f"- Everything (`mobilenet-np warmup -q` into an empty cache: the float engine, and the integer "
                     f"kernels in a second process): {w['wall_s']:.1f} s wall, {w['cpu_s']:.1f} CPU-s.")
    lines += ["", "Wall seconds of Numba's compile events per function, own (minus the compiles nested in it) "
              "and inclusive:", "", "| function | own s | inclusive s |", "|---|---|---|",
              *(f"| {f} | {r['own'][f]:.1f} | {r['inclusive'][f]:.1f} |" for r in (c, ci or {"own": {}})
                for f in sorted(r["own"], key=r["own"].get, reverse=True) if r["own"][f] >= 0.05), ""]
    if results.get("switch"):
        s = results["switch"]
        lines.append(f"- Switch (cold Python process, {label[results['models'][0]]}, 1T): first result after "
                     f"{s['in_process_s']:.2f} s, compiled engine from {s['switch_s']:.1f} s "
                     f"({s['numpy_calls']} calls answered by the NumPy path meanwhile); next call {s['next_call_ms']:.1f} ms.")
    lines += ["", "Warm start (cache filled; Python: median of the runs):", "",
              "| run | wall s | in process s | import s | load s | first call s | next call ms |",
              "|---|---|---|---|---|---|---|"]
    for name, r in results["warm"].items():
        key, *rest = name.split(" ")
        lines.append(_row(f"{label[key]} {' '.join(rest)}", r, cols))
    d = results["dask"]
    lines += ["", f"## Dask: a fresh LocalCluster (1 worker x 1 thread), {label[results['models'][0]]}, "
              "32 one-megapixel JPEGs as one partition", "",
              "| kernel cache | cluster start s | first partition s | wall s |", "|---|---|---|---|",
              *(f"| {k} | {v['cluster_s']:.2f} | {v['first_partition_s']:.2f} | {v['wall_s']:.2f} |" for k, v in d.items()),
              ""]
    path.write_text("\n".join(lines))
    path.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))


def byte_compile() -> None:
    """The package's .pyc files, as ``pip install`` writes them (see the module notes)."""
    import compileall
    for package in ("mobilenet_np", "weights_tools"):
        if not compileall.compile_dir(str(REPO / package), quiet=1):
            raise SystemExit(f"could not byte-compile {REPO / package}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.coldstart", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one model, no switch or untiered run (each compiles)")
    ap.add_argument("--models", default=None, help="comma-separated: v1, v2 (default both; --quick: v2)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--venv", metavar="DIR", help="run our processes (not Dask's, nor the peers') in the venv DIR, "
                    "made if absent, with this checkout pip-installed into it: the issue's 'fresh venv' "
                    "(a large environment pays more per start: Numba scans every installed package's entry points)")
    args = ap.parse_args(argv)
    keys = (args.models or ("v2" if args.quick else "v1,v2")).split(",")
    byte_compile()
    if args.venv:
        use_venv(Path(args.venv).resolve())
    with tempfile.TemporaryDirectory(prefix="mnp-coldstart-") as tmp:
        results = measure(keys, args.quick, Path(tmp))
    write_markdown(results, Path(args.out), "python -m benchmarks.coldstart " + " ".join(argv or sys.argv[1:]))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
