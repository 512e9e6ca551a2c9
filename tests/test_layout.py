"""The house's layout: distrib's modules grouped in wings by concern, imports running one way only.

Layers, lowest first: the config and errors every part may use; the foundations (data, models, metrics,
parallel); what a run leaves on disk (checkpoint); what a user sees (report); the training loop; and the entry
points on top. A module may import its own wing or any lower layer, never a higher one, and the graph of
modules has no cycle.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distrib"
LAYERS = {
    "errors": 0, "options": 0, "config": 0, "fsutil": 0,
    "data": 1, "metrics": 1, "parallel": 1, "models": 2,
    "checkpoint": 3,
    "report": 4,
    "training": 5,
    "train": 6, "run": 7, "evaluate": 6, "recommend": 7,
}
WINGS = ("data", "models", "parallel", "training", "checkpoint", "report", "metrics")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """distrib modules imported anywhere in the file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distrib"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("distrib"))
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name for name in found if name in modules}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_top_level_holds_entry_points_and_wings_only():
    entries = sorted(p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
                     if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists()))
    assert set(entries) == set(LAYERS), entries
    assert 13 <= len(entries) <= 17
    for wing in WINGS:  # each wing says in its docstring what lives there
        doc = ast.get_docstring(ast.parse((PACKAGE / wing / "__init__.py").read_text()))
        assert doc and len(doc) > 40, wing


def test_no_import_runs_upward():
    upward = [(src, dst) for src, dsts in graph().items() for dst in dsts
              if top(src) and top(dst) and top(src) != top(dst) and LAYERS[top(dst)] > LAYERS[top(src)]]
    assert not upward, upward


def test_the_import_graph_has_no_cycle():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join(path + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, [node])
