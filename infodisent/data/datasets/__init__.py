"""Datasets in their official on-disk layouts, and the synthetic ``parts`` dataset.

``build_dataset(name, root, split)`` is the one entry point (``from_spec`` reads a recorded
:class:`~infodisent.records.data.DatasetSpec`); ``DATASETS`` maps each of
:data:`~infodisent.records.data.DATASET_NAMES` to its class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ...errors import InputError
from ...records.data import DatasetSpec, PartsConfig, check_dataset, check_split
from .base import DatasetLayoutError, ImageDataset, ImageReadError, read_image, to_rgb
from .cub import CUB200
from .folder import ImageFolderDataset
from .imagenet import ImageNet
from .parts import PartsDataset
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
    ``parts`` (generation settings) only applies to it.

    Args:
        name: the dataset, one of :data:`~infodisent.records.data.DATASET_NAMES`.
        root: the folder holding its files; required for every dataset but ``parts``. Default None.
        split: ``"train"`` or ``"test"`` (``"val"`` reads as ``"test"``). Default ``"train"``.
        transform: applied to each image. Default None: the PIL image as read.
        max_classes: keep only the first this many classes, in the dataset's own order. Default None: all.
        parts: generation settings of the ``parts`` dataset. Default None: :class:`PartsConfig`'s defaults."""
    check_dataset(name)
    check_split(split)
    if root is None and name != "parts":
        raise InputError(f"dataset {name!r} needs --root (the folder holding its files)")
    if name == "parts":
        return PartsDataset(split, transform, max_classes, parts)
    if parts is not None:
        raise InputError("parts= only applies to the parts dataset")
    return DATASETS[name](root, split, transform, max_classes)


def from_spec(spec: DatasetSpec, transform: Callable | None = None) -> ImageDataset:
    """The dataset split a :class:`~infodisent.records.data.DatasetSpec` records.

    Args:
        spec: the recipe (name, root, split, class limit, parts settings).
        transform: applied to each image. Default None: the PIL image as read."""
    return build_dataset(spec.name, spec.root, spec.split, transform, spec.max_classes, spec.parts)


__all__ = [
    "DATASETS",
    "CUB200",
    "DatasetLayoutError",
    "ImageDataset",
    "ImageFolderDataset",
    "ImageNet",
    "ImageReadError",
    "PartsDataset",
    "StanfordCars",
    "StanfordDogs",
    "build_dataset",
    "from_spec",
    "read_image",
    "stanford_cars",
    "to_rgb",
]
