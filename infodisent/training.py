"""Training an InfoDisent head: a pure per-epoch step and a thin ``fit`` around it.

``fit`` owns checkpoints (written atomically after every epoch), resume,
progress bars and the history table; ``train_one_epoch`` and ``evaluate``
only compute. Features come from a :class:`FeatureSource`: cached maps
(:class:`CachedSource`, the fast path) or images streamed through the
frozen backbone (:class:`StreamingSource`, for datasets too large to cache).

Under ``torchrun`` both sources give each process its part of every global batch
(:mod:`infodisent.distributed`), ``fit`` trains the head under DDP, and ``predict``
gathers the logits, so that N processes train the one-process head.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed
from .backbone import Backbone
from .datasets.base import ImageDataset
from .features import FeatureCache
from .head import HeadConfig, InfoDisentHead, check_choices
from .io import atomic_path, atomic_write_text
from .results import Accuracy

if TYPE_CHECKING:
    from .monitor import Monitor

Loss = Literal["softmax", "sigmoid"]


class CheckpointMismatchError(ValueError):
    """A checkpoint whose head does not fit the run being resumed."""


class FeatureSource(Protocol):
    """Mini-batches of backbone feature maps and labels."""

    def __len__(self) -> int: ...

    def batches(self, epoch: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass; shuffled with a seed derived from ``epoch`` when it is not None."""
        ...


@dataclass
class CachedSource:
    """Batches read from a :class:`FeatureCache` (all views of every valid image)."""

    cache: FeatureCache
    batch_size: int = 64
    seed: int = 0
    device: str | torch.device = "cpu"
    view: int | None = None  # restrict to one view (0: the un-augmented one)
    images: np.ndarray | None = None  # restrict to these dataset indices (a training or validation part)

    def rows(self) -> np.ndarray:
        rows = self.cache.rows(self.view)
        return rows if self.images is None else rows[np.isin(self.cache.indices[rows], self.images)]

    def __len__(self) -> int:
        return len(self.rows())

    def batches(self, epoch: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
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
    Only the head ever needs gradients."""

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
        """Feature maps (float32) of a batch of transformed images."""
        device = torch.device(self.device)
        forward = self._prepared()
        cuda = device.type == "cuda"
        x = x.to(device, non_blocking=True, memory_format=torch.channels_last if cuda else torch.contiguous_format)
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=cuda and self.amp):
            f = forward(x).float()
        return f.clone()  # a normal tensor: the head's backward may save it

    def batches(self, epoch: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
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
    (at least one of each class with two or more images), the rest for fitting."""
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
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


@dataclass(frozen=True)
class FitConfig:
    """Optimisation settings (stored in the run's ``config.json``)."""

    epochs: int = 30
    lr: float = 2e-3
    rotation_lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    loss: Loss = "softmax"  # "softmax" (cross-entropy) or "sigmoid" (one-vs-rest, as in SIDE)
    train_rotation: bool = True  # False keeps U fixed (fine-tuning W after pruning)
    seed: int = 0
    amp: bool = True  # bfloat16 autocast on CUDA; ignored on CPU
    eval_every: int = 1
    distill: float = 0.0  # weight of matching a teacher's logits (given to fit), 1 - distill on the labels
    distill_temperature: float = 1.0

    def __post_init__(self) -> None:
        check_choices(self)
        if self.epochs < 0 or self.lr <= 0 or self.rotation_lr < 0:
            raise ValueError(f"FitConfig needs epochs >= 0, lr > 0, rotation_lr >= 0; got {self.epochs}, "
                             f"{self.lr}, {self.rotation_lr}")
        if not 0 <= self.distill <= 1 or self.distill_temperature <= 0:
            raise ValueError(f"FitConfig needs 0 <= distill <= 1 and distill_temperature > 0; got {self.distill}, "
                             f"{self.distill_temperature}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EpochStats:
    loss: float
    top1: float
    seconds: float
    images: int


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(head: InfoDisentHead, config: FitConfig) -> torch.optim.Optimizer:
    rot = [p for p in head.rotation.parameters() if p.requires_grad] if config.train_rotation else []
    rest = [p for n, p in head.named_parameters() if p.requires_grad and not n.startswith("rotation.")]
    groups = [{"params": rest, "lr": config.lr, "base_lr": config.lr, "weight_decay": config.weight_decay}]
    if rot:
        groups.append({"params": rot, "lr": config.rotation_lr, "base_lr": config.rotation_lr, "weight_decay": 0.0})
    return torch.optim.AdamW(groups)


def loss_fn(logits: torch.Tensor, y: torch.Tensor, config: FitConfig, reduction: str = "mean",
            teacher: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy, or SIDE's one-vs-rest sigmoid loss (binary cross-entropy per class, summed over classes);
    the mean over the batch, or with ``reduction="sum"`` the sum over it.

    With ``teacher`` logits and ``config.distill > 0``: ``(1 - distill) x`` that loss ``+ distill x`` the
    distillation loss at ``distill_temperature`` T (Hinton et al.): ``T^2 KL(softmax(teacher/T) ||
    softmax(logits/T))`` for softmax training, the binary cross-entropy to ``sigmoid(teacher/T)`` per class
    for sigmoid training."""
    if config.loss == "softmax":
        hard = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing, reduction="sum")
    elif config.loss == "sigmoid":
        target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        hard = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
    else:
        raise ValueError(f"unknown loss {config.loss!r}; choose one of softmax, sigmoid")
    total = hard
    if teacher is not None and config.distill > 0:
        t = config.distill_temperature
        teacher = teacher.detach().to(logits.dtype)
        if config.loss == "softmax":
            soft = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher / t, 1), log_target=True,
                            reduction="sum")
        else:
            soft = F.binary_cross_entropy_with_logits(logits / t, torch.sigmoid(teacher / t), reduction="sum")
        total = (1 - config.distill) * hard + config.distill * t * t * soft
    return total if reduction == "sum" else total / max(len(y), 1)


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def train_one_epoch(
    head: InfoDisentHead,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    step: int,
    total_steps: int,
    warmup_steps: int,
    config: FitConfig,
    progress: tqdm | None = None,
    forward: torch.nn.Module | None = None,
    teacher: InfoDisentHead | None = None,
) -> tuple[EpochStats, int]:
    """One pass over ``batches``; U is computed once per optimizer step. Returns stats and the new step.

    ``forward`` is the head wrapped for DDP (:func:`infodisent.distributed.ddp`) when several processes
    train: each holds part of every global batch, and its loss is scaled so that the averaged gradient is
    the gradient of the global batch's mean loss; the stats are summed over processes. ``teacher``: a head
    whose logits on the same features ``config.distill`` asks to match (frozen, in evaluation mode)."""
    head.train()
    forward = head if forward is None else forward
    shard = distributed.current()
    t0, loss_sum, correct, n = time.perf_counter(), 0.0, 0, 0
    for x, y in batches:
        factor = lr_factor(step, total_steps, warmup_steps)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        with _autocast(x.device, config.amp):
            logits = forward(x)
            target = _teacher_logits(teacher, x) if teacher is not None and config.distill > 0 else None
            if shard.active:  # sum over this part, over the global batch size, times the number of processes
                n_global = int(distributed.all_sum(torch.tensor([len(y)], device=x.device)).item())
                part = loss_fn(logits.float(), y, config, reduction="sum", teacher=target)
                loss = part * shard.world / n_global
                batch_loss, batch_n = float(part.detach()), len(y)
            else:
                loss = loss_fn(logits.float(), y, config, teacher=target)
                batch_loss, batch_n = float(loss.detach()) * len(y), len(y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        loss_sum += batch_loss
        correct += int((logits.argmax(1) == y).sum())
        n += batch_n
        if progress is not None:
            progress.update(n_global if shard.active else len(y))
            progress.set_postfix(loss=f"{loss_sum / max(n, 1):.3f}", acc=f"{correct / max(n, 1):.3f}")
    if shard.active:
        loss_sum, correct, n = distributed.all_sum(torch.tensor([loss_sum, correct, n], dtype=torch.float64)).tolist()
        correct, n = int(correct), int(n)
    return EpochStats(loss_sum / max(n, 1), correct / max(n, 1), time.perf_counter() - t0, n), step


@torch.no_grad()
def _teacher_logits(teacher: InfoDisentHead, x: torch.Tensor) -> torch.Tensor:
    teacher.eval()
    return teacher(x).float()


@torch.no_grad()
def predict(head: InfoDisentHead, source: FeatureSource, amp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of a whole source; U and W are computed once."""
    head.eval()
    logits, labels = [], []
    with head.frozen_parameters():
        for x, y in source.batches(None):
            with _autocast(x.device, amp):
                logits.append(head(x).float().cpu())
            labels.append(y.cpu())
    if distributed.current().active:  # every process: all the logits, in the one-process order
        pieces = distributed.gather_objects((logits, labels))
        logits = distributed.unshard([p[0] for p in pieces])
        labels = distributed.unshard([p[1] for p in pieces])
    if not logits:
        return torch.zeros(0, head.config.num_classes), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> Accuracy:
    """Top-1, top-5 accuracy and cross-entropy of logits against labels."""
    if len(labels) == 0:
        return Accuracy(float("nan"), float("nan"), float("nan"))
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return Accuracy(
        top1=float((top[:, 0] == labels).float().mean()),
        top5=float((top == labels[:, None]).any(1).float().mean()),
        loss=float(F.cross_entropy(logits, labels)),
    )


def evaluate(head: InfoDisentHead, source: FeatureSource, amp: bool = True) -> Accuracy:
    return classification_metrics(*predict(head, source, amp))


@dataclass(frozen=True)
class CheckpointPaths:
    """Where :func:`fit` keeps its checkpoint and history (a run directory's ``checkpoint.pt`` and ``history.csv``)."""

    checkpoint: Path
    history: Path


def save_checkpoint(paths: CheckpointPaths, head: InfoDisentHead, history: pd.DataFrame, *, epoch: int, step: int,
                    optimizer: torch.optim.Optimizer | None = None, phase: str = "train",
                    extra: dict[str, Any] | None = None) -> None:
    """Write ``history.csv`` then the checkpoint (head config and state, optimizer, RNG), each atomically.

    ``phase`` is ``"train"`` (resumable) or ``"pruned"`` (a finished pruned head); ``extra`` holds more
    plain values (numbers, strings) to keep."""
    state: dict[str, Any] = {
        "phase": phase,
        "epoch": epoch,
        "step": step,
        "head_config": head.config.to_dict(),
        "head": head.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    state.update(extra or {})
    atomic_write_text(paths.history, history.to_csv(index=False))
    with atomic_path(paths.checkpoint) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict | None:
    """A checkpoint written by :func:`save_checkpoint`, or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, foreign pickle, ...
        from .io import CorruptFileError

        raise CorruptFileError(path, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
                               "delete it to start the run afresh") from None


def check_checkpoint(ckpt: dict, want: HeadConfig, path: Path) -> None:
    """Raise :class:`CheckpointMismatchError` naming both heads when ``ckpt`` does not fit a head of ``want``
    (for a pruned checkpoint: the dense head it was pruned from)."""
    have = HeadConfig(**ckpt["head_config"]) if "head_config" in ckpt else None
    if have is None:
        raise CheckpointMismatchError(f"{path} has no head configuration (written by an older infodisent); "
                                      "delete it or train with --overwrite")
    if (have.num_classes, have.num_features) != (want.num_classes, want.num_features):
        raise CheckpointMismatchError(
            f"{path} holds a head for {have.num_classes} classes and {have.num_features} channels; "
            f"this run has {want.num_classes} classes and {want.num_features} channels"
        )
    if ckpt.get("phase", "train") == "pruned":
        have = replace(have, pruned=want.pruned)
    if have != want:
        diff = {k: (v, getattr(want, k)) for k, v in have.to_dict().items() if getattr(want, k) != v}
        raise CheckpointMismatchError(f"{path} was written with other head options (checkpoint, now): {diff}")


def fit(
    head: InfoDisentHead,
    train: FeatureSource,
    test: FeatureSource | None,
    config: FitConfig,
    paths: CheckpointPaths | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device = "cpu",
    monitor: "Monitor | None" = None,
    teacher: InfoDisentHead | None = None,
) -> pd.DataFrame:
    """Train ``head`` for ``config.epochs``; returns the history (one row per epoch).

    ``teacher``: a head on the same features whose logits the training matches with weight ``config.distill``.

    ``monitor`` (:class:`~infodisent.monitor.Monitor`) hears of every epoch; a stop it requests
    ends the loop after that epoch's checkpoint, with :class:`~infodisent.monitor.TrainingStopped`.

    With ``paths``, a checkpoint and the history are written atomically after
    each epoch; ``resume=True`` continues from the last finished epoch there, and
    gives the same result as an uninterrupted run (on CPU, for a seed), with any
    number of processes (under ``torchrun``: DDP, rank 0 writes).
    """
    device = torch.device(device)
    torch.manual_seed(config.seed)
    head.to(device)
    shard = distributed.current()
    forward = distributed.ddp(head, device)
    optimizer = make_optimizer(head, config)
    steps_per_epoch = max(1, math.ceil(len(train) / getattr(train, "batch_size", 64)))
    total, warmup = config.epochs * steps_per_epoch, int(config.warmup_epochs * steps_per_epoch)
    start, step, rows = 0, 0, []
    if resume and paths is not None and (ckpt := load_checkpoint(paths.checkpoint)) is not None:
        check_checkpoint(ckpt, head.config, paths.checkpoint)
        head.load_state_dict(ckpt["head"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        start, step = int(ckpt["epoch"]), int(ckpt["step"])
        rows = pd.read_csv(paths.history).to_dict("records")[:start]
    bar = tqdm(total=(config.epochs - start) * len(train), desc="train InfoDisent", unit="img",
               disable=not progress or not shard.main)
    for epoch in range(start, config.epochs):
        stats, step = train_one_epoch(
            head, train.batches(epoch), optimizer, step, total, warmup, config, bar, forward, teacher
        )
        row = {"epoch": epoch + 1, "train_loss": stats.loss, "train_top1": stats.top1, "seconds": stats.seconds}
        last = epoch + 1 == config.epochs
        if test is not None and (last or (config.eval_every and (epoch + 1) % config.eval_every == 0)):
            m = evaluate(head, test, config.amp)
            row.update({"test_loss": m.loss, "test_top1": m.top1})
        row["lr"] = optimizer.param_groups[0]["lr"]
        rows.append(row)
        if paths is not None and shard.main:  # one writer; the checkpoint holds nothing per process
            save_checkpoint(paths, head, pd.DataFrame(rows), epoch=epoch + 1, step=step, optimizer=optimizer)
        if monitor is not None:
            monitor.epoch(row)
            monitor.progress(monitor.phase, epoch + 1, config.epochs)
            if monitor.stop_requested and not last:
                bar.close()
                monitor.check_stop(f"after epoch {epoch + 1} of {config.epochs}"
                                   + ("; the checkpoint resumes it" if paths is not None else
                                      f" of {monitor.phase}; a resume prunes again from the dense head"))
    bar.close()
    return pd.DataFrame(rows)

