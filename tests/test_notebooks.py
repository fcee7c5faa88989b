"""The notebooks as files: tutorials committed fresh, reproduction notebooks' smoke profile run by papermill,
environment.yml in step with pyproject.toml. (nbval runs the tutorials themselves: ``notebooks/tutorials`` is
in pytest's testpaths.)"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "notebooks" / "tutorials").glob("*.ipynb"))
REPRODUCTION = sorted((ROOT / "notebooks" / "reproduction").glob("*.ipynb"))


def test_there_are_the_eight_tutorials_and_three_reproductions():
    assert [p.name[:2] for p in TUTORIALS] == [f"{i:02d}" for i in range(1, 9)]
    assert {p.stem for p in REPRODUCTION} == {"imagenet", "fine_grained", "side"}


@pytest.mark.parametrize("path", TUTORIALS + REPRODUCTION, ids=lambda p: p.name)
def test_committed_with_fresh_outputs_from_one_top_to_bottom_run(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: execution counts {counts}: run it top to bottom"
    assert "widgets" not in nb.metadata, f"{path.name} holds its widgets' state (megabytes): strip metadata.widgets"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name} was committed with an error: {errors[0].ename}: {errors[0].evalue}"


@pytest.mark.parametrize("path", REPRODUCTION, ids=lambda p: p.name)
def test_reproduction_notebook_has_a_papermill_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "PROFILE = " in tagged[0].source
    assert re.search(r'PROFILE = "(smoke|cpu-real|full)"', tagged[0].source)


@pytest.mark.parametrize("path", REPRODUCTION, ids=lambda p: p.name)
def test_reproduction_smoke_profile_runs_with_papermill(path, tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / "runs"
    papermill.execute_notebook(str(path), str(tmp_path / path.name), cwd=str(tmp_path), kernel_name="python3",
                               parameters={"PROFILE": "smoke", "OUT": str(out)}, progress_bar=False)
    table = pd.read_csv(out / "results.csv")
    if path.stem == "imagenet":
        mine = table[table["infodisent"].notna()]
        assert set(mine["backbone"]) == {"tf_efficientnet_lite0", "test_convnext"}
        assert table["published InfoDisent"].notna().sum() == 5   # every published row is in the table
    elif path.stem == "fine_grained":
        assert set(table["dataset"]) == {"cub", "stanford_cars", "stanford_dogs"}
        assert table.loc[table.dataset == "cub", "published"].item() == 84.1
        assert not table["same_task"].any() and table["difference"].isna().all()  # 6 classes: not the paper's task
    else:
        assert table["head"].iloc[0] == "dense" and table["size_reduction"].iloc[0] == 0
        pruned = table[table["channels_per_class"].notna()]
        assert len(pruned) >= 2 and (pruned["local_size"] <= pruned["channels_per_class"] + 1e-9).all()
    mine = table[table["infodisent" if "infodisent" in table else "top1"].notna()]
    assert len(mine) and mine["infodisent" if "infodisent" in table else "top1"].between(0, 100).all()


def _pip_name(req: str) -> tuple[str, str]:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", req)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def test_environment_yml_has_the_dependencies_and_bounds_of_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_pip_name(r) for r in project["dependencies"] + project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed: dict[str, str] = {}
    for dep in env["dependencies"]:
        for item in dep["pip"] if isinstance(dep, dict) else [dep]:
            if item.startswith("-") or item.startswith("python=") or item == "pip":
                continue
            name, spec = _pip_name(item)
            listed[name] = spec
    missing = sorted(set(wanted) - set(listed))
    assert not missing, f"environment.yml lacks {missing}"
    pins = dict(_pip_name(line) for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#"))
    for name, bound in wanted.items():
        # the same lower bound, or the exact version constraints.txt pins
        allowed = {bound} | ({pins[name]} if name in pins else set())
        assert listed[name] in allowed, f"{name}: pyproject {bound!r}, environment.yml {listed[name]!r}"
