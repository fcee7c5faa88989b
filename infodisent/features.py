"""Feature cache: frozen backbone maps extracted once, stored as fp16 memory-mapped arrays.

One cache entry per (backbone, weights, dataset content, split, transform, views):
``<cache_root>/<key>/`` holds ``features.npy`` (rows × D × H × W, fp16),
``labels.npy``, ``indices.npy`` (dataset index of each row), ``valid.npy``
(False for unreadable images) and ``manifest.json``, written last and
atomically: an entry without it is incomplete. An interrupted extraction
(killed process) resumes from ``progress.json`` (rows finished and flushed);
an entry whose metadata does not match is rebuilt. A lock file keeps two
processes from writing one entry at once.

Example:
    >>> cache = extract_features(backbone, dataset, "~/.cache/infodisent")
    >>> for x, y in cache.batches(64, shuffle=True, seed=0): ...
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbone import Backbone
from .datasets.base import ImageDataset, ImageReadError
from .io import atomic_save_npy, atomic_write_json, read_json

FORMAT_VERSION = 1


def default_cache_root() -> Path:
    """``$INFODISENT_CACHE`` or ``~/.cache/infodisent/features``."""
    env = os.environ.get("INFODISENT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "infodisent" / "features"


def cache_key(backbone: Backbone, dataset: ImageDataset, views: int = 1, seed: int = 0) -> dict[str, Any]:
    """What identifies a cache entry; its hash names the entry's folder."""
    return {
        "format": FORMAT_VERSION,
        "backbone": backbone.name,
        "weights": backbone.weights.cache_id,
        "transform": backbone.transform_id,
        "dataset": dataset.name,
        "content": dataset.describe(),
        "split": dataset.split,
        "num_images": len(dataset),
        "views": views,
        "augment_seed": seed if views > 1 else None,
    }


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _entry(backbone, dataset, cache_root, views: int, seed: int) -> tuple[dict[str, Any], Path]:
    """The key of ``dataset``'s cache entry and its folder under ``cache_root`` (default: :func:`default_cache_root`)."""
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    key = cache_key(backbone, dataset, views, seed)
    return key, root / _key_hash(key)


@dataclass
class FeatureCache:
    """A complete cache entry, memory-mapped."""

    path: Path
    features: np.ndarray  # (rows, D, H, W) float16, memory-mapped
    labels: np.ndarray  # (rows,)
    indices: np.ndarray  # (rows,) dataset index
    valid: np.ndarray  # (rows,) bool
    manifest: dict[str, Any] = field(default_factory=dict)
    extracted: bool = False  # True when this call ran the backbone (not a reuse)

    @classmethod
    def open(cls, path: Path) -> "FeatureCache":
        manifest = read_json(path / "manifest.json")
        return cls(
            path,
            np.load(path / "features.npy", mmap_mode="r"),
            np.load(path / "labels.npy"),
            np.load(path / "indices.npy"),
            np.load(path / "valid.npy"),
            manifest,
        )

    def __len__(self) -> int:
        return int(self.valid.sum())

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.features.shape[1:])  # type: ignore[return-value]

    @property
    def bad_files(self) -> list[dict[str, str]]:
        return list(self.manifest.get("bad_files", []))

    def rows(self, view: int | None = None) -> np.ndarray:
        """Row numbers of valid rows (of one view, if given)."""
        rows = np.flatnonzero(self.valid)
        if view is not None:
            n = self.manifest["num_images"]
            rows = rows[(rows // n) == view]
        return rows

    def load(self, rows: np.ndarray, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Features (float32) and labels of the given rows."""
        rows = np.sort(np.asarray(rows))
        x = torch.from_numpy(np.ascontiguousarray(self.features[rows])).to(device=device, dtype=torch.float32)
        return x, torch.from_numpy(self.labels[rows]).to(device)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rows: np.ndarray | None = None,
        device: torch.device | str = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Mini-batches over valid rows; a seeded permutation when shuffling."""
        rows = self.rows() if rows is None else np.asarray(rows)
        if shuffle:
            rows = rows[np.random.default_rng(seed).permutation(len(rows))]
        for s in range(0, len(rows), batch_size):
            yield self.load(rows[s : s + batch_size], device)

    def pooled(self, rows: np.ndarray | None = None, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """Globally average-pooled features ``(N, D)`` (the linear probe's input) and labels."""
        rows = self.rows(view=0) if rows is None else np.asarray(rows)
        out = [
            torch.from_numpy(self.features[np.sort(rows[s : s + chunk])].astype(np.float32)).mean(dim=(2, 3))
            for s in range(0, len(rows), chunk)
        ]
        x = torch.cat(out) if out else torch.zeros(0, self.shape[0])
        return x, torch.from_numpy(self.labels[np.sort(rows)])


class _Views(torch.utils.data.Dataset):
    """Row ``r`` = view ``r // N`` of image ``r % N``; view 0 uses the evaluation transform,
    later views timm's training augmentation, seeded per (seed, row)."""

    def __init__(self, dataset: ImageDataset, views: int, eval_tf: Callable, aug_tf: Callable | None, seed: int, strict: bool):
        self.dataset, self.views, self.eval_tf, self.aug_tf, self.seed, self.strict = (
            dataset, views, eval_tf, aug_tf, seed, strict,
        )
        self._shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.dataset) * self.views

    def __getitem__(self, r: int):
        view, i = divmod(r, len(self.dataset))
        label = int(self.dataset.labels[i])
        try:
            img = self.dataset.load_image(i)
        except ImageReadError as e:
            if self.strict:
                raise
            return None, label, r, f"{e.path}: {e.reason}"
        if view == 0:
            x = self.eval_tf(img)
        else:
            with _seeded(self.seed * 1_000_003 + r):
                x = self.aug_tf(img)
        return x, label, r, ""


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's and Python's generators (timm's transforms use both), restoring them after."""
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)


def _collate(items):
    good = [it for it in items if it[0] is not None]
    x = torch.stack([it[0] for it in good]) if good else None
    return x, [it[2] for it in good], [(it[2], it[3]) for it in items if it[0] is None]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def extract_features(
    backbone: Backbone,
    dataset: ImageDataset,
    cache_root: str | os.PathLike | None = None,
    *,
    views: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int = 0,
    strict: bool = False,
    progress: bool = True,
    device: str | torch.device = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> FeatureCache:
    """Extract (or reuse) the frozen feature maps of ``dataset``.

    Unreadable images are skipped with a warning and listed in the manifest's
    ``bad_files`` (``strict=True`` raises :class:`ImageReadError` instead).
    ``on_batch(rows_done)`` is called after each batch is flushed (for tests
    and progress hooks).
    """
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    key, path = _entry(backbone, dataset, cache_root, views, seed)
    with _locked(path.parent / f"{path.name}.lock"):
        if (path / "manifest.json").is_file():
            cache = FeatureCache.open(path)
            if strict and cache.bad_files:
                raise ImageReadError(cache.bad_files[0]["path"], cache.bad_files[0]["reason"])
            return cache
        return _extract(backbone, dataset, path, key, views, seed, batch_size, num_workers, strict, progress, device, on_batch)


def find_cache(
    backbone: Backbone, dataset: ImageDataset, cache_root: str | os.PathLike | None = None, views: int = 1, seed: int = 0
) -> FeatureCache | None:
    """The complete cache entry for ``dataset`` if one exists (nothing is extracted)."""
    _, path = _entry(backbone, dataset, cache_root, views, seed)
    return FeatureCache.open(path) if (path / "manifest.json").is_file() else None


def _extract(backbone, dataset, path, key, views, seed, batch_size, num_workers, strict, progress, device, on_batch):
    d, h, w = backbone.feature_shape()
    n_rows = len(dataset) * views
    meta = {"key": key, "shape": [n_rows, d, h, w], "dtype": "float16"}
    path.mkdir(parents=True, exist_ok=True)
    done, bad = 0, []
    resumable = (
        (path / "meta.json").is_file() and read_json(path / "meta.json") == meta
        and (path / "features.npy").is_file() and (path / "progress.json").is_file()
    )
    if resumable:
        state = read_json(path / "progress.json")
        done, bad = int(state["rows_done"]), list(state["bad"])
        feats = np.load(path / "features.npy", mmap_mode="r+")
        valid = np.load(path / "valid_partial.npy") if (path / "valid_partial.npy").is_file() else np.ones(n_rows, bool)
    else:
        for f in path.iterdir():
            f.unlink()
        atomic_write_json(path / "meta.json", meta)
        feats = np.lib.format.open_memmap(path / "features.npy", mode="w+", dtype=np.float16, shape=(n_rows, d, h, w))
        valid = np.ones(n_rows, bool)
    rows_ds = _Views(dataset, views, backbone.transform, backbone.train_transform() if views > 1 else None, seed, strict)
    todo = torch.utils.data.Subset(rows_ds, range(done, n_rows))
    loader = torch.utils.data.DataLoader(
        todo, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate, shuffle=False
    )
    backbone.to(device)
    t0 = time.perf_counter()
    bar = tqdm(total=n_rows, initial=done, desc=f"features {dataset.name}/{dataset.split}", unit="img", disable=not progress)
    for x, rows, failed in loader:
        for r, reason in failed:
            valid[r] = False
            bad.append({"row": r, "path": reason.split(": ", 1)[0], "reason": reason.split(": ", 1)[-1]})
            warnings.warn(f"skipping unreadable image {reason}", stacklevel=2)
        if x is not None:
            with torch.inference_mode():
                f = backbone(x.to(device))
            feats[rows] = f.to("cpu", torch.float16).numpy()
        done += len(rows) + len(failed)
        feats.flush()
        atomic_save_npy(path / "valid_partial.npy", valid)
        atomic_write_json(path / "progress.json", {"rows_done": done, "bad": bad})
        bar.update(len(rows) + len(failed))
        if on_batch is not None:
            on_batch(done)
    bar.close()
    n = len(dataset)
    labels = np.tile(dataset.labels, views)
    indices = np.tile(np.arange(n), views)
    atomic_save_npy(path / "labels.npy", labels)
    atomic_save_npy(path / "indices.npy", indices)
    atomic_save_npy(path / "valid.npy", valid)
    del feats
    manifest = {
        **meta,
        "num_images": n,
        "classes": dataset.classes,
        "bad_files": bad,
        "seconds": round(time.perf_counter() - t0, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_json(path / "manifest.json", manifest)
    for f in ("progress.json", "valid_partial.npy"):
        (path / f).unlink(missing_ok=True)
    cache = FeatureCache.open(path)
    cache.extracted = True
    return cache
