"""The on-disk Parquet dataset that ``embed_on_dask`` writes, and everything that reads it back.

A dataset folder holds ``part-00000.parquet`` ... (columns ``path`` and ``features``; the
footer under ``mobilenet_np`` holds the partition's identity and failures), ``_failures.jsonl``
and, written last, ``_manifest.json``.  Here: writing one partition file, telling whether a
partition is finished (its file intact and holding exactly the expected inputs), preparing and
tidying the folder, the manifest, and reading the partitions back in order for a single-file
output (``Gathered``).  Needs pyarrow, not Dask: the scheduling is ``distributed.py``'s.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import write_atomically
from .inputs import Item, text_path
from .outputs import write_lines, write_parquet
from .pipeline import EmbedResult

MANIFEST = "_manifest.json"
FAILURES = "_failures.jsonl"
FOOTER_KEY = b"mobilenet_np"
FORMAT_NAME, FORMAT_VERSION = "mobilenet-np embeddings", 1


def write_partition(folder: str, k: int, result: EmbedResult, identity: dict, width: int) -> None:
    """``part-<k>.parquet``, written under a name of its own then renamed (a rerun of the task
    after a kill replaces it; a reader never sees half a file)."""
    footer = {"identity": identity, "failures": [[text_path(p), reason] for p, reason in result.failures]}
    features = np.asarray(result.features, np.float32).reshape(-1, width)
    write_atomically(partition_path(folder, k),
                     lambda tmp: write_parquet(tmp, [text_path(p) for p in result.paths], features, FOOTER_KEY, footer))


def partition_path(folder: str, k: int) -> str:
    return os.path.join(folder, f"part-{k:05d}.parquet")


def footer(path: str):
    """(footer dict, row count) of a partition file, or None if it is missing or unreadable."""
    try:
        meta = pq.read_metadata(path)
        return json.loads(meta.metadata[FOOTER_KEY]), meta.num_rows
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError):
        return None


def finished(folder: str, k: int, items: list[Item], identity: dict):
    """(rows, failures) of partition k if its file is intact and holds exactly these inputs
    embedded by this model and preset, else None."""
    found = footer(partition_path(folder, k))
    if found is None:
        return None
    recorded, rows = found
    failures = [tuple(f) for f in recorded.get("failures", [])]
    if recorded.get("identity") != identity or rows + len(failures) != len(items):
        return None
    return rows, failures


def check_partitions(folder, partitions, identities) -> tuple[int, list[tuple[str, str]]]:
    """Rows and failures of the finished dataset, after checking every partition once more."""
    rows, failures = 0, []
    for k, items in enumerate(partitions):
        done = finished(folder, k, items, identities[k])
        if done is None:
            raise RuntimeError(f"{partition_path(folder, k)} is missing or does not match after the run; "
                               "was the folder changed meanwhile?")
        rows += done[0]
        failures += done[1]
    return rows, failures


def prepare_folder(folder: str, resume: bool) -> None:
    os.makedirs(folder, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, MANIFEST))  # incomplete from here until it is rewritten
    if not resume:
        clear_dataset(folder)


def _our_files(folder: str):
    """(path, name) of the files in ``folder`` that runs write: partitions, their temporary
    files, the failures file and the manifest."""
    for entry in os.scandir(folder):
        name = entry.name
        partition = name.startswith("part-") and name.endswith(".parquet")
        temporary = name.startswith(".part-") and name.endswith(".tmp")
        if partition or temporary or name in (MANIFEST, FAILURES):
            yield entry.path, name


def clear_dataset(folder: str) -> None:
    """Remove the files a run writes (and nothing else) from ``folder``."""
    for path, _ in list(_our_files(folder)):
        os.remove(path)


def remove_leftovers(folder: str, count: int) -> None:
    """Temporary files of killed tasks, and partitions beyond ``count`` from an earlier run."""
    keep = {os.path.basename(partition_path(folder, k)) for k in range(count)} | {MANIFEST, FAILURES}
    for path, name in list(_our_files(folder)):
        if name not in keep:
            os.remove(path)


def write_manifest(folder: str, model, attrs: dict, summary) -> None:
    """``_failures.jsonl``, then ``_manifest.json`` last: its presence means the dataset is complete.
    ``summary`` is ``distributed.DatasetSummary``."""
    lines = (json.dumps({"path": p, "error": reason}, ensure_ascii=False) for p, reason in summary.failures)
    write_atomically(os.path.join(folder, FAILURES), lambda tmp: write_lines(tmp, lines))
    manifest = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, **attrs,
        "input_size": list(model.input_size), "num_features": model.num_features,
        "columns": {"path": "string", "features": f"fixed_size_list<float32>[{model.num_features}]"},
        "rows": summary.rows, "failed": len(summary.failures), "failures_file": FAILURES,
        "partitions": [os.path.basename(partition_path(folder, k)) for k in range(summary.partitions)],
    }
    text = json.dumps(manifest, indent=1) + "\n"
    write_atomically(os.path.join(folder, MANIFEST), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


class Gathered:
    """The finished partitions read back in order, through the part of ``Journal``'s interface
    that ``write_output`` uses (``rows``, ``width``, ``failures``, ``batches()``)."""

    def __init__(self, folder: str, count: int, width: int, rows: int, failures: list):
        self.folder, self.count, self.width, self.rows, self.failures = folder, count, width, rows, failures

    def batches(self):
        for k in range(self.count):
            table = pq.read_table(partition_path(self.folder, k))
            flat = table.column("features").combine_chunks().flatten().to_numpy()
            yield EmbedResult(table.column("path").to_pylist(), flat.reshape(-1, self.width), [])
