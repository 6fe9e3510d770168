"""Embedding on Dask: a LocalCluster of worker processes gives the local embed's rows, as a
Parquet dataset pyarrow reads alone, as an .h5 file, or in memory; a worker SIGKILLed part way
loses and doubles nothing; broken inputs are reported as locally; --resume keeps only intact
partitions."""

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed (pip install -e .[dask])")
pa = pytest.importorskip("pyarrow", reason="the dask extra is not installed (pip install -e .[dask])")
import pyarrow.json  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import mobilenet_np as mnp  # noqa: E402
from mobilenet_np import cli, errors  # noqa: E402
from mobilenet_np.distributed import client_for_address, embed_on_dask, local_cluster  # noqa: E402
from mobilenet_np.errors import ImageError  # noqa: E402
from mobilenet_np.weights_file import file_sha256  # noqa: E402

from test_embed import BROKEN  # noqa: E402  the local embed's broken files

REPO = Path(__file__).resolve().parents[1]
NUM_GOOD = 300
FEATURE_TOLERANCE = 1e-6
SLOW_DECODE_SECONDS = 0.02


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """NUM_GOOD small JPEG/PNG images, the local embed's broken files, a list of them all with the
    broken ones last, and a random-weight V2 0.5/96 model."""
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("dask")
    folder = root / "photos"
    folder.mkdir()
    for i in range(NUM_GOOD):
        h, w = rng.integers(40, 130, 2)
        coarse = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8))
        coarse.resize((int(w), int(h)), Image.Resampling.BILINEAR).save(folder / f"img_{i:03d}.{('jpg', 'png')[i % 2]}")
    for name, (make, _) in BROKEN.items():
        make(folder / name, rng)
    order = folder / "order.lst"  # the same inputs, the broken ones last
    order.write_text("".join(f"{p.name}\n" for p in sorted(folder.glob("img_*"))) + "".join(f"{n}\n" for n in BROKEN))
    model_path = root / "model.h5"
    mnp.build("mobilenet_v2", depth_multiplier=0.5, input_size=96, num_classes=0, seed=3).save(model_path)
    return {"root": root, "folder": folder, "order": order, "model": model_path}


@pytest.fixture(scope="module")
def reference(data):
    return mnp.embed(data["folder"], data["model"], progress=False)


@pytest.fixture(scope="module")
def client():
    with local_cluster(n_workers=2, threads_per_worker=1) as client:
        yield client


def read_dataset(folder: Path):
    """Rows, failures and manifest of a dataset, with pyarrow and json only."""
    table = pq.read_table(folder)
    assert table.schema.field("path").type == pa.string()
    assert table.schema.field("features").type == pa.list_(pa.float32(), 1280)
    features = table.column("features").combine_chunks().flatten().to_numpy().reshape(-1, 1280)
    failed = pyarrow.json.read_json(folder / "_failures.jsonl") if (folder / "_failures.jsonl").stat().st_size else None
    failures = list(zip(failed["path"].to_pylist(), failed["error"].to_pylist())) if failed else []
    return table.column("path").to_pylist(), features, failures, json.loads((folder / "_manifest.json").read_text())


def assert_same_rows(paths, features, failures, reference):
    assert paths == reference.paths  # each good path exactly once, in input order
    np.testing.assert_allclose(features, reference.features, rtol=0, atol=FEATURE_TOLERANCE)
    assert failures == reference.failures


def partition_files(folder: Path):
    return sorted(folder.glob("part-*.parquet"))


# --- the dataset and the other outputs ----------------------------------------------------------


def test_dataset_equals_the_local_embed(data, reference, client, tmp_path):
    out = tmp_path / "features"
    summary = embed_on_dask(data["folder"], data["model"], client, out, partition_size=23, batch_size=8)
    paths, features, failures, manifest = read_dataset(out)
    assert_same_rows(paths, features, failures, reference)
    count = -(-(NUM_GOOD + len(BROKEN)) // 23)
    names = [f"part-{k:05d}.parquet" for k in range(count)]
    assert [p.name for p in partition_files(out)] == manifest["partitions"] == names
    assert manifest["model"] == "model" and manifest["weights_sha256"] == file_sha256(data["model"])
    assert manifest["preset"] == "hub" and manifest["package_version"] == mnp.__version__
    assert manifest["rows"] == summary.rows == NUM_GOOD and summary.skipped == 0
    assert not list(out.glob(".*"))  # no temporary files left


def test_in_memory_model_and_result(data, reference, client):
    model = mnp.load(data["model"])  # shipped to the workers as weights bytes, not as a path
    result = embed_on_dask(data["folder"], model, client, partition_size=64)
    assert_same_rows(result.paths, result.features, result.failures, reference)


class CountModelLoads(distributed.WorkerPlugin):
    """Counts, on each worker, how often a weights file is read to build a model."""

    def setup(self, worker):
        import mobilenet_np.distributed as on_dask

        self.loads, self.load = 0, on_dask.from_file

        def counting(*args, **kwargs):
            self.loads += 1
            return self.load(*args, **kwargs)

        on_dask.from_file = counting

    def teardown(self, worker):
        import mobilenet_np.distributed as on_dask

        on_dask.from_file = self.load


def test_each_worker_builds_the_model_once(data, reference, client):
    client.register_plugin(CountModelLoads(), name="count-model-loads")
    try:
        result = embed_on_dask(data["folder"], data["model"], client, partition_size=16)
        loads = client.run(lambda dask_worker: dask_worker.plugins["count-model-loads"].loads)
    finally:
        client.unregister_worker_plugin("count-model-loads")
    assert result.paths == reference.paths
    assert sorted(loads.values()) == [1, 1], loads  # 20 partitions, each worker read the weights once


def test_command_writes_the_local_h5_file(data, reference, client):
    result = subprocess.run(
        [sys.executable, "-m", "mobilenet_np", "embed", "photos", "--model", str(data["model"]), "-o", "dask.h5",
         "--dask", client.scheduler.address, "--partition-size", "50", "--quiet"],
        cwd=data["root"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert result.returncode == errors.EXIT_PARTIAL, result.stderr
    with h5py.File(data["root"] / "dask.h5") as f:
        paths = [p.decode() for p in f["paths"][()]]
        failures = list(zip((p.decode() for p in f["failed_paths"][()]), (e.decode() for e in f["failed_errors"][()])))
        assert_same_rows(paths, f["features"][()], failures, reference)
        assert f.attrs["weights_sha256"] == file_sha256(data["model"]) and f.attrs["preset"] == "hub"
    assert not (data["root"] / "dask.h5.parts").exists()


# --- broken inputs, resume ----------------------------------------------------------------------


def test_on_error_fail_raises_the_first_bad_input_and_resume_finishes(data, reference, client):
    out, size = data["root"] / "failed-run", 40
    first_bad = reference.failures[0][0]
    bad_partition = NUM_GOOD // size  # order.lst lists the broken files after the good ones
    with pytest.raises(ImageError, match=first_bad):
        embed_on_dask(data["order"], data["model"], client, out, partition_size=size, on_error="fail")
    kept = {p.name for p in partition_files(out)}  # and maybe later ones that were running
    assert kept >= {f"part-{k:05d}.parquet" for k in range(bad_partition)}
    assert f"part-{bad_partition:05d}.parquet" not in kept and not (out / "_manifest.json").exists()
    summary = embed_on_dask(data["order"], data["model"], client, out, partition_size=size, resume=True)
    assert summary.skipped >= bad_partition and summary.failures == reference.failures
    assert_same_rows(*read_dataset(out)[:3], reference)


def test_resume_redoes_damaged_partitions_and_drops_stale_ones(data, reference, client, tmp_path):
    out, size = tmp_path / "features", 60
    embed_on_dask(data["folder"], data["model"], client, out, partition_size=size)
    files = partition_files(out)
    files[1].write_bytes(files[1].read_bytes()[:-100])  # torn footer
    files[2].unlink()
    (out / "part-00099.parquet").write_bytes(files[0].read_bytes())  # from an earlier, longer run
    untouched = files[3].stat().st_mtime_ns
    summary = embed_on_dask(data["folder"], data["model"], client, out, partition_size=size, resume=True)
    assert summary.skipped == len(files) - 2 and summary.processed == 2 * size
    assert files[3].stat().st_mtime_ns == untouched and partition_files(out) == files
    assert_same_rows(*read_dataset(out)[:3], reference)


# --- a worker killed part way -------------------------------------------------------------------


class SlowDecoding(distributed.WorkerPlugin):
    """Every decode on the workers (restarted ones too) takes SLOW_DECODE_SECONDS longer, so
    the run lasts long enough to kill a worker while partitions are pending."""

    def setup(self, worker):
        from mobilenet_np.model import MobileNet

        decode = MobileNet.preprocess

        def slow(model, *args, **kwargs):
            time.sleep(SLOW_DECODE_SECONDS)
            return decode(model, *args, **kwargs)

        MobileNet.preprocess = slow


def tasks_on_a_dead_worker(dask_scheduler):
    """How many tasks were processing on a worker that died (their retry count)."""
    return sum(task.suspicious for task in dask_scheduler.tasks.values())


def test_worker_killed_mid_run_loses_and_doubles_nothing(data, reference, tmp_path):
    out, size = tmp_path / "features", 10
    count = -(-(NUM_GOOD + len(BROKEN)) // size)
    outcome = {}

    def run(client):
        try:
            outcome["summary"] = embed_on_dask(data["folder"], data["model"], client, out, partition_size=size)
        except BaseException as exc:  # re-raised by the test thread
            outcome["error"] = exc

    with local_cluster(n_workers=2, threads_per_worker=1) as client:
        client.register_plugin(SlowDecoding(), name="slow-decoding")
        runner = threading.Thread(target=run, args=(client,))
        runner.start()
        deadline = time.monotonic() + 120
        while len(partition_files(out) if out.exists() else []) < 4:
            assert time.monotonic() < deadline and runner.is_alive(), "no partitions were written"
            time.sleep(0.01)
        pids = client.run(os.getpid)
        busy = [address for address, keys in client.processing().items() if keys]
        written = len(partition_files(out))
        os.kill(pids[busy[0]], signal.SIGKILL)
        assert written < count - 4 and runner.is_alive(), "the kill came too late: no work was pending"
        retried = 0
        while runner.is_alive() and not retried:
            retried = client.run_on_scheduler(tasks_on_a_dead_worker)
            time.sleep(0.01)
        assert retried, "no task was running on the killed worker"  # Dask reruns that task
        runner.join(timeout=240)
        assert not runner.is_alive(), "the run did not finish after the kill"
        after = client.run(os.getpid)
    if "error" in outcome:
        raise outcome["error"]
    assert pids[busy[0]] not in after.values() and len(after) == 2  # the nanny started a new worker
    assert outcome["summary"].partitions == count and outcome["summary"].rows == NUM_GOOD
    assert_same_rows(*read_dataset(out)[:3], reference)
    assert not list(out.glob(".*"))


# --- options and packaging ----------------------------------------------------------------------


def test_local_clusters_never_oversubscribe(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    for workers, threads in ((3, None), (2, 2), (1, 3)):
        with pytest.raises(ValueError, match="oversubscribe"):
            local_cluster(workers, threads).__enter__()
    for spec in ("local:0", "local:two", "local:"):
        with pytest.raises(ValueError, match="local:N"):
            client_for_address(spec, None)


def test_core_package_does_not_need_dask(monkeypatch, capsys):
    code = ("import sys, mobilenet_np, mobilenet_np.cli, mobilenet_np.pipeline; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'dask', 'distributed', 'pyarrow'}))")
    imported = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "[]"
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "mobilenet_np.distributed")
    with pytest.raises(ImportError, match=r"mobilenet-np\[dask\]"):
        importlib.import_module("mobilenet_np.distributed")
    status = cli.main(["embed", "x.jpg", "--model", "m.h5", "-o", "out", "--dask", "local"])
    assert status == errors.EXIT_FAILURE and "mobilenet-np[dask]" in capsys.readouterr().err
