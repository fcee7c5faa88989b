"""SIDE-style sparse heads (Dubovik et al., arXiv 2507.19321): prune each class to K channels.

This is the default run (:class:`SparseOptions` in ``RunConfig.sparse``): a dense head spreads a
decision over ~900 channels, a pruned one over K, which a person can check. K is chosen by the data
(:func:`sparsify`): the smallest of a short list whose calibrated loss on held-out training images is
within one standard error of the best candidate's; the head is then checked against a half-point
accuracy budget (:mod:`infodisent.selection`). A measured miss sends the choice up to larger K and,
when none keeps the budget, to the dense head, said loudly. The held-out images only choose:
:func:`refit` then fine-tunes the chosen head on every training image and trains the dense reference
again on all of them.

The recipe: train a dense head, then prune in rounds: each round keeps for
each class the channels that matter most to it (4x fewer per round, down to
``K``: 1280 -> 320 -> 80 -> 20 -> 5) and fine-tunes the pruned head, ``W`` on
its remaining slots and, by default, ``U``, so that channels can
re-specialise for the few classes they now serve. Both matter. On the parts
demo (12 dense epochs, test accuracy 0.913), pruning straight to 5 gives 0.32,
0.37 after fine-tuning with U fixed and 0.86 with U trained; the rounds give
0.94.
A channel's importance to class ``c`` is its mean contribution
``W[c, d] * v_d`` over the training images of class ``c``: the evidence it
actually supplies, not its raw weight. SIDE also swaps softmax for a
one-vs-rest sigmoid (``FitConfig(loss="sigmoid")``); the run records which
loss each phase used.

Example:
    >>> sparse = prune_head(head, CachedSource(train_cache, view=0), channels_per_class=5)
    >>> fit(sparse, train, test, FitConfig(epochs=10))
    >>> head, history, choice = sparsify(dense, SparseOptions(), fit_config, train, importance, validation=held_out)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Callable

import pandas as pd
import torch

from . import distributed
from .head import InfoDisentHead
from .monitor import Monitor
from .results import KSelection
from .selection import HeldOut, budget_check, choose_k, escalated
from .training import FeatureSource, FitConfig, fit


@dataclass(frozen=True)
class SparseOptions:
    """Pruning settings: ``channels_per_class`` after the last round, then ``finetune_epochs`` of fine-tuning.

    ``channels_per_class=None`` (the default) lets the data choose K: a ``validation`` share of each
    class's training images is held out, the rounds go on through all the ``candidates`` from the
    largest down, each fine-tuned for ``finetune_epochs`` as the final head would be, and K is the
    smallest candidate whose held-out loss after temperature scaling is within ``loss_se`` standard
    errors of the best candidate's (the one-standard-error rule, :func:`infodisent.selection.choose_k`;
    top-1 on a few dozen images flips with another CPU's last bits). The chosen head is kept; whether it
    loses more than ``tolerance`` top-1 against the dense head, beyond what the held-out images can
    resolve, is recorded (``KSelection.within_tolerance``). A head measurably outside the budget is not
    shipped in silence: with ``escalate`` (the default) larger K are tried, smallest first
    (:meth:`escalation`), and the first within the budget is kept; when none is, the dense head is (a
    fallback said loudly wherever the run's results are shown). Without ``escalate`` the compact head
    is kept and the miss printed loudly. The held-out images only choose: once K is chosen, the chosen
    head is fine-tuned for ``refit_epochs`` on every training image and, with ``dense_reference``, the
    dense head it is judged against is trained again on all of them (:func:`refit`), so that the run's
    compact and dense test accuracies both come from all the training data. With ``channels_total``,
    all classes choose their channels from one shared budget of that many.
    """

    channels_per_class: int | None = None
    finetune_epochs: int = 10  # after the last round
    finetune_lr: float | None = None  # default: the run's learning rate
    finetune_rotation: bool = True  # also fine-tune U (False: W alone, prototypes unchanged)
    ratio: int = 4  # each round keeps 1/ratio of the channels per class (1: prune to k at once)
    round_epochs: int = 3  # fine-tuning after each intermediate round
    candidates: tuple[int, ...] = (3, 5, 8)  # the short list K is chosen from ("a handful")
    tolerance: float = 0.005  # the budget: top-1 the compact head may lose against the dense head
    loss_se: float = 1.0  # K: the smallest candidate within this many standard errors of the best held-out loss
    validation: float = 0.1  # share of each class's training images held out to choose K
    channels_total: int | None = None  # one budget of channels shared by all classes
    distill: float = 0.0  # fine-tuning matches the dense head's logits with this weight (the labels: 1 - distill)
    escalate: bool = True  # no candidate within the budget: try larger K (:meth:`escalation`), then the dense head
    refit_epochs: int = 5  # K chosen: the chosen head is then fine-tuned this long on every training image
    dense_reference: bool = True  # K chosen: the dense reference is trained again on every training image

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(sorted(set(int(c) for c in self.candidates))))
        k = self.channels_per_class
        if (k is not None and k < 1) or self.ratio < 1 or min(self.finetune_epochs, self.round_epochs,
                                                              self.refit_epochs) < 0:
            raise ValueError(f"SparseOptions needs channels_per_class >= 1, ratio >= 1 and epochs >= 0; got {self}")
        if k is None and (not self.candidates or self.candidates[0] < 1):
            raise ValueError(f"SparseOptions.candidates must be channel counts >= 1, got {self.candidates}")
        if not 0 <= self.tolerance < 1 or not 0 < self.validation < 1 or self.loss_se < 0:
            raise ValueError(f"SparseOptions needs 0 <= tolerance < 1, 0 < validation < 1 and loss_se >= 0; got {self}")
        if not 0 <= self.distill <= 1:
            raise ValueError(f"SparseOptions.distill must be in [0, 1], got {self.distill}")
        if self.channels_total is not None and self.channels_total < (k or self.candidates[-1]):
            raise ValueError(f"SparseOptions.channels_total ({self.channels_total}) is below the channels per class")

    @property
    def chosen(self) -> bool:
        """Whether K is chosen on validation images (rather than given)."""
        return self.channels_per_class is None

    def schedule(self, num_features: int) -> list[int]:
        """Channels per class after each round: 1/ratio per round down to K (or the largest candidate),
        then, when K is chosen, each smaller candidate."""
        top = self.channels_per_class or self.candidates[-1]
        ks = [top]
        while self.ratio > 1 and ks[-1] * self.ratio < num_features:
            ks.append(ks[-1] * self.ratio)
        return ks[::-1] + ([c for c in reversed(self.candidates) if c < top] if self.chosen else [])

    def escalation(self, num_features: int) -> list[int]:
        """The K tried, smallest first, when no candidate keeps the budget: twice the largest candidate,
        then the K of each earlier round (whose heads are kept for this), all below ``num_features``."""
        top = self.candidates[-1]
        rounds = [k for k in self.schedule(num_features) if k > top]
        return sorted(k for k in {2 * top, *rounds} if k < num_features)

    def shared_budget(self, k: int, num_features: int, num_classes: int) -> int | None:
        """The shared channel budget of a head with ``k`` channels per class (escalation): ``channels_total``
        scaled by ``k`` over the largest candidate, as long as that is a real limit."""
        if self.channels_total is None:
            return None
        total = self.channels_total * k // (self.channels_per_class or self.candidates[-1])
        return max(total, k) if total < min(k * num_classes, num_features) else None

    def budgets(self, num_features: int, num_classes: int) -> list[int | None]:
        """The shared channel budget of each round of :meth:`schedule` (None: no shared budget yet): the
        final ``channels_total``, ``ratio`` times more per earlier round, as long as that is a real limit."""
        ks = self.schedule(num_features)
        if self.channels_total is None:
            return [None] * len(ks)
        top = ks.index(self.channels_per_class or self.candidates[-1])
        out: list[int | None] = []
        for i, k in enumerate(ks):
            total = self.channels_total * self.ratio ** max(0, top - i)
            out.append(max(total, k) if total < min(k * num_classes, num_features) else None)
        return out


@torch.no_grad()
def class_importance(head: InfoDisentHead, source: FeatureSource) -> torch.Tensor:
    """(C, D): mean over each class's images of ``W[c, d] * v_d``."""
    head.eval()
    c, d = head.config.num_classes, head.config.num_features
    sums = torch.zeros(c, d, dtype=torch.float64)
    counts = torch.zeros(c, dtype=torch.float64)
    with head.frozen_parameters():
        for x, y in source.batches(None):
            v = head.forward_details(x.float()).v.double().cpu()
            sums.index_add_(0, y.cpu(), v)
            counts += torch.bincount(y.cpu(), minlength=c).double()
        W = head.W.detach().double().cpu()
    distributed.all_sum(sums)  # under torchrun each process saw part of the images
    distributed.all_sum(counts)
    return W * sums / counts.clamp_min(1)[:, None]


def shared_channels(importance: torch.Tensor, total: int) -> torch.Tensor:
    """The ``total`` channels that matter most to all classes together: each class's positive importance,
    normalised to sum 1 (so that classes with large logits do not dominate), summed over classes."""
    imp = importance.clamp_min(0)
    imp = torch.where(torch.isfinite(imp), imp, torch.zeros_like(imp))
    score = (imp / imp.sum(1, keepdim=True).clamp_min(1e-12)).sum(0)
    return score.topk(total).indices


def prune_head(head: InfoDisentHead, source: FeatureSource, channels_per_class: int,
               channels_total: int | None = None) -> InfoDisentHead:
    """A copy of ``head`` whose class ``c`` keeps only its ``channels_per_class`` most important channels.

    With ``channels_total``, all classes choose from one shared budget: the ``channels_total`` channels
    of :func:`shared_channels`, so that similar classes reuse a channel instead of each holding its own.
    """
    k = channels_per_class
    if not 1 <= k <= head.config.num_features:
        raise ValueError(f"channels_per_class must be in 1..{head.config.num_features}, got {k}")
    if channels_total is not None and not k <= channels_total <= head.config.num_features:
        raise ValueError(f"channels_total must be in {k}..{head.config.num_features}, got {channels_total}")
    imp = class_importance(head, source)
    if head.config.pruned:  # a later round: never revive a channel an earlier round removed
        imp[head.weight_mask.cpu() == 0] = float("-inf")
    if channels_total is not None:
        outside = torch.ones(imp.shape[1], dtype=torch.bool)
        outside[shared_channels(imp, channels_total)] = False
        imp[:, outside] = float("-inf")
    top = imp.topk(k, dim=1)
    # never keep a channel ruled out above (a class with fewer than k channels left keeps fewer)
    mask = torch.zeros_like(imp, dtype=torch.float32).scatter_(1, top.indices, torch.isfinite(top.values).float())
    pruned = InfoDisentHead(replace(head.config, pruned=True)).to(head.W.device)
    state = {k_: v for k_, v in head.state_dict().items() if k_ != "weight_mask"}
    pruned.load_state_dict(state, strict=False)
    pruned.set_mask(mask)
    return pruned


def sparsify(
    head: InfoDisentHead,
    options: SparseOptions,
    fit_config: FitConfig,
    train: FeatureSource,
    importance: FeatureSource,
    *,
    validation: FeatureSource | None = None,
    test: FeatureSource | None = None,
    first_epoch: int = 0,
    progress: bool = True,
    device: str | torch.device = "cpu",
    monitor: Monitor | None = None,
) -> tuple[InfoDisentHead, pd.DataFrame, KSelection | None]:
    """SIDE's second stage: prune ``head`` in rounds, fine-tuning after each; returns the pruned head,
    the history of its epochs (numbered on from ``first_epoch``) and, when K is chosen, the choice.

    ``importance``: the images that rank the channels (the un-augmented training view); ``validation``
    (needed when K is chosen): the held-out images K is chosen on; ``test``: evaluated each epoch for the history.
    """
    if options.chosen and validation is None:
        raise ValueError("choosing K needs validation images")
    d, c = head.config.num_features, head.config.num_classes
    ks, budgets = options.schedule(d), options.budgets(d, c)
    top = options.channels_per_class or options.candidates[-1]
    dense_val = HeldOut.of(head, validation, fit_config.amp) if options.chosen else None
    dense_head = copy.deepcopy(head).eval()  # the teacher when distilling, the fallback when escalating finds no K
    teacher = dense_head if options.distill > 0 else None
    escalate = options.chosen and options.escalate
    rows, epoch = [], first_epoch
    tried: dict[int, tuple[HeldOut, InfoDisentHead]] = {}  # K -> its held-out scores and head
    rounds: dict[int, InfoDisentHead] = {}  # K -> the head after that intermediate round (for escalation)

    def tune(h: InfoDisentHead, epochs: int, k: int) -> None:
        nonlocal epoch
        if epochs <= 0:
            return
        more = _finetune(h, options, fit_config, train, test, epochs, teacher, f"prune K={k}", epoch, progress,
                         device, monitor)
        more["channels_per_class"] = k
        epoch += epochs
        rows.append(more)

    def score(h: InfoDisentHead, k: int) -> HeldOut:
        scores = HeldOut.of(h, validation, fit_config.amp)
        tried[k] = scores, copy.deepcopy(h)
        last = rows[-1].index[-1]
        rows[-1].loc[last, "validation_top1"] = scores.top1
        rows[-1].loc[last, "validation_loss"] = scores.loss
        return scores

    for k, budget in zip(ks, budgets):
        head = prune_head(head, importance, k, budget)
        # from K (or the largest candidate) on, a round is the full fine-tuning: a candidate is judged
        # as the head it would give
        tune(head, options.finetune_epochs if k <= top else options.round_epochs, k)
        if options.chosen and k <= top:
            score(head, k)
        elif escalate:
            rounds[k] = copy.deepcopy(head)
    selection = None
    if options.chosen:
        selection = choose_k({k: s for k, (s, _) in tried.items()}, dense_val, options)
        head = tried[selection.channels_per_class][1]
        if escalate and not selection.within_tolerance:
            head, selection = _escalate(selection, rounds, dense_head, dense_val, options, importance, tune, score)
    return head, pd.concat(rows, ignore_index=True), selection


def _finetune(head: InfoDisentHead, options: SparseOptions, fit_config: FitConfig, train: FeatureSource,
              test: FeatureSource | None, epochs: int, teacher: InfoDisentHead | None, phase: str, first_epoch: int,
              progress: bool, device: str | torch.device, monitor: Monitor | None) -> pd.DataFrame:
    """Fine-tune ``head`` as pruning does (the fine-tuning learning rate, U trained or not, no warm-up);
    the history's epochs are numbered on from ``first_epoch``."""
    ft = replace(fit_config, epochs=epochs, lr=options.finetune_lr or fit_config.lr,
                 train_rotation=options.finetune_rotation, warmup_epochs=0, distill=options.distill)
    if monitor is not None:
        monitor.phase, monitor.offset = phase, first_epoch
    more = fit(head, train, test, ft, None, False, progress, device, monitor, teacher)
    more["epoch"] += first_epoch
    return more


def refit(head: InfoDisentHead, dense: InfoDisentHead, options: SparseOptions, fit_config: FitConfig,
          everything: FeatureSource, *, test: FeatureSource | None = None, first_epoch: int = 0, progress: bool = True,
          device: str | torch.device = "cpu", monitor: Monitor | None = None
          ) -> tuple[InfoDisentHead, InfoDisentHead, pd.DataFrame]:
    """After K is chosen on held-out images, every training image (``everything``) trains the final heads:
    the dense reference is trained again from the start on them (``fit_config``, its seed; with
    ``options.dense_reference``, else ``dense`` stays the reference), then a copy of the chosen ``head`` is
    fine-tuned on them for ``options.refit_epochs``. Returns the chosen head, the dense reference and their
    history (``phase`` "dense reference", then "refit"; epochs numbered on from ``first_epoch``). When the
    chosen head is the dense one (the fallback), the dense reference is it."""
    fallback = not head.config.pruned
    parts = []
    if options.dense_reference:
        torch.manual_seed(fit_config.seed)  # the same start as the first dense head (and on every process)
        dense = InfoDisentHead(replace(dense.config, pruned=False)).to(device)
        if monitor is not None:
            monitor.phase, monitor.offset = "dense reference", first_epoch
        more = fit(dense, everything, test if fallback else None, fit_config, None, False, progress, device, monitor)
        more["epoch"] += first_epoch
        first_epoch += fit_config.epochs
        parts.append(more.assign(phase="dense reference"))
    else:
        dense = copy.deepcopy(dense)
    chosen = dense if fallback else copy.deepcopy(head)
    if not fallback and options.refit_epochs > 0:
        teacher = dense.eval() if options.distill > 0 else None
        more = _finetune(chosen, options, fit_config, everything, test, options.refit_epochs, teacher, "refit",
                         first_epoch, progress, device, monitor)
        parts.append(more.assign(phase="refit"))
    return chosen, dense, pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _escalate(selection: KSelection, rounds: dict[int, InfoDisentHead], dense_head: InfoDisentHead,
              dense_val: HeldOut, options: SparseOptions, importance: FeatureSource,
              tune: Callable[[InfoDisentHead, int, int], None],
              score: Callable[[InfoDisentHead, int], HeldOut]) -> tuple[InfoDisentHead, KSelection]:
    """No candidate keeps the budget: try :meth:`SparseOptions.escalation`'s K, smallest first, each
    fine-tuned as a final head (a round's head for the rest of the fine-tuning, another K pruned from
    the next larger round's head), and keep the first within the budget, else the dense head."""
    d, c = dense_head.config.num_features, dense_head.config.num_classes
    went: dict[int, HeldOut] = {}
    for k in options.escalation(d):
        if k in rounds:
            head = copy.deepcopy(rounds[k])
            tune(head, max(options.finetune_epochs - options.round_epochs, 1), k)  # the rest of its fine-tuning
        else:
            larger = [r for r in rounds if r > k]
            base = rounds[min(larger)] if larger else dense_head
            head = prune_head(base, importance, k, options.shared_budget(k, d, c))
            tune(head, options.finetune_epochs, k)
        went[k] = score(head, k)
        lost, noise, within = budget_check(dense_val, went[k], options.tolerance)
        if within:
            return head, escalated(selection, went, k, lost, noise)
    return copy.deepcopy(dense_head), escalated(selection, went, None, 0.0, 0.0)


__all__ = ["SparseOptions", "class_importance", "prune_head", "refit", "shared_channels", "sparsify"]
