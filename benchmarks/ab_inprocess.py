"""A/B of the Numba engine of an older commit against this checkout's, in one process.

    python -m benchmarks.ab_inprocess OLD_REV [--rounds 40] [--calls 10] [--threads 2] [--batch 1]

``benchmarks.ab`` starts a process per revision and round; on this machine, whose speed swings by
up to 2x for seconds at a time, a few percent between two processes is lost in that swing.  Here
both engines run in the same process, in alternating blocks of ``calls`` calls, in a shuffled order
each round, so each pair of blocks sees the same phase, and the ratio is taken per pair (its median and quartiles).

The old revision is checked out into a temporary folder (``git worktree``) and its package is
copied there under another name (``mnp_old``), so that both import side by side: the engine's
modules import one another relatively.  Both engines get the same seeded weights (V1 0.5/160
and V2 0.5/96) and must give the same features.  Timed per engine: the features of a batch
(``NumbaBackend._features_into``) on the calling thread alone ("serial") and with every layer
shared by ``threads`` threads ("split"), the two ways the engine's chooser picks between for
small batches.  The old commit's engine must have the same constructor and ``_features_into``
(true since 2026-12).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = (("v1", "mobilenet_v1", 160), ("v2", "mobilenet_v2", 96))


def old_package(rev: str, into: Path):
    """The engine modules of ``rev``, imported as the package ``mnp_old``."""
    tree = into / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)
    try:
        shutil.copytree(tree / "mobilenet_np", into / "pkg" / "mnp_old")
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
    sys.path.insert(0, str(into / "pkg"))
    import mnp_old.forward.engine
    import mnp_old.spec
    return mnp_old


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    import numba

    import mobilenet_np as mnp
    from mobilenet_np.forward.engine import chunk_images
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    with tempfile.TemporaryDirectory(prefix="mnp-ab-inprocess-") as tmp:
        old = old_package(args.old, Path(tmp))
        lines = [f"In-process A/B: {args.old} (old) vs the checkout (new), batch {args.batch}, "
                 f"{args.threads} threads, {args.rounds} rounds of {args.calls} calls per way; "
                 "time ratio new/old per pair of blocks: median (quartiles); below 1: new is faster", "",
                 "| model | way | old ms | new ms | new/old |", "|---|---|---|---|---|"]
        for key, arch, size in MODELS:
            model = mnp.build(arch, 0.5, size, num_classes=0, seed=20261122)
            old_arch = old.spec.build(arch, 0.5)
            engines = {"new": model.backend,
                       "old": old.forward.engine.NumbaBackend(old_arch, model.tensors, model.folded,
                                                              old.spec.TF_BATCHNORM_EPSILON)}
            geos = {"new": model._geometry((size, size)), "old": old.spec.geometry(old_arch, (size, size))}
            x = model._network_input(np.random.default_rng(0).random((args.batch, size, size, 3), dtype=np.float32))
            chunk = chunk_images(geos["new"])          # images per pass, as the engine's own calls take them
            outs = {}
            ways = {}
            for side in ("old", "new"):
                for way, parallel, threads in (("serial", False, 1), ("split", True, args.threads)):
                    out = outs[(side, way)] = np.empty((args.batch, geos["new"][-1].layer.out_depth), np.float32)
                    ways[(side, way)] = (lambda e=engines[side], g=geos[side], o=out, p=parallel, t=threads:
                                         e._features_into(g, x, 0, args.batch, chunk, o, p, t))
            for run in ways.values():
                for _ in range(20):
                    run()
            first = outs[("new", "serial")]
            if not all(np.array_equal(o, first) for o in outs.values()):
                raise SystemExit(f"{key}: the two commits' features differ")
            times = {k: [] for k in ways}
            order = random.Random(20261202)
            for _ in range(args.rounds):
                keys = list(ways)
                order.shuffle(keys)                 # no way always runs after the same other one
                for k in keys:
                    run = ways[k]
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        run()
                    times[k].append((time.perf_counter() - start) / args.calls)
            for way in ("serial", "split"):
                o, n = np.array(times[("old", way)]), np.array(times[("new", way)])
                r = n / o
                lines.append(f"| {key} | {way} | {1e3 * np.median(o):.3f} | {1e3 * np.median(n):.3f} | "
                             f"{np.median(r):.3f} ({np.percentile(r, 25):.2f}-{np.percentile(r, 75):.2f}) |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
