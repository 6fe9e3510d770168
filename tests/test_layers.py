"""The import graph of the two packages: layers import only downwards, and nothing imports in a circle.

Every import statement counts, at module level or inside a function (an import moved into a
function to dodge a cycle is still a cycle).  The layers, lowest first, are those of
docs/architecture.md; a new module must be given a layer here.  Also: modules stay short.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mobilenet_np", "weights_tools")

# Lowest first.  A module may import modules of its own layer or of the layers before it.
LAYERS = [
    ("base", ["mobilenet_np._version", "mobilenet_np.errors", "mobilenet_np.atomic", "mobilenet_np.argparsing"]),
    ("architecture", ["mobilenet_np.spec", "mobilenet_np.tables", "mobilenet_np.weights_file",
                      "mobilenet_np.weights_common", "mobilenet_np.weights_file_v2"]),
    ("readers", ["weights_tools", "weights_tools.*"]),
    ("kernels", ["mobilenet_np.kernels", "mobilenet_np.kernels.*"]),
    ("forward", ["mobilenet_np.forward", "mobilenet_np.forward.*", "mobilenet_np.threads"]),
    ("model", ["mobilenet_np.model", "mobilenet_np.preprocess", "mobilenet_np.registry",
               "mobilenet_np.load", "mobilenet_np.quantized_model", "mobilenet_np.names", "mobilenet_np.endpoint_names", "mobilenet_np.data_config"]),
    ("application", ["mobilenet_np.argparsing", "mobilenet_np.inputs", "mobilenet_np.pipeline",
                     "mobilenet_np.journal", "mobilenet_np.outputs",
                     "mobilenet_np.labels", "mobilenet_np.parity", "mobilenet_np.dataset", "mobilenet_np.distributed", "mobilenet_np.image_commands", "mobilenet_np.cli", "mobilenet_np.calibrate",
                     "mobilenet_np.serve", "mobilenet_np.serve.*", "mobilenet_np", "mobilenet_np.__main__"]),
]
# weights_tools reads foreign formats for the model layer; it sees only the architecture below it.
READERS_MAY_IMPORT = {"base", "architecture", "readers"}

MAX_LINES = 400
LONG_FILE_NOTE = "longer than 400 lines because"


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def layer_of(module: str) -> int:
    for rank, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return rank
    raise AssertionError(f"{module} has no layer: add it to LAYERS in tests/test_layers.py "
                         "and to the diagram in docs/architecture.md")


def imports_of(module: str) -> set[str]:
    """The project modules that ``module`` imports anywhere in its body."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import sub" imports the submodule pkg.sub when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:     # "import a.b.c" of a package: the deepest module
                target = target.rpartition(".")[0]
            if target and target != module:
                out.add(target)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    rank = layer_of(module)
    upward = [t for t in sorted(GRAPH[module]) if layer_of(t) > rank]
    if upward:
        pytest.fail(f"{module} ({LAYERS[rank][0]}) imports higher layers: " + ", ".join(
            f"{t} ({LAYERS[layer_of(t)][0]})" for t in upward))
    if LAYERS[rank][0] == "readers":
        wrong = [t for t in sorted(GRAPH[module]) if LAYERS[layer_of(t)][0] not in READERS_MAY_IMPORT]
        if wrong:
            pytest.fail(f"{module}: weights_tools may import only the architecture layer, not {wrong}")


def test_no_import_cycles():
    seen, on_path, cycles = set(), [], []

    def visit(module):
        if module in on_path:
            cycles.append(on_path[on_path.index(module):] + [module])
            return
        if module in seen:
            return
        seen.add(module)
        on_path.append(module)
        for target in sorted(GRAPH[module]):
            visit(target)
        on_path.pop()

    for module in sorted(GRAPH):
        visit(module)
    if cycles:
        pytest.fail("import cycles: " + "; ".join(" -> ".join(c) for c in cycles))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_short(module):
    text = MODULES[module].read_text()
    lines = text.count("\n")
    if lines > MAX_LINES and LONG_FILE_NOTE not in text.lower():
        pytest.fail(f"{MODULES[module].relative_to(REPO)} has {lines} lines; split it, or say in the file why: "
                    f"'{LONG_FILE_NOTE} ...'")


def test_the_guard_sees_imports():
    """The checker itself: a known downward import and a known lazy import are found."""
    assert "mobilenet_np.spec" in GRAPH["mobilenet_np.model"]
    assert "mobilenet_np.forward.engine" in GRAPH["mobilenet_np.forward"]      # imported inside a function
    assert "weights_tools.convert" in GRAPH["mobilenet_np.load"]
