"""A generic folder-per-class dataset: ``root/{train,test}/<class>/*`` or ``root/<class>/*``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DatasetLayoutError, ImageDataset, limit_classes, scan_class_folders

LAYOUT = """\
  ROOT/train/<class name>/<image>      and  ROOT/test/<class name>/<image>  (or ROOT/val/...)
  or, without split folders, ROOT/<class name>/<image>: a fixed stratified split
  (test_fraction of each class, chosen by seed) is made for you."""

_TEST_NAMES = ("test", "val", "valid", "validation")


class ImageFolderDataset(ImageDataset):
    """Folder-per-class images. Class order: sorted folder names (the train split's).

    Args:
        root: the folder holding ``train/`` and ``test/`` (or ``val/``), or the class folders themselves.
        split: ``"train"``; any other split reads the test folder, or the held-out part of a root without
            split folders. Default ``"train"``.
        transform: applied to each image. Default None: the PIL image as read.
        max_classes: keep only the first this many classes. Default None: all.
        test_fraction: without split folders, the share of each class's images that forms the test split.
            Default 0.2.
        seed: without split folders, the seed of that split. Default 0.
        layout: the expected layout, shown when the root does not have it. Default this module's
            ``LAYOUT``."""

    name = "folder"

    def __init__(
        self,
        root: Path | str,
        split: str = "train",
        transform=None,
        max_classes: int | None = None,
        test_fraction: float = 0.2,
        seed: int = 0,
        layout: str = LAYOUT,
    ):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetLayoutError(self.name, root, layout, "the root folder does not exist")
        train_dir = root / "train"
        test_dir = next((root / n for n in _TEST_NAMES if (root / n).is_dir()), None)
        if train_dir.is_dir():
            if split == "train":
                folder = train_dir
            elif test_dir is not None:
                folder = test_dir
            else:
                raise DatasetLayoutError(self.name, root, layout, "train/ has no test/ (or val/) beside it")
            classes = scan_class_folders(train_dir)[2]
            paths, labels, found = scan_class_folders(folder)
            index = {c: i for i, c in enumerate(classes)}
            extra = sorted(set(found) - set(index))
            if extra:
                raise DatasetLayoutError(
                    self.name, root, layout, f"{folder.name}/ has classes missing from train/: {extra[:5]}"
                )
            labels = [index[found[y]] for y in labels]
        else:
            paths, labels, classes = scan_class_folders(root)
            paths, labels = _stratified_split(paths, labels, split, test_fraction, seed)
        if not classes or not paths:
            raise DatasetLayoutError(self.name, root, layout, f"no class folders with images for split {split!r}")
        paths, labels, classes = limit_classes(paths, labels, classes, max_classes)
        super().__init__(labels, classes, split, root, paths, transform)


def _stratified_split(paths: list[str], labels: list[int], split: str, test_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    chosen = []
    for y in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == y)
        idx = idx[rng.permutation(len(idx))]
        n_test = max(1, int(round(len(idx) * test_fraction))) if len(idx) > 1 else 0
        chosen.extend(idx[:n_test] if split != "train" else idx[n_test:])
    chosen = sorted(chosen)
    return [paths[i] for i in chosen], [labels[i] for i in chosen]
