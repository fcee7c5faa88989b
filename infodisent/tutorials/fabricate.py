"""Miniature datasets in the official on-disk layouts, fabricated from the ``parts`` generator.

``fabricate("cub", root)`` writes a small CUB-200-2011 (or Stanford Dogs, Stanford
Cars, ImageNet, or a plain class-per-folder tree) whose images are ``parts``
images: real photographic parts on textures, class ``c`` = the ``c``-th pair of
part types. The loaders read it exactly as they read the real release, so a
tutorial or a reproduction notebook's ``smoke`` profile exercises the real code
path on a machine without the data. The CUB copy also gets
``bounding_boxes.txt`` (the box around both parts) and ``parts/part_locs.txt``
(the centre of each part type's visible mask), so CUB's part metrics work on it.

Example:
    >>> root = fabricate("cub", "data/mini_cub", classes=6)
    >>> build_dataset("cub", root, "train").describe()
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import scipy.io

from ..data.datasets.parts import PartsDataset
from ..errors import InputError
from ..records.data import PartsConfig

LAYOUTS = ("cub", "stanford_dogs", "stanford_cars", "imagenet", "folder")


def _class_names(ds: PartsDataset) -> list[str]:
    return [f"{ds.part_names[a].capitalize()}_and_{ds.part_names[b]}" for a, b in ds.parts_of_class]


def _splits(config: PartsConfig, classes: int) -> dict[str, PartsDataset]:
    return {s: PartsDataset(s, None, classes, config) for s in ("train", "test")}


def fabricate(
    layout: str,
    root: str | Path,
    *,
    classes: int = 6,
    train_per_class: int = 10,
    test_per_class: int = 5,
    image_size: int = 160,
    seed: int = 0,
) -> Path:
    """Write a miniature of ``layout`` (one of :data:`LAYOUTS`) under ``root``; return the folder to pass as
    ``--root``. Deterministic for a seed; an existing complete copy with the same settings is kept as it is,
    one with other settings is replaced, and a non-empty folder that ``fabricate`` did not write is refused.

    Args:
        layout: the on-disk layout written, one of :data:`LAYOUTS`.
        root: the folder written into (a CUB copy goes to ``root/CUB_200_2011``).
        classes: how many classes, 1 to 15 (the ``parts`` generator's pairs of part types). Default 6.
        train_per_class: training images per class. Default 10.
        test_per_class: test images per class. Default 5.
        image_size: the side of the square images, in pixels, at least 32. Default 160.
        seed: the seed of the ``parts`` generator. Default 0."""
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not 1 <= classes <= 15:
        raise InputError(f"the parts generator has 15 classes; asked for {classes}")
    if min(train_per_class, test_per_class) < 1 or image_size < 32:
        raise InputError("fabricate needs at least 1 training and 1 test image per class and image_size >= 32; "
                         f"got {train_per_class}, {test_per_class} and {image_size}")
    root = Path(root)
    config = PartsConfig(image_size=image_size, train_per_class=train_per_class, test_per_class=test_per_class,
                         seed=seed)
    stamp = root / ".fabricated"
    settings = f"{layout} classes={classes} {config}"
    out = root / "CUB_200_2011" if layout == "cub" else root
    if stamp.is_file() and stamp.read_text() == settings:
        return out
    if stamp.is_file():  # another miniature: no file of it may survive into this one
        shutil.rmtree(root)
    elif root.is_dir() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty and was not written by fabricate(); choose an empty folder")
    splits = _splits(config, classes)
    writer = {"cub": _cub, "stanford_dogs": _dogs, "stanford_cars": _cars, "imagenet": _imagenet, "folder": _folder}
    writer[layout](out, splits)
    stamp.write_text(settings)
    return out


def _save(ds: PartsDataset, i: int, path: Path) -> np.ndarray:
    """Write image ``i`` as a JPEG; return its part masks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image, masks = ds.render(i)
    image.save(path, quality=90)
    return masks


def _cub(root: Path, splits: dict[str, PartsDataset]) -> None:
    names = _class_names(splits["train"])
    rows: dict[str, list[str]] = {k: [] for k in ("images", "labels", "split", "boxes", "locs")}
    image_id = 0
    for split, ds in splits.items():
        for i in range(len(ds)):
            image_id += 1
            y = int(ds.labels[i])
            rel = f"{y + 1:03d}.{names[y]}/{names[y]}_{image_id:04d}.jpg"
            masks = _save(ds, i, root / "images" / rel)
            rows["images"].append(f"{image_id} {rel}")
            rows["labels"].append(f"{image_id} {y + 1}")
            rows["split"].append(f"{image_id} {int(split == 'train')}")
            ys, xs = np.nonzero(masks.any(0))
            rows["boxes"].append(f"{image_id} {xs.min():.1f} {ys.min():.1f} {xs.max() - xs.min() + 1:.1f} "
                                 f"{ys.max() - ys.min() + 1:.1f}")
            for p, mask in enumerate(masks):
                py, px = np.nonzero(mask)
                seen = len(px) > 0
                rows["locs"].append(f"{image_id} {p + 1} {px.mean() if seen else 0:.1f} {py.mean() if seen else 0:.1f} "
                                    f"{int(seen)}")
    (root / "parts").mkdir(parents=True, exist_ok=True)
    _lines(root / "images.txt", rows["images"])
    _lines(root / "image_class_labels.txt", rows["labels"])
    _lines(root / "train_test_split.txt", rows["split"])
    _lines(root / "bounding_boxes.txt", rows["boxes"])
    _lines(root / "classes.txt", [f"{c + 1} {c + 1:03d}.{n}" for c, n in enumerate(names)])
    _lines(root / "parts" / "parts.txt", [f"{p + 1} {n}" for p, n in enumerate(splits["train"].part_names)])
    _lines(root / "parts" / "part_locs.txt", rows["locs"])


def _dogs(root: Path, splits: dict[str, PartsDataset]) -> None:
    folders = [f"n9{c:07d}-{n}" for c, n in enumerate(_class_names(splits["train"]))]
    for split, ds in splits.items():
        files, labels = [], []
        for i in range(len(ds)):
            y = int(ds.labels[i])
            rel = f"{folders[y]}/{folders[y].split('-')[0]}_{split}{i:04d}.jpg"
            _save(ds, i, root / "Images" / rel)
            files.append(rel)
            labels.append(y + 1)
        (root / "lists").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / "lists" / f"{split}_list.mat", {
            "file_list": np.array([[np.array([f])] for f in files], dtype=object),
            "labels": np.array([[y] for y in labels]),
        })


def _cars(root: Path, splits: dict[str, PartsDataset]) -> None:
    names = [n.replace("_", " ") for n in _class_names(splits["train"])]
    (root / "devkit").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": np.array([names], dtype=object)})
    for split, ds in splits.items():
        folder = "cars_train" if split == "train" else "cars_test"
        rows = []
        for i in range(len(ds)):
            fname = f"{i + 1:05d}.jpg"
            _save(ds, i, root / folder / fname)
            rows.append((fname, int(ds.labels[i]) + 1))
        annos = np.array(rows, dtype=[("fname", object), ("class", object)])
        target = root / "devkit" / "cars_train_annos.mat" if split == "train" else root / "cars_test_annos_withlabels.mat"
        scipy.io.savemat(target, {"annotations": annos[None, :]})


def _imagenet(root: Path, splits: dict[str, PartsDataset]) -> None:
    # made-up wnids: the classes are not ImageNet's, and the loader says so (imagenet_index -1)
    for split, ds in splits.items():
        for i in range(len(ds)):
            wnid = f"n9{int(ds.labels[i]):07d}"
            _save(ds, i, root / ("train" if split == "train" else "val") / wnid / f"{wnid}_{i:05d}.JPEG")


def _folder(root: Path, splits: dict[str, PartsDataset]) -> None:
    names = _class_names(splits["train"])
    for split, ds in splits.items():
        for i in range(len(ds)):
            _save(ds, i, root / split / names[int(ds.labels[i])] / f"{split}_{i:05d}.jpg")


def _lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


__all__ = ["LAYOUTS", "fabricate"]
