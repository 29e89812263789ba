"""The layering of DESIGN.md section 2, checked on the source: dependencies point one way."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROLES = {"learner", "actors", "replay_service", "pretrain"}
TOP_LAYER = {"diswm/cli.py", "diswm/bench", "diswm/runtime"}  # the run/CLI layer: may import roles
NO_INFRA = {"ray", "redis", "prometheus_client"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def test_shared_package_does_not_import_roles():
    for path in (ROOT / "diswm").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if any(rel == top or rel.startswith(top + "/") for top in TOP_LAYER):
            continue
        assert not imported_roots(path) & ROLES, f"{rel} imports a role folder"


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
