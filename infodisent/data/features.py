"""Feature cache: frozen backbone maps extracted once, stored as fp16 memory-mapped arrays.

One cache entry per (backbone, weights, dataset content, split, transform, views):
``<cache_root>/<key>/`` holds ``features.npy`` (rows × D × H × W, fp16),
``labels.npy``, ``indices.npy`` (dataset index of each row), ``valid.npy``
(False for unreadable images) and ``manifest.json``, written last and
atomically: an entry without it is incomplete. An interrupted extraction
(killed process) resumes from ``progress.json`` (rows finished and flushed,
and a SHA-256 of their bytes); an entry whose metadata does not match, whose
``features.npy`` has the wrong size or whose finished rows fail the checksum
is rebuilt, as is a complete entry with a damaged file (with a warning). A
lock file keeps two processes from writing one entry at once. Under ``torchrun``
every process runs the backbone on its share of the rows and rank 0 writes them.

An entry's values depend, in their last bits, on what computed them (the CPU's
kernels or the GPU, and so on): the manifest records it (``made_with``, one
record per extraction session) rather than keying on it, since results trained
from such entries agree within the tolerances the tests state (see :func:`made_with`).

This module reads the format (:class:`FeatureCache`, :func:`find_cache`);
:mod:`.extract` writes it and :mod:`.loader` runs images through the backbone.

Example:
    >>> cache = extract_features(backbone, dataset, "~/.cache/infodisent")
    >>> for x, y in cache.batches(64, shuffle=True, seed=0): ...
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch

from .. import distributed
from ..core.backbone import Backbone
from ..errors import CorruptFileError
from ..io import read_json, warn
from .datasets.base import ImageDataset

FORMAT_VERSION = 1


def default_cache_root() -> Path:
    """``$INFODISENT_CACHE`` or ``~/.cache/infodisent/features``."""
    env = os.environ.get("INFODISENT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "infodisent" / "features"


def cache_key(backbone: Backbone, dataset: ImageDataset, views: int = 1, seed: int = 0) -> dict[str, Any]:
    """What identifies a cache entry; its hash names the entry's folder.

    Args:
        backbone: the backbone (name, weights, transform and model arguments count).
        dataset: the images (name, content, split and size count).
        views: rows per image. Default 1.
        seed: the seed of the augmented views; part of the key only with more than one view. Default 0."""
    key = {
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
    if backbone.model_kwargs:  # only when given, so that entries made without them keep their key
        key["model_kwargs"] = {k: repr(v) for k, v in sorted(backbone.model_kwargs.items())}
    return key


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _entry(backbone, dataset, cache_root, views: int, seed: int) -> tuple[dict[str, Any], Path]:
    """The key of ``dataset``'s cache entry and its folder under ``cache_root`` (default:
    :func:`default_cache_root`)."""
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
        """A complete entry, checked: :class:`CorruptFileError` names a damaged or missing file
        (``FileNotFoundError`` when there is no manifest, i.e. the entry is incomplete).

        Args:
            path: the entry's folder."""
        path = Path(path)
        try:
            manifest = read_json(path / "manifest.json")
        except CorruptFileError as e:
            raise _corrupt(path, "manifest.json", e.reason) from e
        shape = _manifest_shape(manifest)
        if shape is None or not isinstance(manifest.get("num_images"), int):
            raise _corrupt(path, "manifest.json", "no valid 'shape' or 'num_images'")
        features = _load_array(path, "features.npy", mmap=True)
        if features.shape != shape or features.dtype != np.float16:
            raise _corrupt(path, "features.npy", f"{features.dtype} {features.shape}, the manifest says float16 {shape}")
        arrays = {name: _load_array(path, f"{name}.npy") for name in ("labels", "indices", "valid")}
        for name, a in arrays.items():
            if a.shape != shape[:1]:
                raise _corrupt(path, f"{name}.npy", f"shape {a.shape}, expected ({shape[0]},) for {shape[0]} rows")
        if arrays["valid"].dtype != bool:
            raise _corrupt(path, "valid.npy", f"dtype {arrays['valid'].dtype}, expected bool")
        return cls(path, features, arrays["labels"], arrays["indices"], arrays["valid"], manifest)

    def __len__(self) -> int:
        return int(self.valid.sum())

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.features.shape[1:])  # type: ignore[return-value]

    @property
    def bad_files(self) -> list[dict[str, str]]:
        return list(self.manifest.get("bad_files", []))

    def rows(self, view: int | None = None) -> np.ndarray:
        """Row numbers of valid rows (of one view, if given).

        Args:
            view: only the rows of this view (0: the plain maps). Default None: every view."""
        rows = np.flatnonzero(self.valid)
        if view is not None:
            n = self.manifest["num_images"]
            rows = rows[(rows // n) == view]
        return rows

    def load(self, rows: np.ndarray, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Features (float32) and labels of the given rows.

        Args:
            rows: row numbers, read in sorted order.
            device: where the tensors go. Default ``"cpu"``."""
        rows = np.sort(np.asarray(rows))
        x = torch.from_numpy(np.ascontiguousarray(self.features[rows])).to(device=device, dtype=torch.float32)
        return x, torch.from_numpy(self.labels[rows]).to(device)

    def map_batches(self, batch_size: int, device: torch.device | str = "cpu",
                    shard: "distributed.Shard | None" = None) -> Iterator["MapBatch"]:
        """The plain maps (view 0) of every valid image with their dataset indices, in row order:
        what :func:`stream_feature_maps` yields, read from the cache instead of the backbone
        (with ``shard``: that process's part of every block of ``world x batch_size`` rows).

        Args:
            batch_size: maps per batch (per process under ``torchrun``).
            device: where the maps go. Default ``"cpu"``.
            shard: this process's place among several. Default None: one process, every row."""
        rows, shard = self.rows(view=0), shard or distributed.Shard()
        block = batch_size * shard.world
        for s in range(0, len(rows), block):  # one batch per block on every rank (maybe empty)
            r = shard.take(rows[s : s + block])
            yield MapBatch(self.load(r, device)[0], self.indices[r])

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rows: np.ndarray | None = None,
        device: torch.device | str = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Mini-batches over valid rows; a seeded permutation when shuffling.

        Args:
            batch_size: rows per batch.
            shuffle: visit the rows in a seeded random order. Default False: row order.
            seed: the seed of that order. Default 0.
            rows: the rows to visit. Default None: every valid row.
            device: where the tensors go. Default ``"cpu"``.
        Returns:
            An iterator of ``(features, labels)``, features float32 ``(B, D, H, W)``."""
        rows = self.rows() if rows is None else np.asarray(rows)
        if shuffle:
            rows = rows[np.random.default_rng(seed).permutation(len(rows))]
        for s in range(0, len(rows), batch_size):
            yield self.load(rows[s : s + batch_size], device)


def _corrupt(entry: Path, name: str, reason: str) -> CorruptFileError:
    return CorruptFileError(
        entry / name, reason, f"Feature cache entry {entry}: extract again to rebuild it, or delete that folder."
    )


def _manifest_shape(manifest: Any) -> tuple[int, ...] | None:
    shape = manifest.get("shape") if isinstance(manifest, dict) else None
    ok = isinstance(shape, list) and len(shape) == 4 and all(isinstance(n, int) and n >= 0 for n in shape)
    return tuple(shape) if ok else None


def _load_array(entry: Path, name: str, mmap: bool = False) -> np.ndarray:
    """One ``.npy`` file of a complete entry; a missing or unreadable one is a :class:`CorruptFileError`."""
    if not (entry / name).is_file():
        raise _corrupt(entry, name, "file missing")
    try:
        return np.load(entry / name, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as e:  # truncated: "mmap length is greater than file size", ...
        raise _corrupt(entry, name, f"{type(e).__name__}: {e}") from e


class MapBatch(NamedTuple):
    """One batch of :func:`stream_feature_maps`."""

    maps: torch.Tensor  # (B, D, H, W) float32
    indices: np.ndarray  # (B,) dataset index of each map


def find_cache(
    backbone: Backbone, dataset: ImageDataset, cache_root: str | os.PathLike | None = None, views: int = 1, seed: int = 0
) -> FeatureCache | None:
    """The complete cache entry for ``dataset`` if one exists and is intact (nothing is extracted).

    Args:
        backbone: the backbone whose maps are looked for.
        dataset: the images.
        cache_root: the folder holding the cache entries. Default None: :func:`default_cache_root`.
        views: rows per image of the entry. Default 1.
        seed: the seed of its augmented views. Default 0.
    Returns:
        The entry, or None when there is none or it is damaged (then with a warning)."""
    _, path = _entry(backbone, dataset, cache_root, views, seed)
    return _open_complete(path, "ignoring it")


def _open_complete(path: Path, action: str) -> FeatureCache | None:
    """The complete entry at ``path``; None if there is none, or (with a warning) if it is damaged."""
    if not (path / "manifest.json").is_file():
        return None
    try:
        return FeatureCache.open(path)
    except CorruptFileError as e:
        warn(f"feature cache entry {path} is damaged ({e.path.name}: {e.reason}); {action}")
        return None


__all__ = ["FORMAT_VERSION", "FeatureCache", "MapBatch", "cache_key", "default_cache_root", "find_cache"]
