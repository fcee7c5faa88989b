"""The common image-dataset type: samples, class names, robust image reading."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ...errors import InfodisentError, InputError


class DatasetLayoutError(InfodisentError, FileNotFoundError):
    """A dataset root that does not have the expected on-disk layout.

    Args:
        dataset: the dataset's name.
        root: the folder that was given.
        layout: a description of the expected layout, shown in the message.
        problem: what is wrong, e.g. ``"missing classes.txt"``."""

    def __init__(self, dataset: str, root: Path | str, layout: str, problem: str):
        self.dataset, self.root, self.layout = dataset, Path(root), layout
        super().__init__(f"{dataset}: {problem} under {root}.\nExpected layout:\n{layout}")


class ImageReadError(InfodisentError, OSError):
    """An image file that cannot be decoded (corrupt, truncated, not an image).

    Args:
        path: the image file.
        reason: why it cannot be read."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"cannot read image {path}: {reason}")


class SkippedImageWarning(UserWarning):
    """An unreadable image left out of feature extraction (listed in the cache's ``bad_files``)."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: greyscale, CMYK, 16-bit, palette and alpha images
    (transparent areas composited onto white).

    Args:
        img: an image in any mode; returned as is when it is RGB already."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def read_image(path: str | Path) -> Image.Image:
    """Decode an image file fully and return it as RGB; :class:`ImageReadError` names the path.

    Args:
        path: the image file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImageReadError(str(path), _read_failure(e)) from e
    if not data:
        raise ImageReadError(str(path), "empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise ImageReadError(str(path), _read_failure(e)) from e
    return to_rgb(img)


_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


def _read_failure(e: Exception) -> str:
    """Why an image could not be read, without Python object reprs such as ``<_io.BytesIO at 0x…>``."""
    if isinstance(e, UnidentifiedImageError):
        return "not a recognised image format"
    if isinstance(e, OSError) and e.strerror and e.filename:  # the path is named already
        return e.strerror
    text = _OBJECT_REPR.sub("", str(e)).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class ImageDataset(torch.utils.data.Dataset):
    """Images with integer labels and class names.

    Subclasses provide ``load_image(i)`` (a PIL RGB image) and ``labels``;
    file-based datasets also ``paths``. ``dataset[i]`` applies ``transform``
    and returns ``(image, label, i)``.

    Args:
        labels: each sample's class index.
        classes: the class names, in label order.
        split: the split the samples come from, ``"train"`` or ``"test"``.
        root: the folder the files live under (paths below it are keyed relative to it). Default None.
        paths: each sample's image file. Default None: a dataset without files, which overrides
            ``load_image``.
        transform: applied to each image in ``dataset[i]``. Default None: the PIL image as read.
    """

    name: str = "images"

    def __init__(
        self,
        labels: Sequence[int],
        classes: Sequence[str],
        split: str,
        root: Path | str | None = None,
        paths: Sequence[str] | None = None,
        transform: Callable | None = None,
    ):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.split = split
        self.root = Path(root) if root is not None else None
        self.paths = list(paths) if paths is not None else None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load_image(self, i: int) -> Image.Image:
        """Sample ``i``'s image as RGB, before ``transform``.

        Args:
            i: the sample's index."""
        if self.paths is None:
            raise NotImplementedError(f"{type(self).__name__} has no files; it must override load_image")
        return read_image(self.paths[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        img = self.load_image(i)
        x = self.transform(img) if self.transform is not None else img
        return x, int(self.labels[i]), i

    def describe(self) -> str:
        """What identifies this dataset's content, for feature-cache keys."""
        h = hashlib.sha256()
        h.update(f"{self.name}|{self.split}|{self.classes}".encode())
        if self.paths is not None:
            for p, y in zip(self.paths, self.labels):
                rel = str(Path(p).relative_to(self.root)) if self.root and Path(p).is_relative_to(self.root) else p
                size = Path(p).stat().st_size if Path(p).exists() else -1
                h.update(f"{rel}|{y}|{size}\n".encode())
        return h.hexdigest()[:16]


def limit_classes(
    paths: list[str], labels: list[int], classes: list[str], max_classes: int | None
) -> tuple[list[str], list[int], list[str]]:
    """Keep the first ``max_classes`` classes (in the dataset's own order).

    Args:
        paths: each sample's image file.
        labels: each sample's class index.
        classes: the class names, in label order.
        max_classes: how many classes to keep; None or at least ``len(classes)`` keeps all.
    Returns:
        ``(paths, labels, classes)`` of the kept samples and classes."""
    if max_classes is None or max_classes >= len(classes):
        return paths, labels, classes
    if max_classes < 1:
        raise InputError(f"max_classes must be >= 1, got {max_classes}")
    keep = [(p, y) for p, y in zip(paths, labels) if y < max_classes]
    return [p for p, _ in keep], [y for _, y in keep], classes[:max_classes]


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def scan_class_folders(folder: Path) -> tuple[list[str], list[int], list[str]]:
    """``folder/<class>/<image>`` → paths, labels, sorted class names. Hidden entries are ignored.

    Args:
        folder: the folder holding one subfolder per class."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for y, c in enumerate(classes):
        for f in sorted((folder / c).rglob("*")):
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(str(f))
                labels.append(y)
    return paths, labels, classes
