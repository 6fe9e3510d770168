"""``mobilenet-np serve``: a model server for CPU-only machines speaking TF Serving's REST API and
the Open Inference Protocol (KServe v2), with dynamic batching, limits and Prometheus metrics.

Needs the ``serve`` extra.  ``add_parser`` and ``main`` import nothing from it until they run.
See docs/serve.md.
"""

from .cli import add_parser, main

__all__ = ["add_parser", "main"]
