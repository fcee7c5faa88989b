"""ImageNet (and subsets such as Imagenette): ``train/<wnid>/*`` and ``val/<wnid>/*``."""

from __future__ import annotations

from pathlib import Path

from timm.data import ImageNetInfo

from .base import DatasetLayoutError
from .folder import ImageFolderDataset

LAYOUT = """\
  ROOT/train/<wnid>/<image>.JPEG     e.g. train/n01440764/n01440764_10026.JPEG
  ROOT/val/<wnid>/<image>.JPEG       validation images sorted into wnid folders
  (--split test reads val/). Sorted wnids give the class order."""


class ImageNet(ImageFolderDataset):
    """ImageNet-style folders. ``imagenet_index[c]`` maps class ``c`` to its index among
    the 1000 ImageNet-1k classes (for checking a backbone's own classifier), and class
    names are WordNet descriptions where the wnid is known.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        split: ``"train"``; any other split reads ``val/``. Default ``"train"``.
        transform: applied to each image. Default None: the PIL image as read.
        max_classes: keep only the first this many classes (sorted wnids). Default None: all."""

    name = "imagenet"

    def __init__(self, root: Path | str, split: str = "train", transform=None, max_classes: int | None = None):
        root = Path(root).expanduser()
        if not (root / "train").is_dir() or not (root / "val").is_dir():
            raise DatasetLayoutError(self.name, root, LAYOUT, "train/ and val/ folders are required")
        super().__init__(root, "train" if split == "train" else "val", transform, max_classes, layout=LAYOUT)
        self.split = split
        info = ImageNetInfo()
        names = list(info.label_names())
        self.wnids = list(self.classes)
        self.imagenet_index = [names.index(w) if w in names else -1 for w in self.wnids]
        self.classes = [info.label_name_to_description(w) if w in names else w for w in self.wnids]
