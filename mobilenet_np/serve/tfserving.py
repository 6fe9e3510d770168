"""TensorFlow Serving's REST API (``/v1/models/...``), as documented for TF Serving's
RESTful API, for one input ``images`` and the TF-Hub module outputs.

* ``GET /v1/models/{name}[/versions/1]``: ``{"model_version_status": [...]}`` (LOADING while the
  model warms up, then AVAILABLE).
* ``GET /v1/models/{name}[/versions/1]/metadata``: the signature defs.
* ``POST /v1/models/{name}[/versions/1]:predict``: ``{"instances": [...]}`` (row format; an
  instance is an image [H, W, 3] of floats in [0, 1], ``{"b64": "<encoded image>"}``, or
  ``{"images": <either>}``) answers ``{"predictions": [...]}``; ``{"inputs": ...}`` (columnar:
  [N, H, W, 3], a list of ``{"b64": ...}``, or ``{"images": <either>}``) answers
  ``{"outputs": ...}``.  ``"signature_name"``: ``serving_default`` (feature vectors, the
  default) or ``logits`` (models with a classifier).
* ``POST /v1/models/{name}[/versions/1]:classify``: ``{"examples": [{"images": ...}, ...]}``
  answers ``{"result": [[["<class index>", <logit>], ...], ...]}``, every class in index order.
* Errors: ``{"error": "..."}``.
"""

from __future__ import annotations

import numpy as np
from starlette.requests import Request
from starlette.routing import Route

from .server import Encoded, Server, json_response, stack_results
from .errors import ServeError, bad_request
from .inputs import array_from_json, as_batch, b64_bytes, check_images, parse_json
from .models import FEATURES, LOGITS

INPUT = "images"
VERSION = "1"
SIGNATURES = {"serving_default": FEATURES, "logits": LOGITS}


def routes(server: Server) -> list[Route]:
    async def endpoint(request: Request):
        name, verb = _parse_path(request.path_params["rest"])
        served = server.model(name)
        if request.method == "GET" and verb in (None, "metadata"):
            return json_response(_status(served) if verb is None else _metadata(served))
        if request.method == "POST" and verb == "predict":
            return await _predict(server, served, request)
        if request.method == "POST" and verb == "classify":
            return await _classify(server, served, request)
        raise ServeError(405 if verb in (None, "metadata", "predict", "classify") else 404,
                         f"{request.method} {request.url.path}: not supported; use GET for status and "
                         "/metadata, POST for :predict and :classify")

    return [Route("/v1/models/{rest:path}", endpoint, methods=["GET", "POST"])]


def _parse_path(rest: str) -> tuple[str, str | None]:
    verb = None
    if ":" in rest.rsplit("/", 1)[-1]:
        rest, verb = rest.rsplit(":", 1)
    name, *tail = rest.split("/")
    if tail[:1] == ["versions"] and len(tail) >= 2:
        if tail[1] != VERSION:
            raise ServeError(404, f"model {name!r} has only version {VERSION}, not {tail[1]!r}")
        tail = tail[2:]
    if tail == ["metadata"] and verb is None:
        return name, "metadata"
    if tail or not name:
        raise ServeError(404, f"unknown path /v1/models/{rest}")
    return name, verb


def _status(served) -> dict:
    code, message = ("OK", "") if served.state != "END" else ("UNKNOWN", served.error or "")
    return {"model_version_status": [{"version": VERSION, "state": served.state,
                                      "status": {"error_code": code, "error_message": message}}]}


def _tensor_info(name: str, dtype: str, shape) -> dict:
    return {"dtype": dtype, "name": f"{name}:0", "tensor_shape": {
        "dim": [{"size": str(d), "name": ""} for d in shape], "unknown_rank": False}}


def _metadata(served) -> dict:
    height, width = served.model.input_size
    images = {INPUT: _tensor_info(INPUT, "DT_FLOAT", [-1, height, width, 3])}
    sizes = {FEATURES: served.model.num_features, LOGITS: served.model.num_classes}
    signatures = {
        signature: {"inputs": images, "outputs": {output: _tensor_info(output, "DT_FLOAT", [-1, sizes[output]])},
                    "method_name": "tensorflow/serving/predict"}
        for signature, output in SIGNATURES.items() if output in served.outputs}
    return {"model_spec": {"name": served.name, "signature_name": "", "version": VERSION},
            "metadata": {"signature_def": {"signature_def": signatures}}}


def _images(value, where: str, one: bool) -> list:
    """The images in one JSON value: an Encoded for ``{"b64": ...}``, arrays for pixel lists.
    ``one``: the value is a single instance [H, W, 3] (row format)."""
    if isinstance(value, dict):
        if "b64" in value and len(value) == 1:
            return [Encoded(b64_bytes(value["b64"], where), where)]
        if set(value) == {INPUT}:
            return _images(value[INPUT], f"{where}.{INPUT}", one)
        raise bad_request(f"{where}: expected {{\"b64\": ...}}, an array of pixels, or {{\"{INPUT}\": ...}}; "
                          f"got an object with keys {sorted(value)} (this model's only input is {INPUT!r})")
    if not isinstance(value, list):
        raise bad_request(f"{where}: expected an image (an array of pixels or {{\"b64\": ...}}), "
                          f"got a JSON {type(value).__name__}")
    if not one and value and all(isinstance(v, dict) for v in value):
        return [found for i, v in enumerate(value) for found in _images(v, f"{where}[{i}]", True)]
    array = array_from_json(value, where)
    if one and array.ndim != 3:
        raise bad_request(f"{where}: an instance must be one image [height, width, 3], got shape {list(array.shape)}")
    return list(check_images(as_batch(array), where))


def _parse_predict(body: bytes):
    doc = parse_json(body)
    signature = doc.get("signature_name") or "serving_default"
    if signature not in SIGNATURES:
        raise bad_request(f"unknown signature_name {signature!r}; signatures: {', '.join(SIGNATURES)}")
    if ("instances" in doc) == ("inputs" in doc):
        raise bad_request("the request must have exactly one of \"instances\" (row format) or \"inputs\" "
                          "(columnar format)")
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list) or not instances:
            raise bad_request("\"instances\" must be a non-empty list of images")
        found = [f for i, v in enumerate(instances) for f in _images(v, f"instances[{i}]", True)]
        return found, frozenset([SIGNATURES[signature]]), ("predictions", SIGNATURES[signature])
    found = _images(doc["inputs"], "inputs", False)
    return found, frozenset([SIGNATURES[signature]]), ("outputs", SIGNATURES[signature])


async def _predict(server: Server, served, request: Request):
    results, (key, output) = await server.run(request, served, _parse_predict)
    return json_response({key: stack_results(results, output)})


def _parse_classify(body: bytes):
    doc = parse_json(body)
    examples = doc.get("examples", doc.get("instances"))
    if not isinstance(examples, list) or not examples:
        raise bad_request("\"examples\" must be a non-empty list, each {\"images\": <image>}")
    found = [f for i, v in enumerate(examples) for f in _images(v, f"examples[{i}]", True)]
    return found, frozenset([LOGITS]), None


async def _classify(server: Server, served, request: Request):
    served.require_output(LOGITS)
    results, _ = await server.run(request, served, _parse_classify)
    labels = [str(i) for i in range(served.model.num_classes)]
    return json_response({"result": [[[label, float(v)] for label, v in zip(labels, np.asarray(r[LOGITS]))]
                                     for r in results]})
