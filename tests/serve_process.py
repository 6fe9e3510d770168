"""A real ``python -m mobilenet_np.serve`` process on 127.0.0.1 for the serve tests, and the
small seeded models it serves."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

import mobilenet_np as mnp

REPO = Path(__file__).resolve().parents[1]
#: First start in a fresh checkout compiles the Numba kernels (tens of seconds on a busy machine).
READY_TIMEOUT_S = 600

# name -> (architecture, depth multiplier, input size, classes, seed): small and fast
MODELS = {"v2": ("mobilenet_v2", 0.35, 96, 1001, 1), "v1": ("mobilenet_v1", 0.25, 128, 0, 2)}


def save_models(folder: Path) -> dict[str, Path]:
    paths = {}
    for name, (arch, multiplier, size, classes, seed) in MODELS.items():
        paths[name] = folder / f"{name}.h5"
        mnp.build(arch, multiplier, size, num_classes=classes, seed=seed).save(paths[name])
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jpeg(rng, height: int, width: int, quality: int = 90) -> bytes:
    """A generated JPEG: smooth gradients plus noise, so it decodes to a varied image."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (height + width)], -1)
    pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class ServerProcess:
    """Start with ``start()``; ``url``; ``request()``; ``stop()`` sends SIGTERM and waits."""

    def __init__(self, models: dict[str, Path], log_path: Path, *options: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        args = [sys.executable, "-m", "mobilenet_np.serve", "--port", str(self.port), *options]
        for name, path in models.items():
            args += ["--model", f"{name}={path}"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.request("GET", "/v2/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server was not ready after {READY_TIMEOUT_S} s:\n{self.log()}")

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 60):
        """(status, headers, body bytes); ``body`` a dict is sent as JSON."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, method: str, path: str, body=None, **kw):
        status, _, data = self.request(method, path, body, **kw)
        return status, json.loads(data)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
