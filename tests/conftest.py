"""Shared fixtures: tiny random-init timm backbones, real data paths, image fabrication."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from infodisent.backbone import load_backbone

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
CUB50 = SHARED / "cub50" / "CUB_200_2011"
IMAGENETTE = SHARED / "imagenette_mini"

torch.set_num_threads(2)


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_backbone():
    """A random-init ``test_resnet`` at 64 px: D=96, 2x2 maps."""
    return load_backbone("test_resnet", "random", image_size=64)


def write_image(path: Path, seed: int, size=(40, 32), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path
