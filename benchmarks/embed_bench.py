"""End-to-end embedding throughput next to pure inference: where the time of a real job goes.

    python -m benchmarks.embed_bench [--images 200] [--rounds 3]

Generates ~1-megapixel JPEGs (``dask_bench.make_images``), then measures, for V2 0.5/96 (the
real TF-Hub weights when ../shared is present) and V1 0.5/160 (seeded random weights):

* pure inference: ``model(batch)`` on already decoded batches of 32 (images/s);
* decoding alone: ``model.preprocess`` over every file in the same thread pool ``embed`` uses;
* end to end: ``mnp.embed`` (decode + resize + inference, overlapped), with the model's
  threads set, and with the default (the cores the decoding threads leave);
* each with JPEG draft decoding on (the default) and off.

Medians over ``--rounds`` runs; writes benchmarks/results/embed.md.  Timings only: nothing
here is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import mobilenet_np as mnp
from mobilenet_np.embedding import _default_workers

from .dask_bench import IMAGE_SIZE, make_images, model_file

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 32


def _median_seconds(run, rounds: int) -> float:
    run()                                    # warm-up: JIT, file cache
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(model, files: list[str], threads: int, rounds: int) -> dict:
    batch = np.random.default_rng(0).random((BATCH, *model.input_size, 3), dtype=np.float32)
    count = len(files)
    row = {"inference": BATCH / _median_seconds(lambda: model(batch, threads=threads), rounds * 5)}
    for draft in (True, False):
        def decode():
            with ThreadPoolExecutor(_default_workers()) as pool:
                list(pool.map(lambda f: model.preprocess(f, draft=draft), files))
        row[f"decode_draft_{draft}"] = count / _median_seconds(decode, rounds)
    row["embed"] = count / _median_seconds(
        lambda: mnp.embed(files, model=model, batch_size=BATCH, threads=threads), rounds)
    row["embed_default"] = count / _median_seconds(lambda: mnp.embed(files, model=model, batch_size=BATCH), rounds)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        make_images(folder, args.images)
        files = sorted(str(p) for p in folder.iterdir())
        v2_path, v2_weights = model_file(Path(tmp))
        models = {"V2 0.5/96 (" + v2_weights + ")": mnp.load(v2_path),
                  "V1 0.5/160 (seeded random weights)": mnp.build("mobilenet_v1", 0.5, 160, num_classes=0)}
        lines = [
            "# End-to-end embedding vs pure inference (benchmarks/embed_bench.py)", "",
            f"{args.images} JPEGs of {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} (1.0 MP, quality 90), preset hub, batch {BATCH}, "
            f"{_default_workers()} decoding threads; median of {args.rounds} runs. "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, mobilenet-np {mnp.__version__}.", "",
            "| model | model threads | inference only (img/s) | decode + resize only, draft on / off (img/s) "
            "| end to end `mnp.embed(threads=T)` (img/s) | end to end / inference | `mnp.embed` default threads (img/s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, model in models.items():
            for threads in (1, 2):
                r = measure(model, files, threads, args.rounds)
                lines.append(f"| {name} | {threads} | {r['inference']:.0f} | {r['decode_draft_True']:.0f} / "
                             f"{r['decode_draft_False']:.0f} | {r['embed']:.0f} | {r['embed'] / r['inference']:.2f} | "
                             f"{r['embed_default']:.0f} |")
                print(lines[-1], flush=True)
    lines += ["", "Decoding a 1-megapixel JPEG costs far more than running the network on the 96x96 or "
              "160x160 result, so an embedding job is bound by decoding; draft mode (decoding at 1/2, 1/4 "
              "or 1/8 scale when the target is that much smaller) is the main lever there."]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "embed.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'embed.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
