"""mobilenet-np serve under load, against a real server process: many concurrent clients get
bit-identical vectors and no errors; an overloaded server refuses with 503 + Retry-After
and stays bounded; SIGTERM finishes every accepted request.  Bounded in count and time."""

import asyncio
import base64
import io
import json
import re

import numpy as np
import pytest

import mobilenet_np as mnp
from serve_process import ServerProcess, jpeg, save_models

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install -e .[serve])")
aiohttp = pytest.importorskip("aiohttp", reason="the test extra is not installed (pip install -e .[test])")

LOAD_REQUESTS = 2000
LOAD_CLIENTS = 32
CLIENT_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return save_models(tmp_path_factory.mktemp("serve_models"))


@pytest.fixture(scope="module")
def model(paths):
    return mnp.load(paths["v2"])


@pytest.fixture
def start(paths, tmp_path):
    started = []

    def run(*options):
        proc = ServerProcess({"v2": paths["v2"]}, tmp_path / f"server{len(started)}.log", *options)
        started.append(proc)
        proc.wait_ready()
        return proc

    yield run
    for proc in started:
        proc.stop()


def requests_for(model, rng):
    """(method-free) request kinds: (path, body, headers, how to read the answer, expected
    vector): TF Serving JSON with a b64 JPEG, and Open Inference Protocol binary FP32."""
    kinds = []
    for h, w in [(64, 64), (96, 96), (120, 90), (200, 150)]:
        data = jpeg(rng, h, w)
        body = json.dumps({"instances": [{"b64": base64.b64encode(data).decode()}]}).encode()
        kinds.append(("/v1/models/v2:predict", body, {"Content-Type": "application/json"}, "tfserving",
                      model(model.preprocess(io.BytesIO(data))[None])[0]))
    for _ in range(4):
        x = rng.random((1, 96, 96, 3), dtype=np.float32)
        header = json.dumps({"inputs": [{"name": "images", "shape": [1, 96, 96, 3], "datatype": "FP32",
                                         "parameters": {"binary_data_size": x.nbytes}}],
                             "outputs": [{"name": "features", "parameters": {"binary_data": True}}]}).encode()
        kinds.append(("/v2/models/v2/infer", header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))},
                      "v2", model(x)[0]))
    return kinds


def features_of(kind: str, headers, data: bytes) -> np.ndarray:
    if kind == "tfserving":
        return np.array(json.loads(data)["predictions"][0], np.float32)
    n = int(headers["Inference-Header-Content-Length"])
    return np.frombuffer(data[n:], np.float32)


async def fire(url, kinds, total, clients, on_answer, stop_on_error=False):
    """``total`` requests from ``clients`` concurrent clients, cycling through ``kinds``;
    ``on_answer(kind index, status, headers, body or exception)``; with ``stop_on_error`` a
    client stops after its first connection error."""
    counter = iter(range(total))
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=clients)) as session:
        async def client():
            for i in counter:
                path, body, headers, _, _ = kinds[i % len(kinds)]
                try:
                    async with session.post(url + path, data=body, headers=headers) as r:
                        on_answer(i % len(kinds), r.status, r.headers, await r.read())
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    on_answer(i % len(kinds), None, None, exc)
                    if stop_on_error:
                        return
        await asyncio.gather(*(client() for _ in range(clients)))


async def sigterm_when(server, kinds, total, clients, condition, stop_on_error=False):
    """Send ``total`` requests from ``clients`` clients; SIGTERM the server as soon as
    ``await condition(answers so far)``; return every (kind, status, headers, body or error)."""
    answers = []
    load = asyncio.ensure_future(fire(server.url, kinds, total, clients, lambda *a: answers.append(a), stop_on_error))
    while not await condition(answers):
        assert not load.done(), "the load ended before the moment to send SIGTERM"
        await asyncio.sleep(0.02)
    server.terminate()
    await load
    return answers


def test_load_bit_identical_no_errors(start, model, rng):
    """2,000 requests from 32 concurrent clients, two protocols: every answer 200 and
    bit-identical to the image alone, and the model really ran batches of more than one."""
    server = start("--max-batch", "32", "--batch-timeout-ms", "2", "--queue-size", "256")
    kinds = requests_for(model, rng)
    problems, ok = [], [0]

    def check(k, status, headers, body):
        if status != 200:
            problems.append((k, status, body))
        elif not np.array_equal(features_of(kinds[k][3], headers, body), kinds[k][4]):
            problems.append((k, "vector differs"))
        else:
            ok[0] += 1

    asyncio.run(fire(server.url, kinds, LOAD_REQUESTS, LOAD_CLIENTS, check))
    assert problems == [] and ok[0] == LOAD_REQUESTS
    metrics = server.request("GET", "/metrics")[2].decode()
    batches = float(re.search(r'mobilenet_np_batch_size_count\{model="v2"\} (\S+)', metrics).group(1))
    images = float(re.search(r'mobilenet_np_batch_size_sum\{model="v2"\} (\S+)', metrics).group(1))
    assert images >= LOAD_REQUESTS and batches < images  # some batches held several requests


def test_overload_refuses_with_retry_after(start, model, rng):
    """A queue of 4 and 64 concurrent clients sending large JPEGs: the excess gets 503 with
    Retry-After at once, the rest 200 and right; nothing hangs; memory stays bounded; the
    server serves normally afterwards."""
    server = start("--queue-size", "4", "--max-batch", "2", "--batch-timeout-ms", "5")
    data = jpeg(rng, 900, 1200)
    expected = model(model.preprocess(io.BytesIO(data))[None])[0]
    body = json.dumps({"instances": [{"b64": base64.b64encode(data).decode()}]}).encode()
    kinds = [("/v1/models/v2:predict", body, {"Content-Type": "application/json"}, "tfserving", expected)]
    rss_before = server.rss_bytes()
    answers = []

    def record(k, status, headers, payload):
        answers.append((status, headers, payload))

    for _ in range(2):
        asyncio.run(fire(server.url, kinds, 256, 64, record))
    statuses = [a[0] for a in answers]
    assert set(statuses) <= {200, 503}, [a for a in answers if a[0] not in (200, 503)][:3]
    assert statuses.count(503) > 0 and statuses.count(200) > 0
    for status, headers, payload in answers:
        if status == 503:
            assert headers["Retry-After"] == "1" and "queue" in json.loads(payload)["error"]
        else:
            assert np.array_equal(features_of("tfserving", headers, payload), expected)
    assert server.rss_bytes() - rss_before < 300 * 2**20
    status, doc = server.json("POST", "/v1/models/v2:predict", json.loads(body))
    assert status == 200
    assert 'mobilenet_np_queue_depth{model="v2"} 0.0' in server.request("GET", "/metrics")[2].decode()


def test_sigterm_finishes_every_queued_request(start, model, rng):
    """SIGTERM while the model runs a long batch (16 images of 1024x1024) and twelve more
    requests wait in the queue: the long one and all twelve are answered, right, and the
    server exits with status 0."""
    server = start("--max-batch", "16", "--max-body-bytes", str(64 * 2**20))
    big = (rng.random((16, 1024, 1024, 3)) * 255).astype(np.uint8)
    header = json.dumps({"inputs": [{"name": "images", "shape": list(big.shape), "datatype": "UINT8",
                                     "parameters": {"binary_data_size": big.nbytes}}],
                         "outputs": [{"name": "features", "parameters": {"binary_data": True}}]}).encode()
    long_batch = ("/v2/models/v2/infer", header + big.tobytes(), {"Inference-Header-Content-Length": str(len(header))})
    kinds = requests_for(model, rng)

    async def main():
        first = asyncio.ensure_future(fire(server.url, [(*long_batch, "v2", None)], 1, 1, lambda *a: answers.append(a)))
        while 'mobilenet_np_images_running{model="v2"} 16.0' not in (await metrics()):
            assert not first.done()
            await asyncio.sleep(0.01)
        queued = await sigterm_when(server, kinds, 12, 12, twelve_queued)
        await first
        return queued

    async def metrics():
        return (await asyncio.to_thread(server.request, "GET", "/metrics"))[2].decode()

    async def twelve_queued(answers):
        return 'mobilenet_np_queue_depth{model="v2"} 12.0' in await metrics()

    answers = []
    queued = asyncio.run(main())
    assert len(queued) == 12 and len(answers) == 1
    assert answers[0][1] == 200 and features_of("v2", answers[0][2], answers[0][3]).shape == (16 * 1280,)
    for k, status, headers, body in queued:
        assert status == 200, body
        assert np.array_equal(features_of(kinds[k][3], headers, body), kinds[k][4])
    assert server.proc.wait(120) == 0
    assert "every accepted request was finished" in server.log()


def test_sigterm_mid_load_answers_every_accepted_request(start, model, rng):
    """SIGTERM while 16 clients keep sending: each request is either answered 200 (and
    right) or refused at the connection (never accepted); none gets a 5xx or hangs, and the
    server's own count of answered requests equals the answers the clients received."""
    server = start("--max-batch", "16", "--batch-timeout-ms", "2")
    kinds = requests_for(model, rng)

    async def two_hundred_answered(answers):
        return len(answers) >= 200

    answers = asyncio.run(sigterm_when(server, kinds, 100_000, 16, two_hundred_answered, stop_on_error=True))
    answered = [a for a in answers if a[1] is not None]
    refused = [a for a in answers if a[1] is None]
    assert server.proc.wait(120) == 0
    assert all(status == 200 for _, status, _, _ in answered), {a[1] for a in answered}
    for k, _, headers, body in answered:
        assert np.array_equal(features_of(kinds[k][3], headers, body), kinds[k][4])
    assert all(isinstance(exc, aiohttp.ClientConnectionError) for *_, exc in refused), refused[:3]
    stopped = re.search(r"stopped: answered \d+ requests \(200: (\d+)", server.log())
    assert stopped, server.log()[-2000:]
    assert int(stopped.group(1)) == len(answered) + 1  # + the readiness probe that said ready


def test_request_timeout_answers_504_and_frees_the_queue(start, rng):
    """A request still unanswered after --request-timeout-s gets 504 naming the option, and
    its queue slots come back (a 1 ms timeout against a batch of 16 images of 1024x1024)."""
    server = start("--request-timeout-s", "0.001", "--max-body-bytes", str(64 * 2**20))
    big = (rng.random((16, 1024, 1024, 3)) * 255).astype(np.uint8)
    header = json.dumps({"inputs": [{"name": "images", "shape": list(big.shape), "datatype": "UINT8",
                                     "parameters": {"binary_data_size": big.nbytes}}]}).encode()
    status, _, data = server.request("POST", "/v2/models/v2/infer", header + big.tobytes(),
                                     {"Inference-Header-Content-Length": str(len(header))})
    assert status == 504 and "--request-timeout-s" in json.loads(data)["error"]
    assert 'mobilenet_np_queue_depth{model="v2"} 0.0' in server.request("GET", "/metrics")[2].decode()


def test_benchmark_harness_quick_run(tmp_path, monkeypatch):
    """benchmarks/serve_bench.py --quick runs end to end and reports every cell without a
    failed request (its timings are not checked)."""
    from serve_process import REPO
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks import serve_bench
    assert serve_bench.main(["--quick", "--output", str(tmp_path / "serve.md")]) == 0
    rows = [line.split(" | ") for line in (tmp_path / "serve.md").read_text().splitlines()
            if line.startswith("| V2 0.5/96 |")]
    assert len(rows) == 3 * 2 and all(row[7] == "0" for row in rows), rows
