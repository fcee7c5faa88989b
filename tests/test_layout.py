"""The package's layers: no import cycle between modules, and opening a model needs neither the training loop
nor the feature-cache writer (every import statement counts, at any depth, TYPE_CHECKING ones too)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "infodisent"


def _graph() -> nx.DiGraph:
    """Module -> module it imports (package ``__init__`` files left out: they only re-export)."""
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            continue
        mods[".".join(parts)] = p
    inits = {".".join(p.relative_to(PACKAGE.parent).parent.parts) for p in PACKAGE.rglob("__init__.py")}
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for m, p in mods.items():
        pkg = m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    t = full if full in mods else target
                    if t in mods and t != m:
                        g.add_edge(m, t)
                    elif t in inits and t != "infodisent" and full not in mods:
                        g.add_edge(m, t)  # a name re-exported by a sub-package
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in mods and alias.name != m:
                        g.add_edge(m, alias.name)
    return g


def test_no_module_imports_itself_back():
    cycles = list(nx.simple_cycles(_graph()))
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_opening_a_model_needs_no_training_and_no_cache_writer():
    needed = nx.descendants(_graph(), "infodisent.core.model")
    assert "infodisent.core.options" in needed and "infodisent.core.head" in needed  # the graph sees imports
    assert not {m for m in needed if m.startswith("infodisent.train.")}
    assert "infodisent.data.extract" not in needed and "infodisent.run" not in needed


def test_the_core_stays_below_training_explanations_and_pictures():
    g = _graph()
    core = [m for m in g if m.startswith("infodisent.core.")]
    for m in core:
        above = {t for t in nx.descendants(g, m)
                 if t.startswith(("infodisent.train.", "infodisent.explain.", "infodisent.viz.", "infodisent.tutorials."))}
        assert not above, f"{m} depends on {sorted(above)}"
