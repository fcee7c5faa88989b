"""Stanford Cars: the devkit ``.mat`` annotations, or a folder-per-class export."""

from __future__ import annotations

from pathlib import Path

import scipy.io

from .base import DatasetLayoutError, ImageDataset, limit_classes
from .folder import ImageFolderDataset

LAYOUT = """\
  Devkit layout:
    ROOT/devkit/cars_meta.mat            (class_names)
    ROOT/devkit/cars_train_annos.mat     (fname, class: 1-based)
    ROOT/cars_test_annos_withlabels.mat  (or devkit/cars_test_annos_withlabels.mat)
    ROOT/cars_train/<fname>.jpg, ROOT/cars_test/<fname>.jpg
  or the common export: ROOT/train/<class name>/*.jpg and ROOT/test/<class name>/*.jpg"""


def _annos(path: Path) -> tuple[list[str], list[int]]:
    rec = scipy.io.loadmat(path, squeeze_me=True)["annotations"]
    return [str(f) for f in rec["fname"]], [int(c) - 1 for c in rec["class"]]


def stanford_cars(root: Path | str, split: str = "train", transform=None, max_classes: int | None = None) -> ImageDataset:
    """Stanford Cars from the devkit layout, or from a folder-per-class export.

    Args:
        root: the dataset's folder.
        split: ``"train"`` or ``"test"``. Default ``"train"``.
        transform: applied to each image. Default None: the PIL image as read.
        max_classes: keep only the first this many classes. Default None: all 196."""
    root = Path(root).expanduser()
    if not (root / "devkit").is_dir() and (root / "train").is_dir():
        ds = ImageFolderDataset(root, split, transform, max_classes, layout=LAYOUT)
        ds.name = StanfordCars.name
        return ds
    return StanfordCars(root, split, transform, max_classes)


class StanfordCars(ImageDataset):
    """Stanford Cars, 196 models, from the devkit's annotations.

    Args:
        root: the folder holding ``devkit/``, ``cars_train/`` and ``cars_test/``.
        split: ``"train"``; any other split reads the test images. Default ``"train"``.
        transform: applied to each image. Default None: the PIL image as read.
        max_classes: keep only the first this many classes. Default None: all 196."""

    name = "stanford_cars"

    def __init__(self, root: Path | str, split: str = "train", transform=None, max_classes: int | None = None):
        root = Path(root).expanduser()
        meta = root / "devkit" / "cars_meta.mat"
        if split == "train":
            annos, folder = root / "devkit" / "cars_train_annos.mat", root / "cars_train"
        else:
            folder = root / "cars_test"
            annos = next(
                (p for p in (root / "cars_test_annos_withlabels.mat", root / "devkit" / "cars_test_annos_withlabels.mat")
                 if p.is_file()),
                root / "cars_test_annos_withlabels.mat",
            )
        for need in (meta, annos, folder):
            if not need.exists():
                raise DatasetLayoutError(self.name, root, LAYOUT, f"missing {need.relative_to(root)}")
        classes = [str(c) for c in scipy.io.loadmat(meta, squeeze_me=True)["class_names"]]
        files, labels = _annos(annos)
        paths = [str(folder / f) for f in files]
        paths, labels, classes = limit_classes(paths, labels, classes, max_classes)
        super().__init__(labels, classes, split, root, paths, transform)
