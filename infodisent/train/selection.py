"""Choosing K on held-out images by a statistic float noise cannot flip, and checking the accuracy budget.

Held-out top-1 on a few dozen images moves by whole images when a CPU with other kernels trains the
same head (its last bits differ, and training carries them on), so a rule "the smallest K whose
top-1 stays within half a point" is a coin toss at the margin. The held-out *loss* moves smoothly.
Compact heads are less confident than the dense one (their few channels give smaller logits), so
each head's loss is taken after temperature scaling (Guo et al., ICML 2017: one scalar fitted on
the held-out logits), which compares what the heads know rather than how sure they sound.

The rule (:func:`choose_k`) is the one-standard-error rule (Breiman et al. 1984; Hastie et al., The
Elements of Statistical Learning, §7.10): K is the smallest candidate whose calibrated held-out loss
is within ``loss_se`` standard errors of the best candidate's (the standard error of the per-image
difference). Few held-out images give a wide band, so the choice falls on the small K the band
cannot tell apart from the best instead of on noise; many images give a narrow one. The budget is
then checked on top-1 against the dense head, image by image: the chosen head is *within budget*
unless it loses more than ``tolerance`` by more than the held-out images can resolve (1.645
standard errors of the paired difference, one-sided 95%). A head outside the budget is kept and
reported, never silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..core.head import InfoDisentHead
from ..data.sources import FeatureSource
from ..records.options import SparseOptions
from ..records.results import KSelection
from .training import classification_metrics, predict


class BudgetWarning(UserWarning):
    """The compact head measurably loses more held-out top-1 than its budget (it is kept, and said)."""


class ScaleWarning(UserWarning):
    """The data chooses K for more classes than the default was measured on (said before training)."""


MEASURED_CLASSES = 100  # the most classes the compact default was measured on (CUB-100, docs/results/cub100.md)


def scale_warning(num_classes: int) -> str | None:
    """What a run that chooses K on ``num_classes`` classes should hear first, or None within what was measured.

    Args:
        num_classes: the dataset's class count."""
    if num_classes <= MEASURED_CLASSES:
        return None
    return (f"the compact default was measured on up to {MEASURED_CLASSES} classes (docs/results/cub100.md) and "
            f"this dataset has {num_classes}: expect compactness to cost more, and the held-out images to choose "
            f"K less surely. The run measures it (the 'cost of compactness' line, metrics.json's sparse.dense) and "
            f"keeps every K it trains (metrics.json's frontier): 'infodisent select RUN --k K' shows another "
            f"without retraining; --dense trains the dense head alone")

Z_ONE_SIDED_95 = 1.645  # standard errors a loss must exceed the tolerance by to count as measured


def calibrated_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per-image cross-entropy after temperature scaling, and the temperature ``argmin_T CE(logits / T, labels)``.

    Args:
        logits: ``(N, C)`` held-out logits.
        labels: ``(N,)`` class labels.
    Returns:
        ``(losses, T)``: the ``(N,)`` calibrated cross-entropies and the temperature (1.0 when the search
        fails to improve on no scaling)."""
    z, y = logits.double(), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        t = float(log_t.exp())
        if not math.isfinite(t) or F.cross_entropy(z / t, y) > F.cross_entropy(z, y):
            t = 1.0  # the search failed: no scaling
        return F.cross_entropy(z / t, y, reduction="none").float(), t


@dataclass(frozen=True)
class HeldOut:
    """A head's scores on the held-out images: top-1, calibrated loss, and per image (in the source's
    order) whether it is right and its calibrated loss."""

    top1: float
    loss: float  # mean cross-entropy after temperature scaling
    temperature: float
    correct: torch.Tensor  # bool, one per held-out image
    losses: torch.Tensor  # calibrated cross-entropy, one per held-out image

    @classmethod
    def of(cls, head: InfoDisentHead, source: FeatureSource, amp: bool = True) -> HeldOut:
        """Score a head on held-out features.

        Args:
            head: the head (put in eval mode).
            source: the held-out features.
            amp: bfloat16 autocast on CUDA. Default True."""
        logits, labels = predict(head, source, amp)
        losses, t = calibrated_loss(logits, labels)
        return cls(classification_metrics(logits, labels).top1, float(losses.mean()), t, logits.argmax(1) == labels,
                   losses)


def paired(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean of ``a - b`` over the same images, and its standard error.

    Args:
        a: one value per image.
        b: one value per image, the same images in the same order."""
    d = a.double() - b.double()
    n = len(d)
    mean = float(d.mean())
    se = math.sqrt(max(float((d * d).mean()) - mean * mean, 0.0) / max(n - 1, 1))
    return mean, se


def paired_loss(dense: torch.Tensor, compact: torch.Tensor) -> tuple[float, float]:
    """Top-1 the compact head loses against the dense one on the same images (``correct`` masks), and its
    standard error: only images one head gets right and the other wrong count.

    Args:
        dense: the dense head's ``correct`` mask.
        compact: the compact head's ``correct`` mask, on the same images."""
    return paired(dense, compact)


def budget_check(dense: HeldOut, compact: HeldOut, tolerance: float) -> tuple[float, float, bool]:
    """Top-1 the compact head loses against the dense one on the held-out images, the loss those images
    cannot resolve (1.645 paired standard errors), and whether the head is within the budget ``tolerance``.

    Args:
        dense: the dense head's held-out scores.
        compact: the compact head's, on the same images.
        tolerance: the top-1 the compact head may lose, as a fraction (0.005: half a point)."""
    lost, se = paired_loss(dense.correct, compact.correct)
    noise = Z_ONE_SIDED_95 * se
    return lost, noise, lost <= tolerance + noise + 1e-9


def escalated(selection: KSelection, went: dict[int, HeldOut], k: int | None, lost: float,
              noise: float) -> KSelection:
    """``selection`` after going up through the K of ``went`` (their held-out scores, in the order tried):
    ``k`` is the first within the budget (losing ``lost``, ``noise`` unresolvable), or None when none
    was and the dense head is kept instead (``fallback``).

    Args:
        selection: the loss rule's choice, as :func:`choose_k` returns it.
        went: the held-out scores of each larger K tried, in the order tried.
        k: the K kept, or None for the dense head.
        lost: the top-1 ``k`` loses against the dense head (ignored when ``k`` is None).
        noise: the loss the held-out images cannot resolve (ignored when ``k`` is None)."""
    top1 = {**selection.top1, **{str(a): s.top1 for a, s in went.items()}}
    loss = {**selection.loss, **{str(a): s.loss for a, s in went.items()}}
    found = k is not None
    return replace(selection, channels_per_class=k, top1=top1, loss=loss, within_tolerance=found,
                   lost=lost if found else selection.lost, noise=noise if found else selection.noise,
                   rule_k=selection.channels_per_class, escalated=list(went), fallback=not found)


def choose_k(tried: dict[int, HeldOut], dense: HeldOut, options: SparseOptions) -> KSelection:
    """The smallest K whose calibrated held-out loss is within ``options.loss_se`` standard errors of
    the best candidate's, with the top-1 budget checked against the dense head (see the module's docstring).

    Args:
        tried: the held-out scores of each candidate K.
        dense: the dense head's held-out scores, on the same images.
        options: the sparse options read (``loss_se``, ``tolerance``)."""
    best = min(tried, key=lambda a: (tried[a].loss, a))
    gaps = {a: paired(s.losses, tried[best].losses) for a, s in tried.items()}
    k = min(a for a, (gap, se) in gaps.items() if gap <= options.loss_se * se + 1e-12)
    lost, noise, within = budget_check(dense, tried[k], options.tolerance)
    return KSelection(
        channels_per_class=k, images=len(dense.correct), dense_top1=dense.top1, tolerance=options.tolerance,
        top1={str(a): s.top1 for a, s in sorted(tried.items())},
        within_tolerance=within,
        loss={str(a): s.loss for a, s in sorted(tried.items())}, dense_loss=dense.loss,
        loss_se=options.loss_se, loss_gap={str(a): g for a, (g, _) in sorted(gaps.items())},
        loss_gap_se={str(a): e for a, (_, e) in sorted(gaps.items())}, lost=lost, noise=noise)


__all__ = ["MEASURED_CLASSES", "BudgetWarning", "HeldOut", "ScaleWarning", "budget_check", "calibrated_loss", "choose_k",
           "escalated", "paired", "paired_loss", "scale_warning"]
