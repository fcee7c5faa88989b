"""SIDE-style sparse heads (Dubovik et al., arXiv 2507.19321): prune each class to K channels.

This is the default run (:class:`SparseOptions` in ``RunConfig.sparse``): a dense head spreads a
decision over ~900 channels, a pruned one over K, which a person can check. K is chosen by the data
(:func:`sparsify`): the smallest of a short list whose calibrated loss on held-out training images is
within one standard error of the best candidate's; the head is then checked against a half-point
accuracy budget (:mod:`infodisent.train.selection`). A measured miss sends the choice up to larger K and,
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
from dataclasses import replace
from typing import Callable

import pandas as pd
import torch
from torch import nn

from ..core.head import InfoDisentHead
from ..core.options import FitConfig, SparseOptions
from ..data import distributed
from ..data.sources import FeatureSource
from ..errors import InputError
from ..eval.results import KSelection
from .monitor import Monitor
from .selection import HeldOut, budget_check, choose_k, escalated
from .training import fit


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
        raise InputError(f"channels_per_class must be in 1..{head.config.num_features}, got {k}")
    if channels_total is not None and not k <= channels_total <= head.config.num_features:
        raise InputError(f"channels_total must be in {k}..{head.config.num_features}, got {channels_total}")
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
    teacher: nn.Module | None = None,
) -> tuple[InfoDisentHead, pd.DataFrame, KSelection | None]:
    """SIDE's second stage: prune ``head`` in rounds, fine-tuning after each; returns the pruned head,
    the history of its epochs (numbered on from ``first_epoch``) and, when K is chosen, the choice.

    ``importance``: the images that rank the channels (the un-augmented training view); ``validation``
    (needed when K is chosen): the held-out images K is chosen on; ``test``: evaluated each epoch for the history.
    """
    if options.chosen and validation is None:
        raise InputError("choosing K needs validation images")
    d, c = head.config.num_features, head.config.num_classes
    ks, budgets = options.schedule(d), options.budgets(d, c)
    top = options.channels_per_class or options.candidates[-1]
    dense_val = HeldOut.of(head, validation, fit_config.amp) if options.chosen else None
    dense_head = copy.deepcopy(head).eval()  # the teacher when distilling, the fallback when escalating finds no K
    if teacher is None:  # ``teacher`` (the black box) given: fine-tuning matches it, not the dense head
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
          device: str | torch.device = "cpu", monitor: Monitor | None = None, teacher: nn.Module | None = None,
          ) -> tuple[InfoDisentHead, InfoDisentHead, pd.DataFrame]:
    """After K is chosen on held-out images, every training image (``everything``) trains the final heads:
    the dense reference is trained again from the start on them (``fit_config``, its seed; with
    ``options.dense_reference``, else ``dense`` stays the reference), then a copy of the chosen ``head`` is
    fine-tuned on them for ``options.refit_epochs``. Returns the chosen head, the dense reference and their
    history (``phase`` "dense reference", then "refit"; epochs numbered on from ``first_epoch``). When the
    chosen head is the dense one (the fallback), the dense reference is it. A ``teacher`` (the black box)
    is matched by both trainings, as by the first."""
    fallback = not head.config.pruned
    parts = []
    if options.dense_reference:
        torch.manual_seed(fit_config.seed)  # the same start as the first dense head (and on every process)
        dense = InfoDisentHead(replace(dense.config, pruned=False)).to(device)
        if monitor is not None:
            monitor.phase, monitor.offset = "dense reference", first_epoch
        more = fit(dense, everything, test if fallback else None, fit_config, None, False, progress, device, monitor,
                   teacher)
        more["epoch"] += first_epoch
        first_epoch += fit_config.epochs
        parts.append(more.assign(phase="dense reference"))
    else:
        dense = copy.deepcopy(dense)
    chosen = dense if fallback else copy.deepcopy(head)
    if not fallback and options.refit_epochs > 0:
        if teacher is None:
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
