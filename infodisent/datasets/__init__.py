"""Datasets in their official on-disk layouts, and the synthetic ``parts`` dataset.

``build_dataset(name, root, split)`` is the one entry point; ``DATASETS`` lists the names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .base import DatasetLayoutError, ImageDataset, ImageReadError, read_image, to_rgb
from .cub import CUB200
from .folder import ImageFolderDataset
from .imagenet import ImageNet
from .parts import PartsConfig, PartsDataset
from .stanford_cars import StanfordCars, stanford_cars
from .stanford_dogs import StanfordDogs

DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "parts": lambda root, split, transform, max_classes: PartsDataset(split, transform, max_classes),
    "cub": CUB200,
    "stanford_dogs": StanfordDogs,
    "stanford_cars": stanford_cars,
    "imagenet": ImageNet,
    "folder": ImageFolderDataset,
}


def build_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    transform: Callable | None = None,
    max_classes: int | None = None,
    parts: PartsConfig | None = None,
) -> ImageDataset:
    """A dataset by name (one of ``DATASETS``); ``root`` is ignored for ``parts``,
    ``parts`` (generation settings) only applies to it."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in ("train", "test", "val"):
        raise ValueError(f"unknown split {split!r}; use train or test")
    if root is None and name != "parts":
        raise ValueError(f"dataset {name!r} needs --root (the folder holding its files)")
    if name == "parts":
        return PartsDataset(split, transform, max_classes, parts)
    if parts is not None:
        raise ValueError("parts= only applies to the parts dataset")
    return DATASETS[name](root, split, transform, max_classes)


__all__ = [
    "DATASETS",
    "CUB200",
    "DatasetLayoutError",
    "ImageDataset",
    "ImageFolderDataset",
    "ImageNet",
    "ImageReadError",
    "PartsConfig",
    "PartsDataset",
    "StanfordCars",
    "StanfordDogs",
    "build_dataset",
    "read_image",
    "stanford_cars",
    "to_rgb",
]
