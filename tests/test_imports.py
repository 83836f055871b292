"""The package's imports form no circle (DESIGN.md, "Which way imports run"), read from the source with
ast: every import counts, also one inside a function, since a hidden import is still a dependency."""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nanorlhf"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path) -> dict[str, set[str]]:
    """{module: every module name it imports, package or not}, for every .py file under `root`."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    out = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from .x import y
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                targets.add(base)
                targets |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
        out[name] = targets
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the package modules it imports}, for every .py file under `root`."""
    found = imports(root)
    return {m: {t for t in targets if t in found and t != m} for m, targets in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_the_package_has_no_import_circle():
    graph = import_graph(PACKAGE)
    assert "nanorlhf.labeler" in graph and graph["nanorlhf.data"], "the walk must see the package's modules"
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("second", ["from pkg.a import f", "from pkg import a", "import pkg.a",
                                    "from .a import f", "def g():\n    from pkg.a import f\n"])
def test_the_walk_finds_a_planted_circle(tmp_path, second):
    """a -> b -> a, written each way Python allows; and no circle once b stops importing a."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import g\n")
    (pkg / "b.py").write_text(second + "\n")
    assert find_cycle(import_graph(pkg)) in (["pkg.a", "pkg.b", "pkg.a"], ["pkg.b", "pkg.a", "pkg.b"])
    (pkg / "b.py").write_text("import json\n")
    assert find_cycle(import_graph(pkg)) is None


def test_the_world_and_its_labeler_need_only_the_standard_library():
    """DESIGN.md: the labeler is text in, scores out; a student reads the "human" without PyTorch."""
    found, graph = imports(PACKAGE), import_graph(PACKAGE)
    reached, todo = set(), ["nanorlhf.world"]
    while todo:
        m = todo.pop()
        if m not in reached:
            reached.add(m)
            todo += graph[m]
    assert {"nanorlhf.labeler", "nanorlhf.tasks"} <= reached
    outside = {t.split(".")[0] for m in reached
               for t in found[m]} - set(sys.stdlib_module_names) - {"nanorlhf"}
    assert not outside, f"the world imports {sorted(outside)}"
