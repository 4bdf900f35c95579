"""The layout shows the data flow (README "Architecture"): no import cycles between
modules, none between the folders of `appliance/`, and the transport knows nothing of
OCPP actions, the tree or controls. Checked with the standard library alone: every
import statement of every module, also those inside functions or `if TYPE_CHECKING:`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "appliance"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The appliance modules `path` imports (a name imported from a package counts as
    its submodule where there is one)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(path, known) - {name} for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def folder(module: str) -> str:
    """`appliance.store.writer` → `appliance.store`; top-level modules stand alone."""
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_between_modules():
    edges = graph()
    # a package's __init__ only hands its modules' names on: the edge from a module to
    # its own package's face is how Python imports, not a dependency
    for name in edges:
        edges[name] = {m for m in edges[name] if not name.startswith(m + ".")}
    assert cycles(edges) == []


def test_no_import_cycle_between_folders():
    edges: dict[str, set[str]] = {}
    for name, targets in graph().items():
        source = folder(name)
        edges.setdefault(source, set()).update(folder(t) for t in targets if folder(t) != source)
    assert cycles(edges) == []


def test_the_transport_knows_nothing_of_ocpp_actions_the_tree_or_controls():
    used = set()
    for name, targets in graph().items():
        if name.startswith("appliance.transport"):
            used |= {folder(t) for t in targets}
    forbidden = {"appliance.versions", "appliance.tree", "appliance.controls", "appliance.station"}
    assert used & forbidden == set()


def test_only_the_store_speaks_sql():
    statements = ("INSERT INTO", "UPDATE states", "DELETE FROM", "SELECT ")
    speaking = sorted(
        module_name(path)
        for path in PACKAGE.rglob("*.py")
        if not module_name(path).startswith("appliance.store")
        and any(word in path.read_text() for word in statements)
    )
    assert speaking == []


def test_the_versions_are_listed_once():
    """Only rpc/dialects.py spells the three subprotocols; everything else derives."""
    spelled = sorted(
        module_name(path) for path in PACKAGE.rglob("*.py") if '"ocpp2.0.1"' in path.read_text()
    )
    assert spelled == ["appliance.rpc.dialects"]


def test_every_readme_section_the_code_cites_exists():
    """Comments cite the README (the product's contract) by section: each one is there."""
    readme = (ROOT / "README.md").read_text()
    headings = [line.lstrip("#").strip() for line in readme.splitlines() if line.startswith("#")]
    cited = set()
    for path in PACKAGE.rglob("*.py"):
        found = re.findall(r'README[^"\n]{0,3}"([^"]+)"', path.read_text())
        cited |= {" ".join(c.replace("#", "").split()) for c in found}
    missing = sorted(c for c in cited if not any(h.startswith(c) for h in headings))
    assert missing == []
