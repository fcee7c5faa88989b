"""The package's floors (DESIGN §3): a module imports only from its own floor or below, never upward, not
even inside a function or under ``TYPE_CHECKING``; rooms that share a floor (train and explain; run,
pipeline and studies) keep their own order; and opening a model needs neither the training loop nor the
feature-cache writer. Every import statement counts, at any depth."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "infodisent"
WIDGETS = ROOT / "widgets"  # installed as infodisent.widgets

# Bottom to top. A room is a sub-package or a top-level module of infodisent.
FLOORS: list[tuple[str, ...]] = [
    ("errors",),                           # the package's error types
    ("io", "distributed"),                 # infrastructure: atomic files; several processes
    ("records",),                          # typed records and their serializer
    ("core",),                             # the method: head, model, backbone
    ("data",),                             # datasets, the feature cache
    ("train", "explain"),                  # the fit loop and the teacher | explanations and prototypes
    ("eval",),                             # metrics that score a given model
    ("viz",),                              # figures, the report, sentences
    ("run",),                              # the run directory
    ("pipeline",),                         # the train / evaluate / mine jobs
    ("studies", "tutorials"),              # procedures that train and compare runs; what notebooks need
    ("widgets", "cli", "__main__"),        # the faces
]
FLOOR = {room: i for i, rooms in enumerate(FLOORS) for room in rooms}
SIBLINGS_APART = [("train", "explain"), ("studies", "tutorials"), ("io", "distributed")]


def _modules() -> dict[str, Path]:
    """Every module by dotted name, the package ``__init__`` files included (widgets as infodisent.widgets)."""
    mods = {}
    for base, prefix in ((PACKAGE, ["infodisent"]), (WIDGETS, ["infodisent", "widgets"])):
        for p in base.rglob("*.py"):
            parts = prefix + list(p.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = p
    return mods


def _imports(mods: dict[str, Path]) -> list[tuple[str, str, int]]:
    """``(importer, imported module, line)`` for every import of a package module, at any depth."""
    out = []
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    t = full if full in mods else target
                    if t.startswith("infodisent"):
                        out.append((m, t, node.lineno))
            elif isinstance(node, ast.Import):
                out.extend((m, a.name, node.lineno) for a in node.names if a.name.startswith("infodisent"))
    return out


def room(module: str) -> str | None:
    """The room of ``infodisent.<room>...`` (None for the package itself, the public facade)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _graph() -> nx.DiGraph:
    mods = _modules()
    g = nx.DiGraph()
    g.add_nodes_from(m for m in mods if m.count(".") > 0)
    g.add_edges_from((a, b) for a, b, _ in _imports(mods) if a != b and room(a) and room(b) and a in g and b in g
                     and not _is_package_of(b, a))
    return g


def _is_package_of(pkg: str, module: str) -> bool:
    return module.startswith(pkg + ".")


def test_every_room_has_a_floor():
    rooms = {room(m) for m in _modules()} - {None}
    assert rooms - set(FLOOR) == set(), "a room missing from FLOORS: give it its floor here and in DESIGN §3"
    assert set(FLOOR) - rooms == set(), "FLOORS names a room the package no longer has"


def test_each_room_says_its_floor_where_a_reader_starts():
    """A room's docstring (its package ``__init__`` or its module) names its floor as this list does: reading it
    tells where it stands and what it may touch."""
    mods = _modules()
    for r, floor in FLOOR.items():
        doc = ast.get_docstring(ast.parse(mods[f"infodisent.{r}"].read_text())) or ""
        said = [int(n) for n in re.findall(r"[Ff]loor (\d+)", doc)]
        said += [0] * ("bottom floor" in doc) + [len(FLOORS) - 1] * ("top floor" in doc)
        assert said, f"infodisent.{r}'s docstring does not say its floor ({floor})"
        assert set(said) == {floor}, f"infodisent.{r}'s docstring says floor {said}, the layout puts it on {floor}"


def test_no_module_imports_from_a_floor_above_its_own():
    up = [f"{a}:{line} imports {b}" for a, b, line in _imports(_modules())
          if room(a) and room(b) and FLOOR[room(b)] > FLOOR[room(a)]]
    assert not up, "upward imports:\n" + "\n".join(up)


@pytest.mark.parametrize("left,right", SIBLINGS_APART)
def test_rooms_that_share_a_floor_do_not_import_each_other(left, right):
    across = [f"{a}:{line} imports {b}" for a, b, line in _imports(_modules())
              if {room(a), room(b)} == {left, right}]
    assert not across, "\n".join(across)


def test_no_module_reaches_back_into_the_public_facade():
    """``import infodisent`` (the facade, which imports every floor) from inside the package would be an
    upward import of everything."""
    back = [f"{a}:{line}" for a, b, line in _imports(_modules()) if b == "infodisent" and room(a)]
    assert not back, "\n".join(back)


def test_records_import_only_the_errors():
    reached = {room(b) for a, b, _ in _imports(_modules()) if room(a) == "records"} - {"records"}
    assert reached <= {"errors"}, f"records import {sorted(reached)}"


def test_the_walk_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The checks above would pass vacuously if the walk missed function-local, TYPE_CHECKING or relative
    imports: a fabricated package with one of each is read back whole."""
    pkg = tmp_path / "infodisent"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "model.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..run import Run\n"
        "def f():\n    from ..viz import plots\n    import infodisent.pipeline\n")
    (pkg / "run.py").write_text("")
    (pkg / "pipeline.py").write_text("")
    (pkg / "viz").mkdir()
    (pkg / "viz" / "__init__.py").write_text("")
    (pkg / "viz" / "plots.py").write_text("")
    here = sys.modules[__name__]
    monkeypatch.setattr(here, "PACKAGE", pkg)
    monkeypatch.setattr(here, "WIDGETS", tmp_path / "nowhere")
    found = {(a, b) for a, b, _ in _imports(_modules())}
    assert found == {("infodisent.core.model", "infodisent.run"), ("infodisent.core.model", "infodisent.viz.plots"),
                     ("infodisent.core.model", "infodisent.pipeline")}


def test_no_module_imports_itself_back():
    cycles = list(nx.simple_cycles(_graph()))
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_opening_a_model_needs_no_training_and_no_cache_writer():
    needed = nx.descendants(_graph(), "infodisent.core.model")
    assert "infodisent.records.options" in needed and "infodisent.core.head" in needed  # the graph sees imports
    assert not {m for m in needed if room(m) in ("train", "explain", "eval", "viz", "run", "pipeline", "studies")}
    assert "infodisent.data.extract" not in needed
