"""Images through the frozen backbone: the rows of a feature-cache entry (view ``r // N`` of image
``r % N``, later views augmented with a per-row seed) and :func:`stream_feature_maps`, which yields the maps
of a dataset batch by batch without caching them. An unreadable image never raises inside a loader worker:
it is skipped with a warning, or raised as :class:`~infodisent.data.datasets.ImageReadError` by the
consuming loop when ``strict``."""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch

from .. import distributed
from ..core.backbone import Backbone
from ..io import warn
from ..records.data import DatasetSpec
from .datasets import from_spec
from .datasets.base import ImageDataset, ImageReadError, SkippedImageWarning
from .features import MapBatch


class _Unreadable(str):
    """``"path: reason"`` for an image that could not be read, keeping both parts."""

    def __new__(cls, path: str, reason: str) -> "_Unreadable":
        self = super().__new__(cls, f"{path}: {reason}")
        self.path, self.reason = path, reason
        return self

    def __reduce__(self):
        return (_Unreadable, (self.path, self.reason))


class _Views(torch.utils.data.Dataset):
    """Row ``r`` = view ``r // N`` of image ``r % N``; view 0 uses the evaluation transform,
    later views timm's training augmentation, seeded per (seed, row).

    An unreadable image gives the item ``(None, label, r, _Unreadable)``; this
    never raises, so that with loader workers ``strict`` is handled by the
    consuming loop (see :func:`_skip_or_raise`) and the user sees
    :class:`ImageReadError`, not torch's worker wrapper around it."""

    def __init__(self, dataset: ImageDataset, views: int, eval_tf: Callable, aug_tf: Callable | None, seed: int):
        self.dataset, self.views, self.eval_tf, self.aug_tf, self.seed = dataset, views, eval_tf, aug_tf, seed

    def __len__(self) -> int:
        return len(self.dataset) * self.views

    def __getitem__(self, r: int):
        view, i = divmod(r, len(self.dataset))
        label = int(self.dataset.labels[i])
        try:
            img = self.dataset.load_image(i)
        except ImageReadError as e:
            return None, label, r, _Unreadable(e.path, e.reason)
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


def _skip_or_raise(failure: _Unreadable, strict: bool) -> None:
    """Raise :class:`ImageReadError` for an unreadable image when ``strict``, else warn that it is skipped."""
    if strict:
        raise ImageReadError(failure.path, failure.reason)
    warn(f"skipping unreadable image {failure}", SkippedImageWarning)


def stream_feature_maps(
    backbone: Backbone,
    dataset: ImageDataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    strict: bool = False,
    device: str | torch.device = "cpu",
    skipped: list[str] | None = None,
    shard: distributed.Shard | None = None,
) -> Iterator[MapBatch]:
    """Backbone maps of ``dataset`` (evaluation transform) batch by batch, without caching them
    (with ``shard``: only that process's rows).

    Unreadable images are skipped with a :class:`SkippedImageWarning` and appended
    to ``skipped`` as ``"path: reason"`` (``strict=True`` raises :class:`ImageReadError`).

    Args:
        backbone: the frozen backbone; its evaluation transform is applied to the images.
        dataset: the images.
        batch_size: images per batch (per process under ``torchrun``). Default 64.
        num_workers: image-loading processes. Default 0: load in this process.
        strict: an unreadable image is an error instead of a skipped one. Default False.
        device: where the backbone runs and the maps stay. Default ``"cpu"``.
        skipped: a list that collects ``"path: reason"`` of each skipped image. Default None.
        shard: this process's place among several. Default None: one process, every image.
    Returns:
        An iterator of :class:`MapBatch`: float32 maps and the dataset indices of their images.
    """
    views = _Views(dataset, 1, backbone.transform, None, 0)
    shard = shard or distributed.Shard()
    # this rank's part g[rank::world] of every block g of world x batch_size images (one process: the batches)
    sampler = distributed.ShardedBatchSampler(len(dataset), batch_size * shard.world, False, 0, shard)
    loader = torch.utils.data.DataLoader(views, batch_sampler=sampler, num_workers=num_workers, collate_fn=_collate)
    for x, rows, failed in loader:
        for _, failure in failed:
            _skip_or_raise(failure, strict)
            if skipped is not None:
                skipped.append(str(failure))
        if x is not None:
            with torch.inference_mode():
                f = backbone(x.to(device))
            yield MapBatch(f.float(), np.asarray(rows))
        elif shard.active:  # every rank yields once per block
            yield MapBatch(torch.zeros(0), np.zeros(0, np.int64))


def _maps(backbone: Backbone, x: torch.Tensor | None, device) -> np.ndarray | None:
    """Backbone maps of a batch as float16 on the CPU (None for a batch of unreadable images only)."""
    if x is None:
        return None
    with torch.inference_mode():
        return backbone(x.to(device)).to("cpu", torch.float16).numpy()


def image_batches(backbone: Backbone, dataset: ImageDataset, batch_size: int = 64, num_workers: int = 0,
                  device: str | torch.device = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` batches of ``dataset`` in the backbone's view, the images on ``device``: one pass
    for what the cached maps cannot give (the black box of a classifier that does not read them).

    Args:
        backbone: the backbone whose evaluation transform is applied.
        dataset: the images, reopened from their recipe with that transform.
        batch_size: images per batch. Default 64.
        num_workers: image-loading processes. Default 0: load in this process.
        device: where the images go. Default ``"cpu"``."""
    ds = from_spec(DatasetSpec.of(dataset), backbone.transform)
    for x, y, _ in torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=num_workers):
        yield x.to(device), y



__all__ = ["image_batches", "stream_feature_maps"]
