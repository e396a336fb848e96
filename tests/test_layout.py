"""The package's layout is its architecture: subpackages by concern, imports pointing one way, no cycle."""

import ast
import importlib
import pkgutil
from pathlib import Path

import nin

SRC = Path(nin.__file__).parent
# each subpackage may import the ones listed after it, never one before it (the module-level order of concerns)
LAYERS = ["cli", "serve", "api", "report", "training", "inference", "runtime", "config", "models", "data", "plots",
          "io", "errors", "version"]  # fmt: skip


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside `if TYPE_CHECKING:` blocks: imports for type hints only, never run."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            lines |= {n.lineno for stmt in node.body for n in ast.walk(stmt) if hasattr(n, "lineno")}
    return lines


def import_graph() -> dict[str, set[str]]:
    """module -> the nin modules it imports, at module level or in a function (type-checking imports aside)."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        skip, edges = type_checking_lines(tree), set()
        for node in ast.walk(tree):
            if node.lineno in skip if hasattr(node, "lineno") else True:
                continue
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nin":
                for alias in node.names:  # `from nin.data import folder`: the submodule, else the module
                    sub = f"{node.module}.{alias.name}"
                    edges.add(sub if sub in mods else node.module)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_function_level_imports_included():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1] if len(parts) > 1 else "api")  # the package root re-exports the API


def test_imports_point_down_the_layers():
    upward = [f"{m} -> {t}" for m, targets in import_graph().items() for t in targets
              if m != "nin" and m != "nin.__main__" and layer(t) < layer(m)]  # fmt: skip
    assert upward == []


def test_every_module_is_in_a_layer_and_every_subpackage_says_what_it_owns():
    for name, path in modules().items():
        if name not in ("nin", "nin.__main__"):
            layer(name)
        if path.name == "__init__.py":
            assert ast.get_docstring(ast.parse(path.read_text())), f"{path}: no docstring saying what it owns"


def test_no_package_attribute_shadows_a_submodule():
    names = [m for m in modules() if m != "nin.__main__"]  # importing __main__ runs the command
    for name in names:
        importlib.import_module(name)
    for name in names:
        if "." not in name:
            continue
        parent, _, child = name.rpartition(".")
        assert getattr(importlib.import_module(parent), child) is importlib.import_module(name), name
    assert importlib.import_module("nin.training.loop").__name__ == "nin.training.loop"
    assert callable(nin.train) and nin.train.__module__ == "nin.api"


def test_no_private_name_is_imported_across_modules():
    private = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nin"):
                private += [f"{name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")
                            and a.name != "__version__"]  # fmt: skip
    assert private == []


def test_no_module_is_over_450_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 450}
    assert long == {}


def test_walk_finds_every_module():
    walked = {m.name for m in pkgutil.walk_packages(nin.__path__, "nin.")}
    assert walked | {"nin"} == set(modules())
