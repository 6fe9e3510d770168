"""Tiered start: answer with the NumPy path while the compiled kernels build, then switch.

A cold kernel cache (``kernels/cache.py``) means 11-16 s of compiling (over a minute before
2026-12) before the Numba engine gives its first result, and even a warm one a second of loading; the NumPy reference
path (``reference.py``, BLAS) gives one in tens of milliseconds per image.  So until the
kernels are loaded in the process, ``make`` returns a ``TieredBackend``:

* At the first call it starts one child process per parent (``python -c ... _child``), which
  compiles the engine's entry points (``engine.warmup``) into the shared on-disk cache and then
  writes a "ready" marker for this CPU (``cache.ready_marker``).  A child, not a thread:
  Numba's compiler is Python code that would hold the GIL and stall the calls meanwhile.
  Children of several processes (Dask workers on one node) take turns on a lock in the cache
  folder, so one compiles and the others then only load.  The child keeps the normal
  priority: niced, it made no progress at all in 10 minutes on a busy 2-core machine.
* Calls run on the NumPy path meanwhile, with one BLAS thread fewer than asked for (at least
  one), so that they do not fight the compiling child for its core.  The first call after the
  child has finished starts a background thread that loads the compiled kernels from the
  cache into this process (about a second); the calls after that run on the Numba engine.
  No call waits.
* With a warm cache (this CPU's "ready" marker present) there is no tiering at all: ``make``
  returns the Numba engine, whose first call loads the kernels from the cache (about a second).
  Answering that call from the NumPy path would be faster, but then which calls of a process
  got the NumPy path's results (equal within tolerance, not bit for bit) would depend on
  timing, and a warm process must give the same bytes every run.
* The child dies with its parent: the parent terminates it at exit, and the child exits on
  its own when its parent is gone (killed).  An interrupted compile leaves no broken entry
  (Numba writes each file to a temporary name and renames it; ``cache.py`` locks the index).

The two paths agree within the tolerances of tests/test_kernels.py (the engine folds
BatchNorm and fuses multiply-adds), not bit for bit.  ``MOBILENET_NP_TIERED=0`` (or
``mnp.load(..., tiered=False)``) opts out: the compiled engine or nothing, compiled in the
calling process on the first call, as before.  Without a usable cache folder there is no
child to share with, so the engine compiles in-process too.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

from . import backend_class
from .. import threads as _threads
from .reference import NumpyBackend

ENV = "MOBILENET_NP_TIERED"
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
announce = logging.getLogger("mobilenet_np.compile")
log = logging.getLogger("mobilenet_np")
_ENTRY_POINTS = ("run_plan",)


def wanted(option: bool | None = None) -> bool:
    """Tiering on unless turned off by the load option or ``MOBILENET_NP_TIERED=0``."""
    if option is not None:
        return bool(option)
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def make(name: str, arch, tensors, folded: bool, epsilon: float, tiered: bool | None = None):
    """The backend ``name`` for a model: a ``TieredBackend`` for "numba" when the compiled
    kernels are not loaded in this process yet (and tiering is on)."""
    if name != "numba" or not wanted(tiered) or _ready() or _cache_warm():
        return backend_class(name)(arch, tensors, folded, epsilon)
    return TieredBackend(arch, tensors, folded, epsilon)


def _ready() -> bool:
    """The engine runs at once: its entry points are loaded in this process already, or there is
    no cache to fill (they compile in the process, as with tiering off)."""
    plan = sys.modules.get(__name__.rsplit(".", 2)[0] + ".kernels.plan")
    if plan is not None and all(getattr(plan, f).overloads for f in _ENTRY_POINTS):
        return True
    from ..kernels import jit
    return jit._FOLDER is None


def _cache_warm() -> bool:
    """Every entry point is in the cache for this CPU (``fill_cache`` marked it)."""
    from ..kernels import cache, jit
    return cache.ready_marker(jit._FOLDER).exists()


class TieredBackend:
    """The NumPy path until the Numba engine is compiled and loaded, then the engine; the same
    methods as both (``MobileNet`` calls them one by one, and any mix of the two is valid)."""

    name = "numba"

    def __init__(self, arch, tensors, folded: bool, epsilon: float):
        self._args = (arch, tensors, folded, epsilon)
        self._numpy = NumpyBackend(arch, tensors, folded, epsilon)
        self._fast = None
        self._classifier = None
        self._job: _Job | None = None       # started by the first call (a model never called compiles nothing)

    @property
    def tier(self) -> str:
        """Which path answers calls now: "numpy" or "numba"."""
        return self._current().name

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the compiled engine answers (True) or ``timeout`` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._current() is self._numpy:
            if (self._job and self._job.failed) or (deadline is not None and time.monotonic() > deadline):
                return False
            time.sleep(0.05)
        return True

    def _current(self):
        if self._fast is None:
            if self._job is None:
                self._job = _Job.shared()
                self._job.waiting.add(self)
            self._job.poll()
            if self._job.loaded.is_set() and self._fast is None:     # came after the loader's round
                self._switch()
        return self._fast or self._numpy

    def _switch(self) -> None:
        """Build this model's engine (called by the loader thread once the kernels are loaded)."""
        from .engine import NumbaBackend
        fast = NumbaBackend(*self._args)
        if self._classifier is not None:
            fast.set_classifier(*self._classifier)
        self._fast = fast

    def set_classifier(self, w, b) -> None:
        self._classifier = (w, b)
        self._numpy.set_classifier(w, b)
        if self._fast is not None:
            self._fast.set_classifier(w, b)

    def run(self, geo, x, on_layer=None):
        backend = self._current()
        with self._spare_a_core(backend):
            return backend.run(geo, x, on_layer)

    def global_mean(self, x):
        return self._current().global_mean(x)

    def logits(self, pooled):
        return self._current().logits(pooled)

    def features(self, geo, x):
        backend = self._current()
        with self._spare_a_core(backend):
            return backend.features(geo, x)

    def _spare_a_core(self, backend):
        """While the child compiles on one core, the NumPy path leaves it that core: BLAS
        threads fighting a busy core wait for each other (V1 0.5/160 at batch 1 beside a busy
        core: median 111 ms on 1 BLAS thread, 216 ms on 2, 12 alternating rounds in one
        process).  Never more threads than the call asked for, only fewer."""
        job = self._job
        if backend is not self._numpy or job is None or not job.compiling():
            return contextlib.nullcontext()
        blas = _threads._blas_controller().select(user_api="blas")
        now = min((lib.num_threads for lib in blas.lib_controllers), default=1)
        cap = min(now, max(1, (os.cpu_count() or 1) - 1))
        return blas.limit(limits=cap) if cap < now else contextlib.nullcontext()

    def release(self) -> None:
        self._numpy.release()
        if self._fast is not None:
            self._fast.release()


class _Job:
    """This process's background compile: the child, then the loader thread."""

    _shared: _Job | None = None
    _lock = threading.Lock()

    @classmethod
    def shared(cls) -> _Job:
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def __init__(self):
        from ..kernels import cache, jit
        self.folder = jit._FOLDER
        self.marker = cache.ready_marker(self.folder)
        self.waiting: weakref.WeakSet[TieredBackend] = weakref.WeakSet()
        self.failed: str | None = None
        self.loaded = threading.Event()
        self._loader: threading.Thread | None = None
        self._poll_lock = threading.Lock()
        self._errors = tempfile.TemporaryFile()
        self.started = time.monotonic()
        self._owner = os.getpid()
        self.proc = None
        if self.marker.exists():        # warm: only the loading, in the background
            return
        self.proc = child_process(f"from {__name__} import _child; _child({os.getpid()})", self._errors)
        atexit.register(self.stop)
        if os.environ.get("MOBILENET_NP_QUIET", "") in ("", "0"):
            announce.warning("mobilenet-np: compiling kernels for this CPU in the background (once, about %d s; "
                             "cached in %s); answering with the NumPy path meanwhile", jit.COMPILE_SECONDS,
                             self.folder)

    def compiling(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def poll(self) -> None:
        """Cheap check at every call: start loading once the child has finished."""
        if self._loader is not None or self.failed:
            return
        with self._poll_lock:
            if self._loader is not None or self.failed or self.compiling():
                return
            if self.proc is not None and (self.proc.returncode != 0 or not self.marker.exists()):
                self._errors.seek(0)
                tail = self._errors.read().decode(errors="replace").strip().splitlines()[-1:]
                self.failed = f"exit status {self.proc.returncode}" + (f": {tail[0]}" if tail else "")
                log.warning("mobilenet-np: compiling the kernels in the background failed (%s); staying on the "
                            "NumPy path (MOBILENET_NP_TIERED=0 compiles in this process)", self.failed)
                return
            self._loader = threading.Thread(target=self._load, name="mobilenet-np-load", daemon=True)
            self._loader.start()

    def _load(self) -> None:
        """Load the compiled kernels from the cache (compiles nothing when the child filled it),
        then switch every waiting model."""
        try:
            from .engine import warmup
            warmup()
            for backend in list(self.waiting):
                backend._switch()
        except Exception as e:          # the NumPy path keeps answering
            self.failed = f"{type(e).__name__}: {e}"
            log.warning("mobilenet-np: loading the compiled kernels failed (%s); staying on the NumPy path",
                        self.failed)
            return
        self.loaded.set()
        log.info("mobilenet-np: compiled kernels ready after %.1f s; switched from the NumPy path",
                 time.monotonic() - self.started)

    def stop(self) -> None:
        """Terminate the child if it still runs (at exit: no orphan)."""
        if os.getpid() != self._owner or not self.compiling():
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _forget_after_fork() -> None:
    """A forked process has no child of its own: it starts its own when it needs one."""
    _Job._shared = None
    _Job._lock = threading.Lock()


if hasattr(os, "register_at_fork"):          # POSIX
    os.register_at_fork(after_in_child=_forget_after_fork)


def child_process(code: str, stderr) -> subprocess.Popen:
    """``python -c code`` in a compiling child (the tiered start's, and ``mobilenet-np warmup``'s
    for the integer kernels), its error output to the file ``stderr``."""
    return subprocess.Popen([sys.executable, "-c", code], env=_child_env(), cwd=_PACKAGE_PARENT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)


def _child_env() -> dict[str, str]:
    """The child imports this very package (it runs in the folder that holds it), silently,
    on one BLAS thread."""
    env = dict(os.environ, MOBILENET_NP_QUIET="1", **{ENV: "0"})
    env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_PARENT, *filter(None, [os.environ.get("PYTHONPATH")])])
    for name in ("MOBILENET_NP_HOME", "XDG_CACHE_HOME"):       # the child runs in another folder
        if env.get(name):
            env[name] = os.path.abspath(os.path.expanduser(env[name]))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    return env


def _child(parent: int) -> None:
    """The child: compile (or load) the engine's entry points into the cache, then mark it
    ready for this CPU.  Exits when its parent is gone; one compiler per cache folder."""
    def watch():
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()
    from ..kernels import jit
    if jit._FOLDER is None:
        sys.exit("no usable kernel cache folder")
    fill_cache()
    exit_now(0)      # the parent switches when this process is gone


def exit_now(code: int) -> None:
    """End a process whose job was compiling kernels (this child, ``mobilenet-np warmup`` and its
    second process) without the interpreter's teardown, which then takes about a second
    (measured after a cold compile: 1.0 s from the last line to the exit, 0.04 s with
    ``os._exit``); the output is flushed first, and the cache files are complete by then."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def fill_cache() -> bool:
    """Compile (or load) every entry point of the engine into the kernel cache and mark it
    ready for this CPU, one process at a time per cache folder (``mobilenet-np warmup`` and the
    child).  False when there is no usable cache folder (the kernels are compiled all the same)."""
    from ..kernels import cache, jit
    from .engine import warmup
    if jit._FOLDER is None:
        warmup()
        return False
    marker = cache.ready_marker(jit._FOLDER)
    with cache.folder_lock(jit._FOLDER, ".warmup.lock"):
        warmup()                  # loads what is cached, compiles the rest
        cache.mark_ready(marker)
    return True
