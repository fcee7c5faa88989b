"""Shared fixtures: a tiny random-init timm backbone, a tiny trained run; the tutorials that need real data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import CUB50, IMAGENETTE

import infodisent
from infodisent.core.weights import load_backbone

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_backbone():
    """A random-init ``test_resnet`` at 64 px: D=96, 2x2 maps."""
    return load_backbone("test_resnet", "random", image_size=64)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A trained dense run (the paper's head) on a tiny parts dataset (test_resnet, 64 px, 2x2 maps), its cache
    and a mined train index."""
    from infodisent.pipeline import mine_run, train_run
    from infodisent.records.data import PartsConfig
    from infodisent.records.options import FitConfig
    from infodisent.records.run import RunConfig

    tmp = tmp_path_factory.mktemp("tiny_run")
    cfg = RunConfig(
        out=str(tmp / "run"), backbone="test_resnet", weights="random", image_size=64, max_classes=6,
        parts=PartsConfig(image_size=64, train_per_class=6, test_per_class=3, scale=(0.3, 0.5)),
        cache_dir=str(tmp / "cache"), num_workers=0, progress=False, fit=FitConfig(epochs=4), sparse=None,
    )
    result = train_run(cfg)
    index = mine_run(cfg.out, "train", k=4, num_workers=0, progress=False, batch_size=8)
    return result, index, cfg


# the tutorials whose committed outputs were made on real data beside the project
TUTORIAL_DATA = {"02_own_data.ipynb": CUB50, "08_trust_and_fix.ipynb": IMAGENETTE}


def pytest_collection_modifyitems(config, items):
    """Tutorial 2 runs on CUB-200-2011 species 1-50 where it is beside the project, and its committed outputs are
    those: without the data it falls back to a fabricated copy, whose outputs cannot match. Tutorial 8 compares
    the head with the backbone's ImageNet classifier on Imagenette's classes. Without their data both are skipped,
    and the run says so at its start and at its end (not only in the skip list)."""
    for item in items:
        path = TUTORIAL_DATA.get(Path(str(item.fspath)).name)
        if path is not None and not path.exists():
            item.add_marker(pytest.mark.skip(reason=f"real data not found at {path}: the notebook's committed "
                                                    "outputs were made on it"))


def _missing_data_lines() -> list[str]:
    missing = {name: path for name, path in TUTORIAL_DATA.items() if not path.exists()}
    if not missing:
        return []
    return [f"NOT CHECKED: tutorial {name}, whose real data is missing ({path})" for name, path in missing.items()] \
        + ["data/README.md says how to build those subsets (data/make_subsets.py)"]


def pytest_report_header(config):
    return _missing_data_lines() or None


def pytest_terminal_summary(terminalreporter):
    for line in _missing_data_lines():
        terminalreporter.write_line(line, yellow=True, bold=True)


@pytest.fixture(scope="module")
def run(tiny_run):
    """:func:`tiny_run`, opened (a test file may define its own ``run``)."""
    return infodisent.open_run(tiny_run[2].out)
