"""The one exception the serve handlers raise for a request that cannot be answered normally.

Both protocols answer errors with the same JSON body, ``{"error": "<message>"}`` (TF Serving's
documented error body; the Open Inference Protocol's ``$inference_error_response`` and
``$metadata_model_error_response`` have the same shape), so one exception type and one handler
(``app.py``) serve both.
"""

from __future__ import annotations


class ServeError(Exception):
    """An HTTP error answer: ``status``, a one-line ``message`` that names the problem, and
    extra response ``headers`` (``Retry-After`` on 503)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def bad_request(message: str) -> ServeError:
    return ServeError(400, message)


def unavailable(message: str, retry_after_s: int = 1) -> ServeError:
    """503 with ``Retry-After``: the client may try again (full queue, model warming up, stopping)."""
    return ServeError(503, message, {"Retry-After": str(int(retry_after_s))})
