"""``mobilenet-np serve`` throughput and latency next to in-process ``model(x)``.

    python -m benchmarks.serve_bench [--seconds 5] [--quick]

For V1 0.5/160 and V2 0.5/96 feature-vector models (seeded random weights; the speed does not
depend on the values), starts a real server process (default options: on 2 cores, 1 model
thread and 1 decode worker) and sends single-image requests from 1, 8 and 32 concurrent
clients (aiohttp, in this process, on the same cores) for ``--seconds`` each:

* TF Serving JSON float arrays (``{"instances": [[[...]]]}``, the image's pixels as JSON numbers);
* TF Serving JSON with a base64 JPEG (640x480, quality 90; decoded and resized by the server);
* Open Inference Protocol FP32 in Triton's binary tensor format (what ``tritonclient.http``
  sends by default).

Throughput (images/s) and p50/p99 latency, beside in-process ``model(x)`` at batch sizes 1,
8 and 32 with the server's model thread count.  Writes benchmarks/results/serve.md.
Timings only: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

import mobilenet_np as mnp

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODELS = {"V1 0.5/160": ("mobilenet_v1", 0.5, 160), "V2 0.5/96": ("mobilenet_v2", 0.5, 96)}
CONCURRENCY = (1, 8, 32)
KINDS = ("float JSON", "b64 JPEG", "v2 binary FP32")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(path: Path, log: Path, *options: str):
    port = _free_port()
    args = [sys.executable, "-m", "mobilenet_np.serve", "--model", f"m={path}", "--port", str(port), *options]
    proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not become ready:\n{log.read_text()}")


def request_bodies(model, rng) -> dict:
    height, width = model.input_size
    x = rng.random((1, height, width, 3), dtype=np.float32)
    yy, xx = np.mgrid[0:480, 0:640]  # a smooth picture with some grain: about 60 KB as a JPEG
    smooth = np.stack([xx * 255 / 640, yy * 255 / 480, (xx + yy) * 127 / 1120], -1)
    pixels = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    header = json.dumps({"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return {
        "float JSON": ("/v1/models/m:predict", json.dumps({"instances": x.tolist()}).encode(), {}),
        "b64 JPEG": ("/v1/models/m:predict",
                     json.dumps({"instances": [{"b64": base64.b64encode(buf.getvalue()).decode()}]}).encode(), {}),
        "v2 binary FP32": ("/v2/models/m/infer", header + x.tobytes(),
                           {"Inference-Header-Content-Length": str(len(header))}),
    }


async def load(url: str, path: str, body: bytes, headers: dict, clients: int, seconds: float):
    import aiohttp
    latencies, errors = [], 0
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def client():
            nonlocal errors
            while time.perf_counter() < stop:
                t = time.perf_counter()
                async with session.post(url + path, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t)
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return (len(latencies) / elapsed, np.percentile(latencies, 50), np.percentile(latencies, 99), errors,
            len(latencies))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_process(model, batch: int, threads: int, seconds: float) -> tuple[float, float]:
    """(images/s, CPU ms per image) of model(x) on a batch."""
    x = np.random.default_rng(0).random((batch, *model.input_size, 3), dtype=np.float32)
    model(x, threads=threads)
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        model(x, threads=threads)
        n += batch
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n * 1e3


def run(seconds: float, models=MODELS, concurrency=CONCURRENCY) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    cores = os.cpu_count() or 1
    threads = max(1, cores - max(1, cores // 2))  # the server's default model threads
    with tempfile.TemporaryDirectory() as tmp:
        for label, (arch, multiplier, size) in models.items():
            model = mnp.build(arch, multiplier, size, num_classes=0, seed=0)
            path = Path(tmp) / f"{arch}.h5"
            model.save(path)
            baseline = {c: in_process(model, c, threads, seconds / 2) for c in concurrency}
            baseline2 = {c: in_process(model, c, cores, seconds / 2)[0] for c in concurrency}
            bodies = request_bodies(model, rng)
            proc, url = start_server(path, Path(tmp) / "server.log")
            try:
                for kind in KINDS:
                    path_, body, headers = bodies[kind]
                    asyncio.run(load(url, path_, body, headers, 4, 1.0))  # warm the connections and pool
                    for c in concurrency:
                        cpu = process_cpu_seconds(proc.pid)
                        rate, p50, p99, errors, count = asyncio.run(load(url, path_, body, headers, c, seconds))
                        cpu_ms = (process_cpu_seconds(proc.pid) - cpu) / count * 1e3
                        rows.append({"model": label, "kind": kind, "clients": c, "rate": rate, "p50": p50 * 1e3,
                                     "p99": p99 * 1e3, "errors": errors, "body": len(body), "cpu_ms": cpu_ms,
                                     "in_process": baseline[c][0], "in_process_cpu_ms": baseline[c][1],
                                     "in_process_all": baseline2[c], "threads": threads})
                        print(f"{label:<11} {kind:<15} c={c:<3} {rate:8.1f} img/s  p50 {p50 * 1e3:7.1f} ms  "
                              f"p99 {p99 * 1e3:7.1f} ms  server CPU {cpu_ms:.2f} ms/img  in-process b{c} "
                              f"{baseline[c][0]:7.1f} img/s, CPU {baseline[c][1]:.2f} ms/img", flush=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(120)
    return rows


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(rows: list[dict], seconds: float) -> str:
    cores = os.cpu_count()
    threads = rows[0]["threads"]
    lines = [
        "# mobilenet-np serve vs in-process inference (benchmarks/serve_bench.py)", "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {_commit()}, {platform.machine()}, {cores} CPUs, "
        f"mobilenet-np {mnp.__version__}. Server with default options ({threads} model thread(s), "
        f"{max(1, cores // 2)} decode worker(s), --max-batch 32, --batch-timeout-ms 2); single-image requests "
        f"from N concurrent aiohttp clients in the benchmark process (on the same cores) for {seconds:g} s each. "
        f"In-process: `model(x)` on a batch of N, {threads} thread(s) (the server's) and {cores} threads. "
        "Seeded random feature-vector weights. CPU ms/img: the server process's CPU time (all its threads) "
        "per image, next to this process's CPU time per image in model(x): unlike throughput, it hardly "
        "depends on what else runs on the machine.", "",
        "| model | request | body | clients | served img/s | p50 ms | p99 ms | errors | in-process img/s, batch = clients "
        f"({threads} thr / {cores} thr) | served / in-process ({threads} thr) | server CPU ms/img | "
        "in-process CPU ms/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['kind']} | {r['body'] / 1024:.0f} KiB | {r['clients']} | {r['rate']:.0f} | "
                     f"{r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} | {r['in_process']:.0f} / "
                     f"{r['in_process_all']:.0f} | {r['rate'] / r['in_process']:.2f} | {r['cpu_ms']:.2f} | "
                     f"{r['in_process_cpu_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement (default 5)")
    parser.add_argument("--output", type=Path, default=RESULTS / "serve.md")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of the harness: V2 only, 1 and 4 clients, 0.3 s each")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 0.3
        rows = run(args.seconds, {"V2 0.5/96": MODELS["V2 0.5/96"]}, (1, 4))
    else:
        rows = run(args.seconds)
    text = report(rows, args.seconds)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
