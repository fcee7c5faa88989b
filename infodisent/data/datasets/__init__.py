"""Datasets in their official on-disk layouts, and the synthetic ``parts`` dataset.

``build_dataset(name, root, split)`` is the one entry point; ``DATASETS`` lists the names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ...errors import InputError
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
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    check_split(split)
    if root is None and name != "parts":
        raise InputError(f"dataset {name!r} needs --root (the folder holding its files)")
    if name == "parts":
        return PartsDataset(split, transform, max_classes, parts)
    if parts is not None:
        raise InputError("parts= only applies to the parts dataset")
    return DATASETS[name](root, split, transform, max_classes)


SPLITS = ("train", "test")


def check_split(split: str) -> str:
    """``split`` if it is one of :data:`SPLITS` (``val`` is read as ``test``), else a ``ValueError``."""
    if split not in (*SPLITS, "val"):
        raise InputError(f"unknown split {split!r}; use train or test")
    return split


@dataclass(frozen=True)
class DatasetSpec:
    """The one recipe for rebuilding a dataset split (what a run and a prototype index record)."""

    name: str
    root: str | None
    split: str
    max_classes: int | None = None
    parts: PartsConfig | None = None

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise InputError(f"unknown dataset {self.name!r}; choose one of {', '.join(DATASETS)}")
        check_split(self.split)

    def build(self, transform: Callable | None = None) -> ImageDataset:
        return build_dataset(self.name, self.root, self.split, transform, self.max_classes, self.parts)

    def with_split(self, split: str) -> "DatasetSpec":
        return DatasetSpec(self.name, self.root, split, self.max_classes, self.parts)

    @classmethod
    def of(cls, dataset: ImageDataset) -> "DatasetSpec":
        """The spec of a built dataset."""
        config = getattr(dataset, "config", None)
        return cls(dataset.name, str(dataset.root) if dataset.root is not None else None, dataset.split,
                   dataset.num_classes, config if isinstance(config, PartsConfig) else None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DatasetSpec":
        parts = PartsConfig.from_dict(d["parts"]) if d.get("parts") else None
        return cls(d["name"], d.get("root"), d["split"], d.get("max_classes"), parts)


__all__ = [
    "DatasetSpec",
    "SPLITS",
    "check_split",
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
