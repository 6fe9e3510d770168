"""The forward pass: ``reference`` (the readable NumPy loop) and ``engine`` (the Numba engine).
Both run the layer list of ``spec.geometry``; ``MobileNet`` picks one by name."""

from .reference import NumpyBackend


def backend_class(name: str):
    """The backend class for a name; the Numba engine is imported only when asked for, so that
    the NumPy path runs without Numba."""
    if name == "numpy":
        return NumpyBackend
    if name == "numba":
        from .engine import NumbaBackend
        return NumbaBackend
    raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")


BACKENDS = ("numba", "numpy")
