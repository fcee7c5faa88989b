"""Several processes, one result: PyTorch's DDP under ``torchrun``.

Infrastructure, floor 1 (tests/test_layout.py): it imports nothing of the package; the
cache, training, mining and the jobs read the process group through it.

``torchrun --nproc_per_node=N -m infodisent train ...`` starts N processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous; :func:`setup` joins the process group once
(NCCL on CUDA, gloo on the CPU). Everything else reads the group through :func:`current`, so a
plain ``python -m infodisent`` run is the same code with one shard.

How work is split, so that N processes give the one-process result:

- **training**: every process draws the same seeded permutation; global batch ``g`` (``batch_size``
  images, as in one process) goes to rank ``r`` as ``g[r::N]``. DDP averages the gradients, and the
  loss is scaled so that the average is the gradient of the global batch's mean loss. The checkpoint
  holds nothing per process, so a run resumes with any number of processes.
- **evaluation, pooled features, importance**: the same strided split; :func:`unshard` puts the
  gathered pieces back in the one-process order.
- **feature cache, prototype mining**: the same split of blocks of N x batch rows
  (:class:`ShardedBatchSampler` without shuffling); rank 0 is the only writer of the cache
  (the other ranks send it their rows) and merges the per-rank top-k lists of the prototype index.

Only rank 0 writes the run directory and shows progress bars. The run directory and the feature
cache must lie on a filesystem every process sees (one machine, or a shared one across machines).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` processes."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """The process that writes files and shows progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def take(self, items: Sequence[T]) -> Sequence[T]:
        """This rank's part of one global batch: ``items[rank::world]``.

        Args:
            items: the global batch (any sliceable sequence: positions, a tensor)."""
        return items[self.rank :: self.world]


def global_batches(n: int, batch_size: int, shuffle: bool, seed: int) -> Iterator[np.ndarray]:
    """Positions ``0..n-1`` in batches of ``batch_size``: a seeded permutation when shuffling (the same
    one :meth:`~infodisent.data.features.FeatureCache.batches` draws), else in order. Every process draws the
    same batches.

    Args:
        n: number of items.
        batch_size: items per batch (the last batch may be smaller).
        shuffle: draw a seeded permutation instead of keeping the order.
        seed: the permutation's seed (unused without ``shuffle``).
    Returns:
        An iterator over arrays of positions, one per batch."""
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for s in range(0, n, batch_size):
        yield order[s : s + batch_size]


class ShardedBatchSampler(torch.utils.data.Sampler):
    """A distributed batch sampler: this process's part ``g[rank::world]`` of every global batch ``g`` of
    :func:`global_batches` (possibly empty: every process then still takes part in the step).

    Unlike :class:`~torch.utils.data.distributed.DistributedSampler`, which pads the epoch with repeated
    images and gives each process its own contiguous stream, N processes here see exactly the one-process
    batches, so they train the one-process head.

    Args:
        n: number of items in the dataset.
        batch_size: images per global batch (as in one process).
        shuffle: draw the seeded permutation of :func:`global_batches` instead of keeping the order.
        seed: that permutation's seed.
        shard: this process's place, usually :func:`current`."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, shard: Shard) -> None:
        self.n, self.batch_size, self.shuffle, self.seed, self.shard = n, batch_size, shuffle, seed, shard

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for b in global_batches(self.n, self.batch_size, self.shuffle, self.seed):
            yield [int(i) for i in self.shard.take(b)]


def launched() -> bool:
    """True when started by ``torchrun`` (or any launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Shard:
    """This process's shard: ``Shard(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


# Rank 0 alone fits the linear probe (full-batch L-BFGS on the CPU) while the others wait in a collective:
# on ImageNet that takes far longer than torch's default 10 minutes for NCCL
TIMEOUT = timedelta(hours=12)


def setup(device: str) -> str:
    """Join the process group ``torchrun`` prepared (once per process) and return this process's
    device: any ``cuda`` device becomes ``cuda:LOCAL_RANK`` (choose the GPUs with
    ``CUDA_VISIBLE_DEVICES``). Without a launcher: ``device`` unchanged.

    Args:
        device: the device asked for (``"cuda"``, ``"cpu"``, ...); NCCL is used when it is a CUDA device,
            gloo otherwise.
    Returns:
        The device this process uses."""
    if not launched():
        return device
    cuda = str(device).startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda under torchrun, but this machine has no CUDA device")
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return device


def barrier() -> None:
    if current().active:
        dist.barrier()


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` on every rank, in rank order (``[obj]`` in one process).

    Args:
        obj: this rank's object (picklable)."""
    shard = current()
    if not shard.active:
        return [obj]
    out: list[Any] = [None] * shard.world
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj: T) -> list[T] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None on the others; ``[obj]`` in one process).

    Args:
        obj: this rank's object (picklable)."""
    shard = current()
    if not shard.active:
        return [obj]
    out: list[Any] | None = [None] * shard.world if shard.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank.

    Args:
        obj: the object sent (picklable); ignored on the other ranks.
        src: the rank whose object is sent. Default 0."""
    if not current().active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over ranks (in place; ``t`` itself in one process).

    Args:
        t: this rank's tensor, of the same shape on every rank; overwritten with the sum."""
    if not current().active:
        return t
    if dist.get_backend() == "nccl" and t.device.type != "cuda":  # NCCL reduces CUDA tensors only
        on_gpu = t.to(f"cuda:{torch.cuda.current_device()}")
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        return t.copy_(on_gpu.cpu())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def unshard(pieces: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Put strided batch pieces back together: ``pieces[r][b]`` is rank ``r``'s part ``g_b[r::world]``
    of global batch ``b``; returns the global batches in order (dimension 0 interleaved).

    Args:
        pieces: per rank, its list of batch pieces (as gathered by :func:`gather_objects`)."""
    world = len(pieces)
    if world == 1:
        return list(pieces[0])
    out = []
    for parts in zip(*pieces, strict=True):
        n = sum(len(p) for p in parts)
        whole = parts[0].new_empty((n, *parts[0].shape[1:]))
        for r, p in enumerate(parts):
            whole[r::world] = p
        out.append(whole)
    return out


def ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` when several
    processes train (gradients averaged across them), else ``module`` itself.

    Args:
        module: the module trained.
        device: its device; a CUDA device is passed to DDP as ``device_ids``."""
    if not current().active:
        return module
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


__all__ = ["Shard", "ShardedBatchSampler", "all_sum", "barrier", "broadcast_object", "current", "ddp",
           "gather_objects", "gather_to_main", "global_batches", "launched", "setup", "unshard"]
