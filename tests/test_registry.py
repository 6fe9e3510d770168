"""The registry: names, and load(name) downloading, checking, converting and caching an official
TF-Slim archive -- served here from a local HTTP server, never the internet."""

import functools
import http.server
import tarfile
import threading

import numpy as np
import pytest

import mobilenet_np as mnp
from mobilenet_np import registry, spec
from mobilenet_np.model import random_tensors

tf = pytest.importorskip("tensorflow", reason="tests write checkpoints with TensorFlow (parity extra)")
from tf_checkpoints import write_checkpoint  # noqa: E402


def test_registry_names():
    names = mnp.list_models()
    assert "mobilenet_v1_050_160" in names and "mobilenet_v2_050_96" in names
    assert "mobilenet_v2_140_224" in names and "mobilenet_v2_140_96" not in names
    e = registry.REGISTRY["mobilenet_v1_050_160"]
    assert (e.architecture, e.depth_multiplier, e.input_size) == ("mobilenet_v1", 0.5, 160)
    assert e.url.endswith("mobilenet_v1_2018_02_22/mobilenet_v1_0.5_160.tgz")
    assert registry.REGISTRY["mobilenet_v2_050_96"].url.endswith("mobilenet_v2_0.5_96.tgz")


@pytest.fixture
def archive_server(tmp_path):
    """A local server holding mobilenet_v2_0.5_96.tgz as the official archive lays it out."""
    served = tmp_path / "served"
    served.mkdir()
    work = tmp_path / "ckpt"
    arch = spec.mobilenet_v2(0.5)
    raw = random_tensors(arch, 1001, seed=11)
    ema = random_tensors(arch, 1001, seed=12)
    tensors = {**raw, **{k + "/ExponentialMovingAverage": v for k, v in ema.items()},
               "global_step": np.array(5, np.int64)}
    prefix = write_checkpoint(str(work / "mobilenet_v2_0.5_96.ckpt"), tensors)
    with tarfile.open(served / "mobilenet_v2_0.5_96.tgz", "w:gz") as tar:
        for f in sorted(work.iterdir()):
            tar.add(f, arcname=f"./{f.name}")
        (work / "mobilenet_v2_0.5_96_info.txt").write_text("Model: mobilenet_v2_0.5_96\n")
        tar.add(work / "mobilenet_v2_0.5_96_info.txt", arcname="./mobilenet_v2_0.5_96_info.txt")
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", prefix, ema
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_load_by_name_downloads_converts_and_caches(archive_server, tmp_path, monkeypatch, rng):
    url, prefix, ema = archive_server
    monkeypatch.setenv("MOBILENET_NP_MIRROR", url)
    monkeypatch.setenv("MOBILENET_NP_HOME", str(tmp_path / "cache"))
    model = mnp.load("mobilenet_v2_050_96")
    cached = tmp_path / "cache" / "mobilenet_v2_050_96.h5"
    assert cached.exists() and model.input_size == (96, 96) and model.num_classes == 1001
    assert model.name == "mobilenet_v2_050_96"
    np.testing.assert_array_equal(model.tensors["MobilenetV2/Conv_1/weights"], ema["MobilenetV2/Conv_1/weights"])
    x = rng.random((1, 96, 96, 3), dtype=np.float32)
    # Second load: from the cache, with the server gone.
    monkeypatch.setenv("MOBILENET_NP_MIRROR", "http://127.0.0.1:9")
    np.testing.assert_array_equal(mnp.load("mobilenet_v2_050_96")(x), model(x))
    assert not list((tmp_path / "cache").glob(".download-*"))


def test_offline_error_says_what_to_get(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENET_NP_MIRROR", "http://127.0.0.1:9")     # nothing listens there
    monkeypatch.setenv("MOBILENET_NP_HOME", str(tmp_path / "cache"))
    with pytest.raises(ConnectionError) as info:
        mnp.load("mobilenet_v1_050_160")
    message = str(info.value)
    assert "mobilenet_v1_2018_02_22/mobilenet_v1_0.5_160.tgz" in message
    assert "weights-tools convert" in message and str(tmp_path / "cache" / "mobilenet_v1_050_160.h5") in message
    assert not (tmp_path / "cache" / "mobilenet_v1_050_160.h5").exists()


def test_unknown_name():
    with pytest.raises(KeyError, match="neither a weights file nor a registry name"):
        mnp.load("mobilenet_v3_large")
