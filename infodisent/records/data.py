"""The data's records: which dataset split a run or an index reads (:class:`DatasetSpec`), the names the
package knows, and how the synthetic ``parts`` dataset is generated (:class:`PartsConfig`). Building the
images from them is :func:`infodisent.data.datasets.from_spec`'s job.

Example:
    >>> spec = DatasetSpec("cub", "/data/CUB_200_2011", "test", max_classes=50)
    >>> from_spec(spec)                      # infodisent.data.datasets.from_spec: the images
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..errors import InputError
from .serialize import Record

DATASET_NAMES = ("parts", "cub", "stanford_dogs", "stanford_cars", "imagenet", "folder")
SPLITS = ("train", "test")


def check_dataset(name: str) -> str:
    """``name`` if it is one of :data:`DATASET_NAMES`, else an error listing them.

    Args:
        name: a dataset name."""
    if name not in DATASET_NAMES:
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    return name


def check_split(split: str) -> str:
    """``split`` if it is one of :data:`SPLITS` (``val`` is read as ``test``), else an error.

    Args:
        split: a split name."""
    if split not in (*SPLITS, "val"):
        raise InputError(f"unknown split {split!r}; use train or test")
    return split


@dataclass(frozen=True)
class PartsConfig(Record):
    """Generation parameters. The defaults give the project's demo difficulty."""

    image_size: int = 224
    train_per_class: int = 60
    test_per_class: int = 30
    scale: tuple[float, float] = (0.17, 0.37)  # part size as a fraction of the image side
    max_distractors: int = 1  # 0..max_distractors objects of no class, uniformly
    margin: float = 0.08  # keep parts this far from the border (survives a centre crop)
    seed: int = 0
    # A planted shortcut (Waterbirds-style, with ground truth): a small mark on ``shortcut_share`` of the
    # training images of class ``shortcut_class``, and on ``shortcut_test_share`` of all test images at
    # random (0: a clean test set; e.g. 0.5: a shifted one, where the mark says nothing of the class).
    shortcut_class: int | None = None
    shortcut_share: float = 0.95
    shortcut_test_share: float = 0.0
    shortcut_size: float = 0.25  # the mark's side, as a fraction of the image side (56 px at 224)

    def __post_init__(self) -> None:
        for f in fields(self):  # the float fields hold floats: 1 and 1.0 give one cache key
            if f.type == "float":
                object.__setattr__(self, f.name, float(getattr(self, f.name)))
            elif f.type == "tuple[float, float]":
                object.__setattr__(self, f.name, tuple(float(s) for s in getattr(self, f.name)))
        if not (0 <= self.shortcut_share <= 1 and 0 <= self.shortcut_test_share <= 1 and 0 < self.shortcut_size < 0.5):
            raise InputError("PartsConfig needs shortcut_share and shortcut_test_share in [0, 1] and "
                             f"0 < shortcut_size < 0.5; got {self}")

    def per_class(self, split: str) -> int:
        """Images generated per class for a split.

        Args:
            split: ``"train"``, or any other split for the test count."""
        return self.train_per_class if split == "train" else self.test_per_class


@dataclass(frozen=True)
class DatasetSpec(Record):
    """The one recipe for rebuilding a dataset split (what a run and a prototype index record)."""

    name: str
    root: str | None
    split: str
    max_classes: int | None = None
    parts: PartsConfig | None = None

    def __post_init__(self) -> None:
        check_dataset(self.name)
        check_split(self.split)

    def with_split(self, split: str) -> "DatasetSpec":
        """The same dataset, another split.

        Args:
            split: the split of the new spec."""
        return DatasetSpec(self.name, self.root, split, self.max_classes, self.parts)

    @classmethod
    def of(cls, dataset: Any) -> "DatasetSpec":
        """The spec of a built dataset (an :class:`infodisent.data.datasets.ImageDataset`).

        Args:
            dataset: the dataset; its name, root, split and class count are read, and its ``config`` where
                that is a :class:`PartsConfig`."""
        config = getattr(dataset, "config", None)
        return cls(dataset.name, str(dataset.root) if dataset.root is not None else None, dataset.split,
                   dataset.num_classes, config if isinstance(config, PartsConfig) else None)


__all__ = ["DATASET_NAMES", "SPLITS", "DatasetSpec", "PartsConfig", "check_dataset", "check_split"]
