"""What several test files share besides fixtures: where the real datasets lie beside the project, a
skip that names a missing one, fabricated image files and the tiny run configuration. Imported as ``from helpers import ...``
(pytest puts this folder on the path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infodisent.records.data import PartsConfig
from infodisent.records.options import FitConfig
from infodisent.records.run import RunConfig

SMALL_PARTS = PartsConfig(image_size=64, train_per_class=4, test_per_class=2, scale=(0.3, 0.5))

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
CUB50 = SHARED / "cub50" / "CUB_200_2011"
IMAGENETTE = SHARED / "imagenette_mini"


def require(path: Path) -> Path:
    """``path`` when it exists, else a skip naming it."""
    if not path.exists():
        pytest.skip(f"real data not found at {path}")
    return path


def write_image(path: Path, seed: int, size=(40, 32), mode: str = "RGB") -> Path:
    """A random image of ``size`` (width, height) saved at ``path`` in ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


def tiny_config(tmp_path: Path, **kw) -> RunConfig:
    """A run of the compact default on 5 small ``parts`` classes and a random-init ``test_resnet`` at 64 px
    (2x2 maps), 3 dense epochs; ``kw`` overrides any field."""
    base = dict(
        out=str(tmp_path / "run"), backbone="test_resnet", weights="random", image_size=64, parts=SMALL_PARTS,
        max_classes=5, cache_dir=str(tmp_path / "cache"), num_workers=0, progress=False, fit=FitConfig(epochs=3),
    )
    return RunConfig(**{**base, **kw})
