"""CUB-200-2011 in its official layout, with bounding boxes and part locations."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .base import DatasetLayoutError, ImageDataset, limit_classes

LAYOUT = """\
  CUB_200_2011/                 (pass this folder or its parent as --root)
    images.txt                  <image_id> <relative path>
    image_class_labels.txt      <image_id> <class_id>
    train_test_split.txt        <image_id> <1 = train, 0 = test>
    classes.txt                 <class_id> <class name>
    bounding_boxes.txt          <image_id> <x> <y> <width> <height>   (optional)
    parts/parts.txt, parts/part_locs.txt                              (optional)
    images/<NNN.Class_Name>/<file>.jpg"""

_REQUIRED = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def find_root(root: Path) -> Path:
    """The ``CUB_200_2011`` folder: ``root`` itself or its child of that name; a
    :class:`DatasetLayoutError` when neither has the official files.

    Args:
        root: the folder given as the dataset's root."""
    root = Path(root).expanduser()
    for cand in (root, root / "CUB_200_2011"):
        if all((cand / f).is_file() for f in _REQUIRED) and (cand / "images").is_dir():
            return cand
    missing = [f for f in _REQUIRED if not (root / f).is_file()]
    raise DatasetLayoutError("cub", root, LAYOUT, f"missing {', '.join(missing) or 'images/'}")


def _table(path: Path, names: list[str]) -> pd.DataFrame:
    return pd.read_csv(path, sep=r"\s+", header=None, names=names, engine="python")


class CUB200(ImageDataset):
    """CUB-200-2011. ``boxes`` and ``part_locs`` are DataFrames indexed like the dataset
    (pixel coordinates of the files on disk); ``image_ids`` are the official ids.

    Args:
        root: the ``CUB_200_2011`` folder or its parent.
        split: ``"train"``; any other split reads the official test images. Default ``"train"``.
        transform: applied to each image. Default None: the PIL image as read.
        max_classes: keep only the first this many classes. Default None: all 200."""

    name = "cub"

    def __init__(self, root: Path | str, split: str = "train", transform=None, max_classes: int | None = None):
        root = find_root(Path(root))
        images = _table(root / "images.txt", ["image_id", "path"])
        labels = _table(root / "image_class_labels.txt", ["image_id", "class_id"])
        split_tab = _table(root / "train_test_split.txt", ["image_id", "is_train"])
        classes = pd.read_csv(root / "classes.txt", sep=" ", header=None, names=["class_id", "name"])
        df = images.merge(labels, on="image_id").merge(split_tab, on="image_id")
        df = df[df["is_train"] == (1 if split == "train" else 0)].sort_values("image_id")
        class_ids = sorted(classes["class_id"])
        index_of = {cid: i for i, cid in enumerate(class_ids)}
        names = [classes.set_index("class_id").loc[c, "name"].split(".", 1)[-1] for c in class_ids]
        unknown = set(df["class_id"]) - set(index_of)
        if unknown:
            raise DatasetLayoutError("cub", root, LAYOUT, f"class ids {sorted(unknown)[:5]} not in classes.txt")
        paths = [str(root / "images" / p) for p in df["path"]]
        ys = [index_of[c] for c in df["class_id"]]
        ids = list(df["image_id"])
        keep_paths, ys, names = limit_classes(paths, ys, names, max_classes)
        keep = set(keep_paths)
        self.image_ids = [i for i, p in zip(ids, paths) if p in keep]
        super().__init__(ys, names, split, root, keep_paths, transform)
        self.boxes = self._boxes(root)
        self.part_names, self.part_locs = self._parts(root)

    def _boxes(self, root: Path) -> pd.DataFrame | None:
        f = root / "bounding_boxes.txt"
        if not f.is_file():
            return None
        b = _table(f, ["image_id", "x", "y", "width", "height"]).set_index("image_id")
        return b.loc[self.image_ids].reset_index()

    def _parts(self, root: Path) -> tuple[list[str] | None, pd.DataFrame | None]:
        pf, lf = root / "parts" / "parts.txt", root / "parts" / "part_locs.txt"
        if not (pf.is_file() and lf.is_file()):
            return None, None
        names = [line.split(" ", 1)[1].strip() for line in pf.read_text().splitlines() if line.strip()]
        locs = _table(lf, ["image_id", "part_id", "x", "y", "visible"])
        pos = {iid: i for i, iid in enumerate(self.image_ids)}
        locs = locs[locs["image_id"].isin(pos)].copy()
        locs.insert(0, "index", locs["image_id"].map(pos))
        return names, locs.sort_values(["index", "part_id"]).reset_index(drop=True)
