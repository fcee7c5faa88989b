"""Training an InfoDisent head: a pure per-epoch step and a thin ``fit`` around it.

``fit`` owns checkpoints (:mod:`.checkpoints`, written atomically after every epoch), resume,
progress bars and the history table; ``train_one_epoch`` and ``evaluate``
only compute. Features come from a :class:`~infodisent.data.sources.FeatureSource`: cached maps
(:class:`~infodisent.data.sources.CachedSource`, the fast path) or images streamed through the
frozen backbone (:class:`~infodisent.data.sources.StreamingSource`, for datasets too large to cache).

Under ``torchrun`` both sources give each process its part of every global batch
(:mod:`infodisent.distributed`), ``fit`` trains the head under DDP, and ``predict``
gathers the logits, so that N processes train the one-process head.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import distributed
from ..core.head import InfoDisentHead
from ..data.sources import FeatureSource
from ..errors import InputError
from ..records.options import FitConfig
from ..records.results import Accuracy
from .checkpoints import CheckpointPaths, check_checkpoint, load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from .monitor import Monitor



@dataclass(frozen=True)
class EpochStats:
    loss: float
    top1: float
    seconds: float
    images: int


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero.

    Args:
        step: the optimizer step about to be taken (from 0).
        total: the training's total number of steps.
        warmup: the number of warm-up steps (0: none).
    Returns:
        The factor the base learning rate is multiplied by, in ``(0, 1]`` (0 at the end of the decay)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(head: InfoDisentHead, config: FitConfig) -> torch.optim.Optimizer:
    """AdamW with two parameter groups: the rotation's (``config.rotation_lr``, no weight decay; only when
    ``config.train_rotation``) and the rest (``config.lr``, ``config.weight_decay``). Each group keeps its
    ``base_lr`` for the schedule of :func:`lr_factor`.

    Args:
        head: the head trained (only parameters that require gradients are optimised).
        config: the training options read."""
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
    for sigmoid training.

    Args:
        logits: the head's logits ``(B, C)``.
        y: class labels ``(B,)``.
        config: the training options (``loss``, ``label_smoothing``, ``distill``, ``distill_temperature``).
        reduction: ``"mean"`` or ``"sum"`` over the batch. Default ``"mean"``.
        teacher: the teacher's logits ``(B, C)`` for distillation. Default None: no distillation."""
    if config.loss == "softmax":
        hard = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing, reduction="sum")
    elif config.loss == "sigmoid":
        target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        hard = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
    else:
        raise InputError(f"unknown loss {config.loss!r}; choose one of softmax, sigmoid")
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
    teacher: torch.nn.Module | None = None,
) -> tuple[EpochStats, int]:
    """One pass over ``batches``; U is computed once per optimizer step. Returns stats and the new step.

    ``forward`` is the head wrapped for DDP (:func:`infodisent.distributed.ddp`) when several processes
    train: each holds part of every global batch, and its loss is scaled so that the averaged gradient is
    the gradient of the global batch's mean loss; the stats are summed over processes. ``teacher``: a head
    whose logits on the same features ``config.distill`` asks to match (frozen, in evaluation mode).

    Args:
        head: the head trained (put in training mode).
        batches: ``(features, labels)`` batches of one epoch.
        optimizer: the optimizer, as :func:`make_optimizer` builds it; its learning rates are set per step.
        step: the optimizer steps taken before this epoch.
        total_steps: the training's total number of steps (for :func:`lr_factor`).
        warmup_steps: the number of warm-up steps (for :func:`lr_factor`).
        config: the training options.
        progress: a progress bar advanced by the images of each batch. Default None: none.
        forward: the module the batches go through. Default None: ``head`` itself.
        teacher: the distillation teacher. Default None: none.
    Returns:
        ``(stats, step)``: the epoch's mean loss, top-1, seconds and image count, and the steps taken so far."""
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
def _teacher_logits(teacher: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    teacher.eval()
    return teacher(x).float()


@torch.no_grad()
def forward_all(head: InfoDisentHead, source: FeatureSource, amp: bool = True, values: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Logits, labels and, when asked, the pooled channel values ``v`` of a whole source, on the CPU in
    float32; U and W are computed once. Under torchrun every process gets all of them, in the one-process
    order.

    Args:
        head: the head (put in eval mode).
        source: the features.
        amp: bfloat16 autocast on CUDA (default True).
        values: also return ``v`` (N, D) (default False: None; a pruned head then computes only the
            channels some class keeps).
    """
    head.eval()
    logits, labels, vs = [], [], []
    with head.frozen_parameters():
        for x, y in source.batches(None):
            with _autocast(x.device, amp):
                if values:
                    out = head.forward_details(x)
                    logits.append(out.logits.float().cpu())
                    vs.append(out.v.float().cpu())
                else:
                    logits.append(head(x).float().cpu())
            labels.append(y.cpu())
    if distributed.current().active:
        pieces = distributed.gather_objects((logits, labels, vs))
        logits, labels, vs = (distributed.unshard([p[i] for p in pieces]) for i in range(3))
    if not logits:
        return (torch.zeros(0, head.config.num_classes), torch.zeros(0, dtype=torch.long),
                torch.zeros(0, head.config.num_features) if values else None)
    return torch.cat(logits), torch.cat(labels), torch.cat(vs) if values else None


def predict(head: InfoDisentHead, source: FeatureSource, amp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of a whole source; U and W are computed once (:func:`forward_all`).

    Args:
        head: the head (put in eval mode).
        source: the features.
        amp: bfloat16 autocast on CUDA. Default True.
    Returns:
        ``(logits, labels)`` on the CPU, logits in float32."""
    logits, labels, _ = forward_all(head, source, amp)
    return logits, labels


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> Accuracy:
    """Top-1, top-5 accuracy and cross-entropy of logits against labels.

    Args:
        logits: ``(N, C)`` logits.
        labels: ``(N,)`` class labels; with none, every metric is NaN."""
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
    """:func:`classification_metrics` of a head on a whole source.

    Args:
        head: the head (put in eval mode).
        source: the features.
        amp: bfloat16 autocast on CUDA. Default True."""
    return classification_metrics(*predict(head, source, amp))


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

    ``teacher``: a module on the same features (a head, or the backbone's own classifier:
    :class:`~infodisent.eval.fidelity.BlackBox`) whose logits the training matches with weight ``config.distill``.

    ``monitor`` (:class:`~infodisent.train.monitor.Monitor`) hears of every epoch; a stop it requests
    ends the loop after that epoch's checkpoint, with :class:`~infodisent.train.monitor.TrainingStopped`.

    With ``paths``, a checkpoint and the history are written atomically after
    each epoch; ``resume=True`` continues from the last finished epoch there, and
    gives the same result as an uninterrupted run (on CPU, for a seed), with any
    number of processes (under ``torchrun``: DDP, rank 0 writes).

    Args:
        head: the head trained, moved to ``device``.
        train: the training features (batches reshuffled each epoch).
        test: features evaluated after the last epoch and every ``config.eval_every`` epochs, or None
            for no evaluation.
        config: the training options (epochs, learning rates, seed, ...).
        paths: where the checkpoint and the history go. Default None: nothing is written.
        resume: continue from the checkpoint at ``paths`` where there is one. Default False.
        progress: show a progress bar (on rank 0). Default True.
        device: where the head trains. Default ``"cpu"``.
        monitor: hooks told of every epoch, which may ask the training to stop. Default None.
        teacher: the distillation teacher. Default None: none.
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

