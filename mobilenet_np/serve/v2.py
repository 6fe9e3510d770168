"""The Open Inference Protocol (KServe v2) REST API, with Triton's binary tensor data extension
(which ``tritonclient.http`` uses by default for inputs and outputs).

* ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready`` (200 once every model is warmed up,
  400 before, as the protocol's health API says: 200 true, 4xx false).
* ``GET /v2/models/{name}[/versions/1]``: metadata; ``.../ready``; ``.../config`` (Triton's
  model configuration, which ``tritonclient`` can ask for).
* ``POST /v2/models/{name}[/versions/1]/infer``: one input ``images``:

  - ``FP32`` [N, H, W, 3] in [0, 1], or ``UINT8`` [N, H, W, 3] (0-255);
  - ``BYTES`` [N] (or [N, 1]): encoded images (JPEG, PNG, ...), decoded with the model's
    preprocessing preset; in JSON each element is the image's base64 text, as JSON strings
    cannot hold raw bytes.

  Tensor data comes as JSON (``"data"``, flat or nested) or as binary after the JSON header
  (``"parameters": {"binary_data_size": n}`` and the ``Inference-Header-Content-Length``
  header).  Outputs: ``features`` FP32 [N, F] and, for models with a classifier, ``logits``
  FP32 [N, K]; all of them unless ``"outputs"`` names some; binary when an output asks for
  ``"binary_data": true`` or the request for ``"binary_data_output": true``.
"""

from __future__ import annotations

import struct

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import mobilenet_np as mnp

from .server import Encoded, Server, json_response, stack_results
from .errors import ServeError, bad_request
from .inputs import array_from_json, b64_bytes, check_images, parse_json

INPUT = "images"
VERSION = "1"
HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype(np.uint8)}


def routes(server: Server) -> list[Route]:
    async def server_metadata(request):
        return json_response({"name": "mobilenet-np", "version": mnp.__version__,
                              "extensions": ["binary_tensor_data"]})

    async def live(request):
        return json_response({"live": True})

    async def ready(request):
        return json_response({"ready": server.ready}, 200 if server.ready else 400)

    async def model_endpoint(request: Request):
        name, verb = _parse_path(request.path_params["rest"])
        served = server.model(name)
        if request.method == "POST" and verb == "infer":
            return await _infer(server, served, request)
        if request.method == "GET" and verb is None:
            return json_response(_metadata(served))
        if request.method == "GET" and verb == "ready":
            return json_response({"name": name, "ready": served.ready}, 200 if served.ready else 400)
        if request.method == "GET" and verb == "config":
            return json_response(_config(served, server.settings.max_batch))
        raise ServeError(405 if verb in (None, "ready", "config", "infer") else 404,
                         f"{request.method} {request.url.path}: not supported")

    return [Route("/v2", server_metadata), Route("/v2/health/live", live), Route("/v2/health/ready", ready),
            Route("/v2/models/{rest:path}", model_endpoint, methods=["GET", "POST"])]


def _parse_path(rest: str) -> tuple[str, str | None]:
    name, *tail = rest.split("/")
    if tail[:1] == ["versions"] and len(tail) >= 2:
        if tail[1] != VERSION:
            raise ServeError(404, f"model {name!r} has only version {VERSION}, not {tail[1]!r}")
        tail = tail[2:]
    if not name or len(tail) > 1:
        raise ServeError(404, f"unknown path /v2/models/{rest}")
    return name, (tail[0] if tail else None)


def _output_shapes(served) -> dict:
    return {"features": served.model.num_features, "logits": served.model.num_classes}


def _metadata(served) -> dict:
    height, width = served.model.input_size
    sizes = _output_shapes(served)
    return {"name": served.name, "versions": [VERSION], "platform": "mobilenet-np",
            "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, height, width, 3]}],
            "outputs": [{"name": o, "datatype": "FP32", "shape": [-1, sizes[o]]} for o in served.outputs]}


def _config(served, max_batch: int) -> dict:
    height, width = served.model.input_size
    sizes = _output_shapes(served)
    return {"name": served.name, "platform": "mobilenet-np", "max_batch_size": max_batch,
            "input": [{"name": INPUT, "data_type": "TYPE_FP32", "dims": [height, width, 3]}],
            "output": [{"name": o, "data_type": "TYPE_FP32", "dims": [sizes[o]]} for o in served.outputs]}


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.isdigit() or int(header_length) > len(body):
        raise bad_request(f"{HEADER_LENGTH} is {header_length!r}, but the body has {len(body)} bytes")
    n = int(header_length)
    return body[:n], memoryview(body)[n:]


def _shape(spec: dict, where: str) -> list[int]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise bad_request(f"{where}: \"shape\" must be a list of non-negative integers, got {shape!r}")
    return shape


def _binary_elements(raw: memoryview, where: str) -> list[bytes]:
    """BYTES tensor data in binary form: each element a 4-byte little-endian length, then the bytes."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise bad_request(f"{where}: truncated BYTES data (a length prefix is cut off)")
        (n,) = struct.unpack_from("<I", raw, at)
        if at + 4 + n > len(raw):
            raise bad_request(f"{where}: truncated BYTES data (an element claims {n} bytes)")
        out.append(bytes(raw[at + 4 : at + 4 + n]))
        at += 4 + n
    return out


def _input_images(spec: dict, raw: memoryview | None) -> list:
    where = f"input {INPUT!r}"
    datatype, shape = spec.get("datatype"), _shape(spec, where)
    count = int(np.prod(shape)) if shape else 0
    if datatype == "BYTES":
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise bad_request(f"{where}: a BYTES input holds one encoded image per row: shape [N] or [N, 1], got {shape}")
        if raw is not None:
            elements = _binary_elements(raw, where)
        else:
            data = spec.get("data")
            data = [d for row in data for d in (row if isinstance(row, list) else [row])] if isinstance(data, list) else data
            if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
                raise bad_request(f"{where}: BYTES \"data\" in JSON must be a list of base64 strings (encoded images)")
            elements = [b64_bytes(d, f"{where}[{i}]") for i, d in enumerate(data)]
        if len(elements) != count:
            raise bad_request(f"{where}: shape {shape} says {count} images, the data has {len(elements)}")
        return [Encoded(e, f"{where}[{i}]") for i, e in enumerate(elements)]
    if datatype not in DTYPES:
        raise bad_request(f"{where}: datatype {datatype!r} is not supported; use FP32 (pixels in [0, 1]), "
                          "UINT8 (0-255) or BYTES (encoded images)")
    dtype = DTYPES[datatype]
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise bad_request(f"{where}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
                              f"the binary data has {len(raw)}")
        array = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True)
    else:
        array = array_from_json(spec.get("data"), where, dtype).ravel()
        if array.size != count:
            raise bad_request(f"{where}: shape {shape} says {count} values, \"data\" has {array.size}")
    return list(check_images(array.reshape(shape), where))


def _parse_infer(served):
    def parse(payload):
        header, binary = payload
        doc = parse_json(header)
        inputs = doc.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise bad_request(f"\"inputs\" must be a list of one tensor, {INPUT!r}")
        spec = inputs[0]
        if spec.get("name") != INPUT:
            raise bad_request(f"unknown input {spec.get('name')!r}; model {served.name!r} has one input, {INPUT!r}")
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None and (not isinstance(size, int) or size < 0 or size > len(binary)):
            raise bad_request(f"input {INPUT!r}: binary_data_size {size!r} does not fit the {len(binary)} "
                              "bytes after the JSON header")
        found = _input_images(spec, binary[:size] if size is not None else None)
        wanted = _requested_outputs(doc, served)
        return found, frozenset(wanted), (doc, wanted)
    return parse


def _requested_outputs(doc: dict, served) -> dict[str, bool]:
    """{output name: binary?} in the order asked (all outputs when none are named)."""
    default_binary = bool((doc.get("parameters") or {}).get("binary_data_output", False))
    requested = doc.get("outputs")
    if requested is None:
        return {o: default_binary for o in served.outputs}
    if not isinstance(requested, list) or not requested:
        raise bad_request("\"outputs\" must be a non-empty list of {\"name\": ...}")
    wanted = {}
    for spec in requested:
        name = spec.get("name") if isinstance(spec, dict) else None
        if name not in served.outputs:
            raise bad_request(f"unknown output {name!r}; model {served.name!r} has: {', '.join(served.outputs)}")
        parameters = spec.get("parameters") or {}
        if parameters.get("classification"):
            raise bad_request("the classification extension is not supported; ask for 'logits'")
        wanted[name] = bool(parameters.get("binary_data", default_binary))
    return wanted


async def _infer(server: Server, served, request: Request) -> Response:
    header_length = request.headers.get(HEADER_LENGTH)
    parse = _parse_infer(served)
    results, (doc, wanted) = await server.run(request, served, lambda body: parse(_split(body, header_length)),
                                              lambda body: len(_split(body, header_length)[0]))
    outputs, chunks = [], []
    for name, binary in wanted.items():
        tensor = np.ascontiguousarray(stack_results(results, name), dtype=np.float32)
        entry = {"name": name, "datatype": "FP32", "shape": list(tensor.shape)}
        if binary:
            data = tensor.astype("<f4", copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = tensor.ravel()
        outputs.append(entry)
    response = {"model_name": served.name, "model_version": VERSION, "outputs": outputs}
    if isinstance(doc.get("id"), str):
        response["id"] = doc["id"]
    if not chunks:
        return json_response(response)
    header = json_response(response).body
    return Response(header + b"".join(chunks), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})
