"""``mobilenet-np serve``: the options, and running the app under uvicorn.

``add_parser(subparsers)`` adds the ``serve`` subcommand to the main command line;
``main(argv)`` runs it on its own (``python -m mobilenet_np.serve --model NAME=SOURCE``).
uvicorn handles SIGTERM and SIGINT: it stops accepting connections, lets every request in
progress finish, then the app drains the model queues and the process exits with status 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

log = logging.getLogger("mobilenet_np.serve")


def _model_spec(text: str) -> tuple[str, str]:
    name, sep, source = text.partition("=")
    if not sep or not name or not source or "/" in name or ":" in name:
        raise argparse.ArgumentTypeError(f"expected NAME=SOURCE (a name without '/' or ':'), got {text!r}")
    return name, source


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", type=_model_spec, required=True, metavar="NAME=SOURCE",
                   help="serve the model SOURCE (anything mnp.load takes: a registry name, a weights file, ...) "
                        "under NAME; repeat for several models")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8501, help="port (default 8501, TF Serving's REST port)")
    p.add_argument("--max-batch", type=_positive(int), default=32, help="images run together at most (default 32)")
    p.add_argument("--batch-timeout-ms", type=float, default=2.0,
                   help="how long the oldest queued image waits for a batch to fill (default 2 ms)")
    p.add_argument("--queue-size", type=_positive(int), default=64,
                   help="images queued per model at most; beyond, requests get 503 + Retry-After (default 64)")
    p.add_argument("--max-body-bytes", type=_positive(int), default=16 * 2**20,
                   help="largest request body, after decompression; beyond, 413 (default 16 MiB)")
    p.add_argument("--request-timeout-s", type=_positive(float), default=30.0,
                   help="a request not answered by then gets 504 (default 30 s)")
    p.add_argument("--threads", type=_positive(int), default=None,
                   help="threads for the model (default: the cores the decode workers leave, at least 1)")
    p.add_argument("--decode-workers", type=_positive(int), default=None,
                   help="threads that parse bodies and decode images (default: half the cores, at least 1)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="how much the server logs (default info: startup, readiness, errors)")
    p.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs time)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``mobilenet-np`` subcommands; the handler is ``args.func(args) -> int``."""
    p = subparsers.add_parser("serve", help="serve models over HTTP: TF Serving REST API and Open Inference "
                                            "Protocol v2 (needs the serve extra)",
                              description="Serve models over HTTP in the TensorFlow Serving REST API and the Open "
                                          "Inference Protocol v2 (KServe, Triton), with dynamic batching, limits "
                                          "and Prometheus metrics (needs the serve extra; see docs/serve.md).")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Load the models, then serve until SIGTERM/SIGINT.  Exit status 0, or 2 when a model
    cannot be loaded or the port cannot be bound."""
    try:
        import uvicorn

        from .app import build_app
        from .server import Settings
        from .metrics import Metrics
        from .models import load_models
    except ImportError as exc:
        print(f"mobilenet-np serve: {exc}; install the serve extra: pip install 'mobilenet-np[serve]'",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = [name for name, _ in args.model]
    if len(set(names)) != len(names):
        print(f"mobilenet-np serve: a model name is given twice: {names}", file=sys.stderr)
        return 2
    # The model's threads meet after every layer of a small batch: a thread that must wait
    # for a core taken by a decoder, the event loop or another process stalls them all (on
    # 2 busy cores, 2 model threads ran batches 5x slower than 1).  So the model gets the
    # cores the decoders leave, as embed does.
    cores = os.cpu_count() or 1
    decode_workers = args.decode_workers or max(1, cores // 2)
    threads = args.threads or max(1, cores - decode_workers)
    settings = Settings(max_batch=args.max_batch, batch_timeout_ms=args.batch_timeout_ms, queue_size=args.queue_size,
                        max_body_bytes=args.max_body_bytes, request_timeout_s=args.request_timeout_s,
                        threads=threads, decode_workers=decode_workers)
    metrics = Metrics()
    try:
        models = load_models(args.model, max_batch=settings.max_batch, timeout_s=settings.batch_timeout_ms / 1e3,
                             capacity=settings.queue_size, threads=settings.threads, metrics=metrics)
    except Exception as exc:  # a bad source: say which and why, no traceback
        print(f"mobilenet-np serve: cannot load a model: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    log.info("serving %d model(s) on http://%s:%d (TF Serving REST /v1, Open Inference Protocol /v2, /metrics); "
             "%d model thread(s), %d decode worker(s), batches of up to %d within %g ms, queue %d; "
             "kernels: warming up, ready when /v2/health/ready answers 200", len(models), args.host, args.port,
             threads, decode_workers, settings.max_batch, settings.batch_timeout_ms, settings.queue_size)
    for served in models.values():
        metrics.model_ready.labels(served.name).set(0)
        log.info("model %s", served.describe())
    app = build_app(models, settings, metrics)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log,
                            lifespan="on", timeout_keep_alive=5,
                            # a backstop above the app's own queue limit: connections beyond it get
                            # uvicorn's plain 503 rather than holding memory
                            limit_concurrency=max(1024, 4 * settings.queue_size))
    server = uvicorn.Server(config)
    # uvicorn catches SIGTERM and SIGINT while it runs, shuts down gracefully, then raises the
    # signal again under the handlers found at start: make those do nothing, so that a clean
    # shutdown exits with status 0 rather than "killed by SIGTERM".
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot start, e.g. the port is taken
        server.started = False
    if not server.started:
        print(f"mobilenet-np serve: could not serve on {args.host}:{args.port} (see the log above)", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mobilenet_np.serve", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
