"""Request payloads to images: JSON parsing, base64, encoded image bytes, pixel arrays.

Every check a model would make on a batch is made here, on each request, before anything is
queued: a batch then never fails because of one bad image, and the error names the request's
own field (``instances[3]``, ``input 'images'``).  Decoding uses the model's own
``preprocess`` (its default preset), so a served image is exactly ``model.preprocess(file)``.

Parsing and decoding run in a thread pool (``DecodePool``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
from PIL import Image

from ..errors import ImageError
from .errors import bad_request

#: The smallest height and width a MobileNet takes (MobileNet raises ValueError below it).
MIN_SIDE = 32


def max_pixels() -> int:
    """The pixel limit the image pipeline already enforces (Pillow's decompression-bomb
    limit); pixel arrays are held to the same one."""
    return int(Image.MAX_IMAGE_PIXELS or 2**31)


class DecodePool:
    """The thread pool that parses bodies and decodes images beside the model's threads."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"decode workers must be >= 1, got {workers}")
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="mobilenet-np-decode")

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def parse_json(body: bytes):
    if not body:
        raise bad_request("the request body is empty; expected a JSON object")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise bad_request(f"the request body must be a JSON object, got a JSON {type(doc).__name__}")
    return doc


def b64_bytes(text, where: str) -> bytes:
    """Standard or URL-safe base64 (whitespace ignored), as TF Serving's ``{"b64": ...}``."""
    if not isinstance(text, str):
        raise bad_request(f"{where}: \"b64\" must be a string of base64, got {type(text).__name__}")
    compact = "".join(text.split())
    try:
        if "-" in compact or "_" in compact:
            return base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"{where}: invalid base64 ({exc})") from None


def decode_image(model, data: bytes, where: str) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, ...) -> the float32 [H, W, 3] the model takes, with the
    model's default preprocessing preset."""
    if not data:
        raise bad_request(f"{where}: empty image (0 bytes)")
    try:
        return model.preprocess(io.BytesIO(data))
    except ImageError as exc:
        raise bad_request(f"{where}: bad image: {exc.reason}") from None
    except (ValueError, OSError) as exc:
        raise bad_request(f"{where}: bad image: {exc}") from None


def array_from_json(value, where: str, dtype=np.float32) -> np.ndarray:
    """A nested JSON list of numbers as an array of ``dtype`` (exact for float32 values that a
    client printed with enough digits, which every JSON library does)."""
    try:
        array = np.array(value, dtype=dtype)
    except OverflowError:
        raise bad_request(f"{where}: values do not fit the {np.dtype(dtype).name} dtype") from None
    except (ValueError, TypeError):
        raise bad_request(f"{where}: not a rectangular array of numbers") from None
    if array.dtype == object:
        raise bad_request(f"{where}: not a rectangular array of numbers")
    return array


def check_images(x: np.ndarray, where: str) -> np.ndarray:
    """Validate a batch [N, H, W, 3] of float32 in [0, 1] or uint8; returns it C-contiguous."""
    if x.ndim != 4:
        raise bad_request(f"{where}: expected images of shape [N, height, width, 3] (one image: "
                          f"[height, width, 3]), got shape {list(x.shape)}")
    n, height, width, channels = x.shape
    if channels != 3:
        raise bad_request(f"{where}: images must have 3 (RGB) channels in the last axis, got shape {list(x.shape)}")
    if n == 0:
        raise bad_request(f"{where}: no images")
    if height < MIN_SIDE or width < MIN_SIDE:
        raise bad_request(f"{where}: images are {height}x{width}; the minimum size is {MIN_SIDE}x{MIN_SIDE}")
    if height * width > max_pixels():
        raise bad_request(f"{where}: images of {height}x{width} pixels exceed the limit of {max_pixels()} pixels")
    if x.dtype == np.float32:
        if not np.isfinite(x).all():
            raise bad_request(f"{where}: pixel values contain NaN or infinity")
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            raise bad_request(f"{where}: float pixel values must be in [0, 1], found [{low:g}, {high:g}]"
                              " (send 0-255 values as uint8)")
    elif x.dtype != np.uint8:
        raise bad_request(f"{where}: pixels must be float32 in [0, 1] or uint8, got {x.dtype}")
    return np.ascontiguousarray(x)


def as_batch(x: np.ndarray) -> np.ndarray:
    """One image [H, W, 3] becomes a batch of one."""
    return x[None] if x.ndim == 3 else x
