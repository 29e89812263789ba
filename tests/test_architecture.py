"""The layering of DESIGN.md section 2, checked on the source: dependencies point one way."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The layers of DESIGN.md section 2, bottom up: a folder may import its own layer's folders below
# it in this list and the layers under it, nothing above.
LAYERS = [["diswm"], ["replay_service"], ["actors", "pretrain"], ["learner"], ["ops"]]
RANK = {folder: rank for rank, folders in enumerate(LAYERS) for folder in folders}
PACKAGES = [folder for folders in LAYERS for folder in folders]
ROLES = {"learner", "actors", "replay_service", "pretrain"}
NO_INFRA = {"ray", "redis", "prometheus_client"}


def imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


def imported_modules(path: Path) -> set[str]:
    """Every absolute import of `path` (function-local ones too), as dotted names; `from a.b
    import c` gives ``a.b.c`` (a module or a name in one: `import_graph` resolves which)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def module_files(root: Path = ROOT) -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project's modules it imports (``from pkg import name`` of a name defined
    in ``pkg/__init__.py`` is an arrow to the package)."""
    files = module_files(root)
    graph = {}
    for module, path in files.items():
        targets = set()
        for name in imported_modules(path):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def back_arrows(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a folder of a layer above the importer's, or of a later folder of its own."""
    order = {folder: i for i, folder in enumerate(PACKAGES)}
    back = []
    for module, targets in graph.items():
        here = module.split(".")[0]
        for target in targets:
            there = target.split(".")[0]
            if there != here and (RANK[there], order[there]) > (RANK[here], order[here]):
                back.append(f"{module} -> {target}")
    return sorted(back)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Modules that import each other in a loop (Tarjan's strongly connected components)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_layers_point_down():
    """The core, the roles and the operations layer (`ops/`) stack one way, no exceptions."""
    graph = import_graph()
    assert {"diswm.config", "learner.learner", "ops.cli"} <= set(graph)
    assert not back_arrows(graph), "imports that run back up: " + ", ".join(back_arrows(graph))


def test_no_import_cycles():
    assert not cycles(import_graph()), f"import cycles: {cycles(import_graph())}"


def test_the_checks_find_a_back_arrow_and_a_cycle(tmp_path):
    """On a small tree with one of each, the checks above name them."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "diswm" / "config.py").write_text("def f():\n    from learner.loop import g\n")
    (tmp_path / "learner" / "loop.py").write_text("from learner import evaluator\ng = 1\n")
    (tmp_path / "learner" / "evaluator.py").write_text("from learner.loop import g\n")
    (tmp_path / "ops" / "cli.py").write_text("import learner.loop\nfrom diswm.config import f\n")
    graph = import_graph(tmp_path)
    assert graph["ops.cli"] == {"learner.loop", "diswm.config"}
    assert back_arrows(graph) == ["diswm.config -> learner.loop"]
    assert cycles(graph) == [["learner.evaluator", "learner.loop"]]


def test_models_and_envs_do_not_import_infrastructure():
    for sub in ("models", "envs", "agent"):
        for path in (ROOT / "diswm" / sub).rglob("*.py"):
            assert not imported_roots(path) & NO_INFRA, f"{path} imports ray/redis/prometheus"


def test_no_pickle_loads_or_unsafe_torch_load():
    """DESIGN.md section 5: nothing is unpickled; torch.load always with weights_only=True."""
    for folder in ("diswm", *sorted(ROLES)):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                owner = node.func.value
                name = owner.id if isinstance(owner, ast.Name) else ""
                if name in ("pickle", "cloudpickle") and node.func.attr in ("load", "loads"):
                    raise AssertionError(f"{path}:{node.lineno} unpickles data")
                if name == "torch" and node.func.attr == "load":
                    safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                               and k.value.value is True for k in node.keywords)
                    assert safe, f"{path}:{node.lineno}: torch.load without weights_only=True"
