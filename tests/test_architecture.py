"""The package keeps the shape docs/architecture.md draws: folders as floors, imports only
downward, no cycles, and comments that cite that file cite sections it has."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

# Bottom up, as in docs/architecture.md "Layers"; the longest matching prefix places a module.
FLOORS: list[tuple[str, ...]] = [
    ("mgc.config", "mgc.log", "mgc.io.jsonio"),
    ("mgc.io", "mgc.labels"),
    ("mgc.audio",),
    ("mgc.models",),
    ("mgc.stages", "mgc.evaluation", "mgc.datasets"),
    ("mgc.training", "mgc.tagging", "mgc.catalog", "mgc.evaluation.job"),
    ("mgc.cli",),
]


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((REPO / "mgc").rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def floor(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (level, len(prefix))
    return None if best is None else best[0]


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """mgc modules ``path`` imports (``from mgc.x import y`` counts ``mgc.x.y`` when it is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mgc"):
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("mgc")]
        out.update(n for n in names if n in known)
    return out


def test_every_module_sits_on_a_floor_and_imports_only_downward():
    known = modules()
    graph = {name: imports(path, known) - {name, "mgc"} for name, path in known.items()}
    unplaced = [m for m in known if m != "mgc" and floor(m) is None]
    assert not unplaced, f"modules outside every floor: {unplaced}"
    upward = [f"{m} -> {t}" for m, targets in graph.items() if m != "mgc" for t in targets
              if floor(t) > floor(m)]
    assert not upward, "imports that go up a floor:\n" + "\n".join(upward)

    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in graph[module]:
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [module, target]))
            if target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def test_comments_cite_only_what_the_repo_has():
    headings = set(re.findall(r"^## (.+)$", (REPO / "docs" / "architecture.md").read_text(), re.M))
    cited = []
    for path in sorted([*(REPO / "mgc").rglob("*.py"), *(REPO / "tests").glob("*.py"), *(REPO / "jobs").glob("*.py")]):
        text = path.read_text()
        assert not re.search(r"DESIGN s" + r"ection", text), f"{path} cites a file the repo does not hold"
        cited += [(path, section) for section in re.findall(r'docs/architecture\.md, "([^"]+)"', text)]
    assert cited, "the code cites docs/architecture.md"
    missing = [f"{path.name}: {section}" for path, section in cited
               if not any(heading.startswith(section) for heading in headings)]
    assert not missing, f"cited sections that docs/architecture.md lacks: {missing}"
