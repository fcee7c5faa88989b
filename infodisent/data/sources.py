"""Where a head's training reads its features: mini-batches of backbone feature maps and labels.

A :class:`FeatureSource` is anything with ``batches(epoch)``: cached maps (:class:`CachedSource`, the
fast path, read from a :class:`~infodisent.data.features.FeatureCache`) or images streamed through the
frozen backbone on every pass (:class:`StreamingSource`, for datasets too large to cache).
:func:`holdout_split` holds a seeded share of each class out (the images that choose K). Under
``torchrun`` both sources give each process its part of every global batch
(:mod:`infodisent.distributed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np
import torch

from .. import distributed
from ..core.backbone import Backbone
from ..errors import InputError
from .datasets.base import ImageDataset
from .features import FeatureCache


class FeatureSource(Protocol):
    """Mini-batches of backbone feature maps and labels."""

    def __len__(self) -> int: ...

    def batches(self, epoch: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass; shuffled with a seed derived from ``epoch`` when it is not None.

        Args:
            epoch: the epoch the pass belongs to, or None for the rows in order."""
        ...


@dataclass
class CachedSource:
    """Batches read from a :class:`FeatureCache` (all views of every valid image).

    Args:
        cache: the complete cache entry.
        batch_size: rows per batch (the global batch under ``torchrun``). Default 64.
        seed: the seed of the shuffled order, combined with the epoch. Default 0.
        device: where the batches go. Default ``"cpu"``.
        view: only the rows of this view (0: the un-augmented one). Default None: every view.
        images: only the rows of these dataset indices (a training or validation part). Default None: all.
    """

    cache: FeatureCache
    batch_size: int = 64
    seed: int = 0
    device: str | torch.device = "cpu"
    view: int | None = None  # restrict to one view (0: the un-augmented one)
    images: np.ndarray | None = None  # restrict to these dataset indices (a training or validation part)

    def rows(self) -> np.ndarray:
        """The cache rows this source reads: valid, of ``view`` and of ``images`` where those are given."""
        rows = self.cache.rows(self.view)
        return rows if self.images is None else rows[np.isin(self.cache.indices[rows], self.images)]

    def __len__(self) -> int:
        return len(self.rows())

    def batches(self, epoch: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the rows as ``(features, labels)``; under ``torchrun``, this process's part of
        every global batch.

        Args:
            epoch: shuffle with a seed derived from it and ``seed``; None reads the rows in order."""
        shuffle = epoch is not None
        seed = self.seed * 100_003 + (epoch or 0)
        shard = distributed.current()
        if not shard.active:
            return self.cache.batches(self.batch_size, shuffle, seed, self.rows(), self.device)
        rows = self.rows()
        return (self.cache.load(shard.take(rows[b]), self.device)
                for b in distributed.global_batches(len(rows), self.batch_size, shuffle, seed))


def _collate_or_none(items):
    return torch.utils.data.default_collate(items) if items else None


@dataclass
class StreamingSource:
    """Batches computed by the frozen backbone from images, every pass (no cache).

    The backbone runs in inference mode, on CUDA under bfloat16 autocast (``amp``) and channels-last,
    fed by pinned-memory loader workers that prefetch; ``compile`` puts it through :func:`torch.compile`.
    Only the head ever needs gradients.

    Args:
        backbone: the frozen backbone; its evaluation transform is applied to the images.
        dataset: the images.
        batch_size: images per batch (the global batch under ``torchrun``). Default 64.
        seed: the seed of the shuffled order, combined with the epoch. Default 0.
        num_workers: image-loading processes. Default 0: load in this process.
        device: where the backbone runs and the batches go. Default ``"cpu"``.
        images: only these dataset indices (a training or validation part). Default None: all.
        amp: on CUDA, run the backbone under bfloat16 autocast. Default True.
        compile: put the backbone through :func:`torch.compile`. Default False.
        prefetch: batches each loader worker keeps ready. Default 4."""

    backbone: Backbone
    dataset: ImageDataset
    batch_size: int = 64
    seed: int = 0
    num_workers: int = 0
    device: str | torch.device = "cpu"
    images: np.ndarray | None = None  # restrict to these dataset indices (a training or validation part)
    amp: bool = True
    compile: bool = False
    prefetch: int = 4  # batches each loader worker keeps ready

    def __post_init__(self) -> None:
        self._transformed = _Transformed(self.dataset, self.backbone.transform)
        if self.images is not None:
            self._transformed = torch.utils.data.Subset(self._transformed, [int(i) for i in self.images])
        self._forward = None

    def __len__(self) -> int:
        return len(self._transformed)

    def _prepared(self):
        """The backbone's forward for this device (built once: channels-last, compiled when asked)."""
        if self._forward is None:
            device = torch.device(self.device)
            self.backbone.to(device)
            if device.type == "cuda":
                self.backbone.to(memory_format=torch.channels_last)
            self._forward = torch.compile(self.backbone) if self.compile else self.backbone
        return self._forward

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps (float32) of a batch of transformed images.

        Args:
            x: the images, ``(B, 3, H, W)``, already through the backbone's transform."""
        device = torch.device(self.device)
        forward = self._prepared()
        cuda = device.type == "cuda"
        x = x.to(device, non_blocking=True, memory_format=torch.channels_last if cuda else torch.contiguous_format)
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=cuda and self.amp):
            f = forward(x).float()
        return f.clone()  # a normal tensor: the head's backward may save it

    def batches(self, epoch: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the images as ``(features, labels)``; under ``torchrun``, this process's part of
        every global batch (empty tensors where a short last batch leaves it none).

        Args:
            epoch: shuffle with a seed derived from it and ``seed``; None reads the images in order."""
        sampler = distributed.ShardedBatchSampler(len(self), self.batch_size, epoch is not None,
                                      self.seed * 100_003 + (epoch or 0), distributed.current())
        workers = self.num_workers
        loader = torch.utils.data.DataLoader(
            self._transformed, batch_sampler=sampler, num_workers=workers, collate_fn=_collate_or_none,
            pin_memory=torch.device(self.device).type == "cuda", prefetch_factor=self.prefetch if workers else None,
        )
        empty = (torch.zeros((0, *self.backbone.feature_shape()), device=self.device),
                 torch.zeros(0, dtype=torch.long, device=self.device))
        for batch in loader:
            if batch is None:  # this process's part of a short last batch
                yield empty
                continue
            x, y = batch
            yield self.features(x), y.to(self.device, non_blocking=True)


def holdout_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dataset indices ``(fit, validation)``: a seeded ``fraction`` of each class's images held out
    (at least one of each class with two or more images), the rest for fitting.

    Args:
        labels: each image's class index.
        fraction: the share of each class held out, strictly between 0 and 1.
        seed: the seed of the choice. Default 0."""
    if not 0 < fraction < 1:
        raise InputError(f"the validation fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        held.append(rng.permutation(idx)[:n])
    val = np.sort(np.concatenate(held)) if held else np.zeros(0, int)
    return np.setdiff1d(np.arange(len(labels)), val), val


class _Transformed(torch.utils.data.Dataset):
    """``(transform(image), label)`` of a dataset, leaving the dataset's own ``transform`` alone."""

    def __init__(self, dataset: ImageDataset, transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.dataset.load_image(i)), int(self.dataset.labels[i])


__all__ = ["CachedSource", "FeatureSource", "StreamingSource", "holdout_split"]
