"""mobilenet-np serve against a real server process: TF Serving REST (b64 JPEGs, float arrays,
row and columnar, logits, classify), the Open Inference Protocol through tritonclient (FP32,
UINT8, BYTES; binary and JSON), health, metadata, metrics, and bad requests."""

import base64
import gzip
import json

import numpy as np
import pytest

import mobilenet_np as mnp
from conftest import png_claiming, shared_path
from serve_process import ServerProcess, jpeg, save_models

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install -e .[serve])")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install -e .[serve])")
httpclient = pytest.importorskip("tritonclient.http",
                                 reason="the test extra is not installed (pip install -e .[test])")
from tritonclient.utils import InferenceServerException  # noqa: E402

MAX_BODY = 8 * 2**20  # the photos in shared/images take 4.7 MB in base64


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return save_models(tmp_path_factory.mktemp("serve_models"))


@pytest.fixture(scope="module")
def models(paths):
    return {name: mnp.load(path) for name, path in paths.items()}


@pytest.fixture(scope="module")
def server(paths, tmp_path_factory):
    proc = ServerProcess(paths, tmp_path_factory.mktemp("serve_log") / "server.log",
                         "--max-body-bytes", str(MAX_BODY), "--batch-timeout-ms", "5")
    proc.wait_ready()
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def triton(server):
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def alone(model, images) -> np.ndarray:
    """Each image's feature vector computed alone: the reference every served vector must equal."""
    return np.concatenate([model(x[None]) for x in images])


def logits_alone(model, images) -> np.ndarray:
    return np.concatenate([model.logits(x[None]) for x in images])


def photo_files():
    folder = shared_path("images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    if not files:
        pytest.skip(f"no photos in {folder}")
    return files


def test_status_and_metadata(server, models):
    status, doc = server.json("GET", "/v1/models/v2")
    assert status == 200
    assert doc == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                             "status": {"error_code": "OK", "error_message": ""}}]}
    status, doc = server.json("GET", "/v1/models/v2/versions/1/metadata")
    assert status == 200 and doc["model_spec"]["name"] == "v2"
    signatures = doc["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "logits"}
    dims = [int(d["size"]) for d in signatures["serving_default"]["inputs"]["images"]["tensor_shape"]["dim"]]
    assert dims == [-1, 96, 96, 3]
    out = signatures["logits"]["outputs"]["logits"]["tensor_shape"]["dim"]
    assert [int(d["size"]) for d in out] == [-1, 1001]
    status, doc = server.json("GET", "/v1/models/v1/metadata")
    assert set(doc["metadata"]["signature_def"]["signature_def"]) == {"serving_default"}
    status, doc = server.json("GET", "/v1/models/nope")
    assert status == 404 and "nope" in doc["error"] and "v1, v2" in doc["error"]
    status, doc = server.json("GET", "/v1/models/v2/versions/7")
    assert status == 404 and "version" in doc["error"]


@pytest.mark.parametrize("name", ["v2", "v1"])
def test_tfserving_b64_real_photos(server, models, name):
    """Every photo in shared/images, row and columnar format: exactly model(model.preprocess(file))."""
    files = photo_files()
    model = models[name]
    expected = alone(model, [model.preprocess(f) for f in files])
    encoded = [b64(f.read_bytes()) for f in files]
    status, doc = server.json("POST", f"/v1/models/{name}:predict", {"instances": encoded})
    assert status == 200, doc
    assert np.array_equal(np.array(doc["predictions"], np.float32), expected)
    status, doc = server.json("POST", f"/v1/models/{name}:predict", {"inputs": {"images": encoded}})
    assert status == 200, doc
    assert np.array_equal(np.array(doc["outputs"], np.float32), expected)


def test_tfserving_b64_generated_jpegs(server, models, rng):
    """JPEGs smaller, equal to and larger than the input size (larger ones are draft-decoded
    by the hub preset, exactly as model.preprocess does), named-input row format."""
    import io
    images = [jpeg(rng, h, w) for h, w in [(96, 96), (50, 80), (300, 200), (1200, 900)]]
    model = models["v2"]
    expected = alone(model, [model.preprocess(io.BytesIO(data)) for data in images])
    body = {"instances": [{"images": b64(data)} for data in images]}
    status, doc = server.json("POST", "/v1/models/v2:predict", body)
    assert status == 200, doc
    assert np.array_equal(np.array(doc["predictions"], np.float32), expected)


def test_tfserving_float_arrays(server, models, rng):
    """Float pixel arrays, row and columnar, at the input size and at another size (batched
    apart): bit-identical to each image alone."""
    model = models["v2"]
    x = rng.random((3, 96, 96, 3), dtype=np.float32)
    odd = rng.random((2, 64, 80, 3), dtype=np.float32)
    status, doc = server.json("POST", "/v1/models/v2:predict", {"instances": x.tolist() + odd.tolist()})
    assert status == 200, doc
    got = doc["predictions"]
    assert np.array_equal(np.array(got[:3], np.float32), alone(model, x))
    assert np.array_equal(np.array(got[3:], np.float32), alone(model, odd))
    status, doc = server.json("POST", "/v1/models/v1:predict", {"inputs": x.tolist()})
    assert status == 200, doc
    assert np.array_equal(np.array(doc["outputs"], np.float32), alone(models["v1"], x))


def test_tfserving_logits_and_classify(server, models, rng):
    model = models["v2"]
    x = rng.random((2, 96, 96, 3), dtype=np.float32)
    status, doc = server.json("POST", "/v1/models/v2:predict", {"signature_name": "logits", "instances": x.tolist()})
    assert status == 200, doc
    assert np.array_equal(np.array(doc["predictions"], np.float32), logits_alone(model, x))
    status, doc = server.json("POST", "/v1/models/v2:classify", {"examples": [{"images": row} for row in x.tolist()]})
    assert status == 200, doc
    assert [len(r) for r in doc["result"]] == [1001, 1001]
    assert [label for label, _ in doc["result"][0]] == [str(i) for i in range(1001)]
    scores = np.array([[score for _, score in r] for r in doc["result"]], np.float32)
    assert np.array_equal(scores, logits_alone(model, x))
    status, doc = server.json("POST", "/v1/models/v1:classify", {"examples": [{"images": x[0].tolist()}]})
    assert status == 400 and "no classifier" in doc["error"]


def test_triton_health_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("v2") and triton.is_model_ready("v1")
    assert triton.get_server_metadata()["name"] == "mobilenet-np"
    meta = triton.get_model_metadata("v2")
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 96, 96, 3]}]
    assert [(o["name"], o["shape"]) for o in meta["outputs"]] == [("features", [-1, 896 if False else 1280]),
                                                                   ("logits", [-1, 1001])]
    assert [o["name"] for o in triton.get_model_metadata("v1")["outputs"]] == ["features"]
    assert triton.get_model_config("v2")["max_batch_size"] == 32
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        triton.get_model_metadata("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_triton_fp32_and_uint8(triton, models, rng, binary):
    model = models["v2"]
    x = rng.random((3, 96, 96, 3), dtype=np.float32)
    inp = httpclient.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in ("features", "logits")]
    result = triton.infer("v2", [inp], outputs=outputs)
    assert np.array_equal(result.as_numpy("features"), alone(model, x))
    assert np.array_equal(result.as_numpy("logits"), logits_alone(model, x))
    u = (x * 255).astype(np.uint8)
    inp = httpclient.InferInput("images", list(u.shape), "UINT8")
    inp.set_data_from_numpy(u, binary_data=binary)
    result = triton.infer("v1", [inp], outputs=[httpclient.InferRequestedOutput("features", binary_data=binary)])
    assert np.array_equal(result.as_numpy("features"), alone(models["v1"], u))


def test_triton_defaults_and_gzip(triton, models, rng):
    """tritonclient's defaults (binary inputs, every output in binary), with a gzip body."""
    x = rng.random((2, 96, 96, 3), dtype=np.float32)
    inp = httpclient.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = triton.infer("v2", [inp], request_compression_algorithm="gzip")
    assert np.array_equal(result.as_numpy("features"), alone(models["v2"], x))
    assert result.as_numpy("logits").shape == (2, 1001)


def test_triton_bytes(triton, models, rng):
    """Encoded images in a BYTES tensor: binary (raw bytes) and JSON (base64 text)."""
    import io
    data = [jpeg(rng, 120, 100), jpeg(rng, 96, 96)]
    model = models["v2"]
    expected = alone(model, [model.preprocess(io.BytesIO(d)) for d in data])
    inp = httpclient.InferInput("images", [2], "BYTES")
    inp.set_data_from_numpy(np.array(data, dtype=object))
    result = triton.infer("v2", [inp], outputs=[httpclient.InferRequestedOutput("features")])
    assert np.array_equal(result.as_numpy("features"), expected)
    assert result.as_numpy("logits") is None
    inp = httpclient.InferInput("images", [2, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[base64.b64encode(d)] for d in data], dtype=object), binary_data=False)
    result = triton.infer("v2", [inp], outputs=[httpclient.InferRequestedOutput("features", binary_data=False)])
    assert np.array_equal(result.as_numpy("features"), expected)


def v2_body(name, shape, datatype, data):
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


BAD = [
    # (method, path, body, expected status, words the error must contain)
    ("POST", "/v1/models/v2:predict", b"{not json", 400, "not valid JSON"),
    ("POST", "/v1/models/v2:predict", b"", 400, "empty"),
    ("POST", "/v1/models/v2:predict", {"instances": [[[[0.5, 0.5]] * 40] * 40]}, 400, "3 (RGB) channels"),
    ("POST", "/v1/models/v2:predict", {"instances": [[0.5, 0.5]]}, 400, "one image [height, width, 3]"),
    ("POST", "/v1/models/v2:predict", {"instances": [[[["a"] * 3] * 40] * 40]}, 400, "rectangular array of numbers"),
    ("POST", "/v1/models/v2:predict", {"instances": [np.full((40, 40, 3), 2.0).tolist()]}, 400, "in [0, 1]"),
    ("POST", "/v1/models/v2:predict", {"instances": [np.full((8, 8, 3), 0.5).tolist()]}, 400, "minimum size"),
    ("POST", "/v1/models/v2:predict", {"instances": [{"b64": "@@@"}]}, 400, "invalid base64"),
    ("POST", "/v1/models/v2:predict", {"instances": [{"b64": base64.b64encode(b"GIF89a junk").decode()}]}, 400,
     "bad image"),
    ("POST", "/v1/models/v2:predict", {"instances": [{"b64": base64.b64encode(png_claiming(30000, 30000)).decode()}]},
     400, "decompression bomb"),
    ("POST", "/v1/models/v2:predict", {"instances": [{"pixels": [1]}]}, 400, "only input is 'images'"),
    ("POST", "/v1/models/v2:predict", {"instances": [], "inputs": []}, 400, "exactly one of"),
    ("POST", "/v1/models/v2:predict", {"signature_name": "x", "instances": [{"b64": "AA=="}]}, 400, "signature_name"),
    ("POST", "/v1/models/nope:predict", {"instances": [[0]]}, 404, "unknown model 'nope'"),
    ("POST", "/v2/models/nope/infer", v2_body("images", [1], "BYTES", ["AA=="]), 404, "unknown model"),
    ("POST", "/v2/models/v2/infer", v2_body("pixels", [1], "BYTES", ["AA=="]), 400, "unknown input 'pixels'"),
    ("POST", "/v2/models/v2/infer", v2_body("images", [1, 40, 40, 3], "FP64", [0.5] * 4800), 400, "FP64"),
    ("POST", "/v2/models/v2/infer", v2_body("images", [2, 40, 40, 3], "FP32", [0.5] * 4800), 400, "says 9600 values"),
    ("POST", "/v2/models/v2/infer", v2_body("images", [1, 40, 40], "FP32", [0.5] * 1600), 400, "[N, height, width, 3]"),
    ("POST", "/v2/models/v2/infer", v2_body("images", [1], "BYTES", ["bm90IGFuIGltYWdl"]), 400, "bad image"),
    ("POST", "/v2/models/v1/infer", {**v2_body("images", [1], "BYTES", ["AA=="]), "outputs": [{"name": "logits"}]},
     400, "unknown output 'logits'"),
    ("POST", "/v2/models/v2/infer", b'{"inputs": 3}', 400, "list of one tensor"),
    ("POST", "/v2/models/v2/infer", v2_body("images", [0], "BYTES", []), 400, "no images"),
    ("POST", "/v1/models/v2:predict", b"x" * (MAX_BODY + 1), 413, "--max-body-bytes"),
]


@pytest.mark.parametrize("method,path,body,status,words", BAD, ids=[f"{i}-{b[4][:24]}" for i, b in enumerate(BAD)])
def test_bad_request_then_good(server, models, method, path, body, status, words):
    got, headers, data = server.request(method, path, body)
    assert got == status, data
    assert "json" in headers["content-type"]
    assert words in json.loads(data)["error"]
    x = np.full((1, 96, 96, 3), 0.25, np.float32)
    got, doc = server.json("POST", "/v1/models/v2:predict", {"instances": x.tolist()})
    assert got == 200 and np.array_equal(np.array(doc["predictions"], np.float32), models["v2"](x))


def test_truncated_binary_bytes_tensor(server):
    header = json.dumps({"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 8}}]}).encode()
    body = header + (100).to_bytes(4, "little") + b"abcd"
    status, _, data = server.request("POST", "/v2/models/v2/infer", body,
                                     {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and "truncated BYTES" in json.loads(data)["error"]


def test_gzip_bomb_is_refused(server):
    body = gzip.compress(b" " * (MAX_BODY * 2))
    status, _, data = server.request("POST", "/v1/models/v2:predict", body, {"Content-Encoding": "gzip"})
    assert status == 413 and "--max-body-bytes" in json.loads(data)["error"]


def test_metrics(server):
    server.json("POST", "/v1/models/v2:predict", {"instances": [np.full((96, 96, 3), 0.5).tolist()]})
    server.json("GET", "/v1/models/nope")
    status, headers, data = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = data.decode()
    for line in ['mobilenet_np_requests_total{model="v2",protocol="v1",status="200"}',
                 'mobilenet_np_requests_total{model="<unknown>",protocol="v1",status="404"}',
                 'mobilenet_np_request_duration_seconds_bucket{le="0.001",model="v2",protocol="v1"}',
                 'mobilenet_np_batch_size_bucket{le="1.0",model="v2"}',
                 'mobilenet_np_queue_depth{model="v2"} 0.0',
                 'mobilenet_np_model_ready{model="v1"} 1.0']:
        assert line in text, line
