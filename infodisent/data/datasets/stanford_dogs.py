"""Stanford Dogs: ``Images/<wnid>-<breed>/*.jpg`` and ``lists/{train,test}_list.mat``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from .base import DatasetLayoutError, ImageDataset, limit_classes

LAYOUT = """\
  ROOT/Images/n02085620-Chihuahua/n02085620_10074.jpg ...
  ROOT/lists/train_list.mat   (file_list, labels: 1-based class ids)
  ROOT/lists/test_list.mat"""


def _mat_str(x) -> str:
    """A string from MATLAB's nested cell arrays, however deep scipy nests it."""
    while isinstance(x, np.ndarray):
        x = x.flat[0]
    return str(x)


class StanfordDogs(ImageDataset):
    """Stanford Dogs, 120 breeds, official train/test lists.

    Args:
        root: the folder holding ``Images/`` and ``lists/``.
        split: ``"train"``; any other split reads the test list. Default ``"train"``.
        transform: applied to each image. Default None: the PIL image as read.
        max_classes: keep only the first this many classes. Default None: all 120."""

    name = "stanford_dogs"

    def __init__(self, root: Path | str, split: str = "train", transform=None, max_classes: int | None = None):
        root = Path(root).expanduser()
        lst = root / "lists" / f"{'train' if split == 'train' else 'test'}_list.mat"
        if not lst.is_file() or not (root / "Images").is_dir():
            raise DatasetLayoutError(self.name, root, LAYOUT, f"missing {lst.relative_to(root)} or Images/")
        mat = scipy.io.loadmat(lst)
        files = [_mat_str(f) for f in mat["file_list"]]
        labels = [int(y) - 1 for y in mat["labels"].ravel()]
        folders = sorted(d.name for d in (root / "Images").iterdir() if d.is_dir())
        classes = [f.split("-", 1)[-1].replace("_", " ") for f in folders]
        paths = [str(root / "Images" / f) for f in files]
        paths, labels, classes = limit_classes(paths, labels, classes, max_classes)
        super().__init__(labels, classes, split, root, paths, transform)
