"""The shape of ``models/``: its import graph is a tree, and serving from a cached ONNX
export needs no PyTorch."""

import ast
import subprocess
import sys
from pathlib import Path

import models

MODELS = Path(models.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(MODELS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of_models() -> dict[str, set[str]]:
    """Every ``models.*`` module and the ``models.*`` modules it imports anywhere in its
    code: at the top, inside functions, or under TYPE_CHECKING."""
    names = {module_name(p) for p in MODELS.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in MODELS.rglob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[module_name(path)] = {n for n in found if n in names} - {module_name(path)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_of_models_imports_one_that_imports_it_back():
    graph = imports_of_models()
    assert "models.runtimes.factory" in graph and "models.base" in graph
    assert find_cycle(graph) is None


def test_models_imports_neither_app_nor_training():
    for path in MODELS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(m.split(".")[0] in {"app", "training", "bench", "tests"}
                           for m in modules), path


def test_the_serving_path_imports_no_torch():
    """What the service imports to start (the app, the factory, the ONNX runtime) must not
    pull in torch or timm: on a CPU restart they would cost seconds."""
    code = ("import sys; import app.main, app.services.state, models.runtimes.factory, "
            "models.runtimes.onnx, models.atomic; "
            "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
