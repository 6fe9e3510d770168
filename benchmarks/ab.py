"""Interleaved A/B of two commits of mobilenet-np: is the new one slower anywhere?

    python -m benchmarks.ab OLD_REV NEW_REV [--rounds 8] [--calls 60] [--threads 1,2] [--out FILE.md]
                            [--old-env KEY=VALUE ...] [--new-env KEY=VALUE ...]

Both revisions are checked out into a temporary folder (``git worktree``).  Each round starts one
measuring process per (revision, thread count), in shuffled order, pinned with ``taskset`` to as
many CPUs as threads; the process builds V1 0.5/160 and V2 0.5/96 with the same seeded weights,
warms up (compiling or loading the kernels: each tree keeps its own kernel cache), checks that
its features equal those of the other revision, then times ``calls`` batch-1 calls and a few
batch-32 calls.  Reported: per cell the median over rounds of the per-process medians, with the
range over rounds, and the speed ratio new/old (above 1: the new commit is faster).  Because the
two revisions alternate within each round, a slow phase of the machine hits both alike.
``--old-env``/``--new-env`` add environment settings to one side's processes, to A/B a setting
on one commit (e.g. ``HEAD HEAD --new-env NUMBA_THREADING_LAYER=tbb``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = (("v1", "mobilenet_v1", 160), ("v2", "mobilenet_v2", 96))

# The measuring process: runs with the revision's tree first on sys.path; prints one JSON line.
WORKER = r"""
import json, sys, time
import numpy as np
import mobilenet_np as mnp
calls, checks = int(sys.argv[1]), {}
out = {}
for key, arch, size in %r:
    model = mnp.build(arch, 0.5, size, num_classes=0, seed=20261122)
    rng = np.random.default_rng(0)
    x1 = rng.random((1, size, size, 3), dtype=np.float32)
    x32 = rng.random((32, size, size, 3), dtype=np.float32)
    checks[key] = model(x1).tobytes().hex()[:64]
    for _ in range(10):
        model(x1)
    model(x32)
    b1 = []
    for _ in range(calls):
        t = time.perf_counter(); model(x1); b1.append(time.perf_counter() - t)
    b32 = []
    for _ in range(max(3, calls // 10)):
        t = time.perf_counter(); model(x32); b32.append(time.perf_counter() - t)
    out[key] = {"b1_ms": 1e3 * float(np.median(b1)), "b32_img_s": 32 / float(np.median(b32))}
import numba
try:
    layer = numba.threading_layer()
except ValueError:          # no parallel region ran (1 thread)
    layer = "none"
print(json.dumps({"cells": out, "checks": checks, "layer": layer}))
""" % (MODELS,)


def checkout(rev: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(into), rev], check=True,
                   capture_output=True)
    return into


def measure(tree: Path, threads: int, calls: int, cache: Path, extra_env: dict | None = None) -> dict:
    env = {**os.environ, **(extra_env or {}), "PYTHONPATH": str(tree), "NUMBA_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MOBILENET_NP_HOME": str(cache), "MOBILENET_NP_QUIET": "1"}
    cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:threads])
    done = subprocess.run(["taskset", "-c", cpus, sys.executable, "-c", WORKER, str(calls)], cwd=tree, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{tree}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    parser.add_argument("--old-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--new-env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    envs = {side: dict(item.split("=", 1) for item in getattr(args, f"{side}_env")) for side in ("old", "new")}
    thread_counts = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory(prefix="mnp-ab-") as tmp:
        tmp = Path(tmp)
        trees = {"old": checkout(args.old, tmp / "old"), "new": checkout(args.new, tmp / "new")}
        try:
            results = {(side, t): [] for side in trees for t in thread_counts}
            order = random.Random(20261201)
            for side in trees:           # compile (or load) each tree's kernels before timing
                measure(trees[side], 1, 3, tmp / f"cache-{side}", envs[side])
            for r in range(args.rounds):
                jobs = list(results)
                order.shuffle(jobs)
                for side, t in jobs:
                    results[(side, t)].append(measure(trees[side], t, args.calls, tmp / f"cache-{side}", envs[side]))
                print(f"round {r + 1} of {args.rounds} done", file=sys.stderr, flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
    layers = {side: sorted({x["layer"] for t in thread_counts for x in results[(side, t)]}) for side in trees}
    same = all(a["checks"] == b["checks"] for a, b in zip(results[("old", thread_counts[0])],
                                                            results[("new", thread_counts[0])]))
    settings = "".join(f"; {side} with {' '.join(getattr(args, f'{side}_env'))}" for side in ("old", "new")
                       if getattr(args, f"{side}_env"))
    lines = [f"A/B {args.old} (old) vs {args.new} (new){settings}, {args.rounds} rounds, medians over rounds "
             f"[range]; speed new/old > 1 means new is faster; features identical: {same}; Numba threading "
             f"layers: old {'/'.join(layers['old'])}, new {'/'.join(layers['new'])}", "",
             "| cell | old | new | speed new/old |", "|---|---|---|---|"]
    for t in thread_counts:
        for key, _, _ in MODELS:
            for metric, unit in (("b1_ms", "ms"), ("b32_img_s", "img/s")):
                old = np.array([x["cells"][key][metric] for x in results[("old", t)]])
                new = np.array([x["cells"][key][metric] for x in results[("new", t)]])
                speed = np.median(new) / np.median(old) if unit == "img/s" else np.median(old) / np.median(new)
                lines.append(f"| {key} {metric.split('_')[0]} {t}T | {np.median(old):.3f} {unit} "
                             f"[{old.min():.3f}-{old.max():.3f}] | {np.median(new):.3f} {unit} "
                             f"[{new.min():.3f}-{new.max():.3f}] | {speed:.3f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
