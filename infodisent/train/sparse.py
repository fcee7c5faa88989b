"""SIDE-style sparse heads (Dubovik et al., arXiv 2507.19321): prune each class to K channels.

This is the default run (:class:`SparseOptions` in ``RunConfig.sparse``): a dense head spreads a
decision over most of its channels, a pruned one over K, which a person can check. K is chosen by the data
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
re-specialise for the few classes they now serve. Both matter (the ablation
grid measures each: ``docs/results/ablation-grid.md``). Each fine-tune starts at the training rates times the share of the dense
head's evidence the head has lost (:func:`finetune_rates`): a head the masks
barely moved stays near the dense optimum, one that lost most of its evidence
gets the full rate. Every head fine-tuned as a final one is kept (the frontier,
:mod:`infodisent.eval.frontier`).
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
from typing import Callable, NamedTuple

import pandas as pd
import torch
from torch import nn

from .. import distributed
from ..core.head import InfoDisentHead
from ..data.sources import FeatureSource
from ..errors import InputError
from ..records.options import FitConfig, SparseOptions
from ..records.results import KSelection
from .monitor import Monitor
from .selection import HeldOut, budget_check, choose_k, escalated
from .training import fit


class Pruned(NamedTuple):
    """What :func:`sparsify` gives: the head it chose, the history of its epochs, how K was chosen (None when
    given), every head it fine-tuned as a final one, with its held-out scores (K -> (scores, head); the
    scores None when K was given), and the share of the dense head's evidence each one has lost to its
    prunes (K -> share, :func:`lost_evidence`: what its fine-tuning rate was scaled by)."""

    head: InfoDisentHead
    history: pd.DataFrame
    selection: KSelection | None
    candidates: dict[int, tuple[HeldOut | None, InfoDisentHead]]
    lost: dict[int, float]


class Refitted(NamedTuple):
    """What :func:`refit` gives: the chosen head, the dense reference, their history and every candidate
    refit as the chosen one was (K -> head)."""

    head: InfoDisentHead
    dense: InfoDisentHead
    history: pd.DataFrame
    candidates: dict[int, InfoDisentHead]


@torch.no_grad()
def class_importance(head: InfoDisentHead, source: FeatureSource) -> torch.Tensor:
    """(C, D): mean over each class's images of ``W[c, d] * v_d``.

    Args:
        head: the head (put in eval mode).
        source: the images that rank the channels (under torchrun, summed over every process's part).
    Returns:
        A float64 tensor on the CPU; a class without images has zeros."""
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
    normalised to sum 1 (so that classes with large logits do not dominate), summed over classes.

    Args:
        importance: ``(C, D)``, as :func:`class_importance` gives it (non-finite entries count as 0).
        total: how many channels are returned.
    Returns:
        The channel indices, most important first."""
    imp = importance.clamp_min(0)
    imp = torch.where(torch.isfinite(imp), imp, torch.zeros_like(imp))
    score = (imp / imp.sum(1, keepdim=True).clamp_min(1e-12)).sum(0)
    return score.topk(total).indices


def removed_evidence(importance: torch.Tensor, mask: torch.Tensor) -> float:
    """The share of its positive evidence (``importance`` clamped at 0, :func:`class_importance`) that a
    class loses to ``mask`` (1: kept), averaged over the classes that had any: 0 when nothing that mattered
    went, 1 when all of it did.

    Args:
        importance: ``(C, D)``, as :func:`class_importance` gives it.
        mask: ``(C, D)``, 1 where a weight is kept, 0 where it is pruned."""
    imp = importance.clamp_min(0)
    imp = torch.where(torch.isfinite(imp), imp, torch.zeros_like(imp))
    total = imp.sum(1)
    lost = (imp * (1 - mask.to(imp))).sum(1)
    has = total > 0
    return float((lost[has] / total[has]).mean()) if bool(has.any()) else 0.0


def prune_head(head: InfoDisentHead, source: FeatureSource, channels_per_class: int,
               channels_total: int | None = None, *, importance: torch.Tensor | None = None) -> InfoDisentHead:
    """A copy of ``head`` whose class ``c`` keeps only its ``channels_per_class`` most important channels.

    With ``channels_total``, all classes choose from one shared budget: the ``channels_total`` channels
    of :func:`shared_channels`, so that similar classes reuse a channel instead of each holding its own.
    ``importance``: ``class_importance(head, source)`` when already computed (default None: computed here).

    Args:
        head: the head pruned (dense, or pruned by an earlier round, whose removed channels stay removed);
            it is left unchanged.
        source: the images that rank the channels (:func:`class_importance`).
        channels_per_class: K, the channels each class keeps, in ``1..D``.
        channels_total: the shared budget, in ``K..D``. Default None: each class chooses from every channel.
        importance: the ranking, ``(C, D)``. Default None: computed from ``source``.
    Returns:
        A pruned head (``HeadConfig(pruned=True)``) on ``head``'s device.
    """
    k = channels_per_class
    if not 1 <= k <= head.config.num_features:
        raise InputError(f"channels_per_class must be in 1..{head.config.num_features}, got {k}")
    if channels_total is not None and not k <= channels_total <= head.config.num_features:
        raise InputError(f"channels_total must be in {k}..{head.config.num_features}, got {channels_total}")
    imp = (class_importance(head, source) if importance is None else importance).clone()
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
) -> Pruned:
    """SIDE's second stage: prune ``head`` in rounds, fine-tuning after each; returns the pruned head,
    the history of its epochs (numbered on from ``first_epoch``), when K is chosen the choice, and every
    head fine-tuned as a final one (each candidate, each K escalation tried and the ``options.frontier`` K
    beside them; with K given, that head and the frontier's K).

    ``importance``: the images that rank the channels (the un-augmented training view); ``validation``
    (needed when K is chosen): the held-out images K is chosen on; ``test``: evaluated at the end of each
    fine-tune for the history.

    Args:
        head: the trained dense head.
        options: the pruning options: K or its candidates, rounds, fine-tuning, budget, frontier.
        fit_config: the dense training's options; each fine-tune takes them with its own epochs and rates
            (:func:`finetune_rates`).
        train: the features fine-tuning trains on.
        importance: the features that rank the channels.
        validation: the held-out features K is chosen on. Default None (then ``options`` must give K).
        test: features evaluated at the end of each fine-tune. Default None: none.
        first_epoch: the number the history's epochs count on from. Default 0.
        progress: show progress bars. Default True.
        device: where the heads train. Default ``"cpu"``.
        monitor: hooks told of every epoch, which may ask the training to stop. Default None.
        teacher: a module whose logits every fine-tune matches (the black box). Default None: the dense head
            when ``options.distill > 0``, else no distillation.
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
    shares: dict[int, float] = {}  # K -> the dense head's evidence it lost (its fine-tuning rate's scale)
    # K -> the head after that intermediate round and the dense head's evidence it lost (for the branches)
    rounds: dict[int, tuple[InfoDisentHead, float]] = {}

    def tune(h: InfoDisentHead, epochs: int, k: int, lost: float) -> None:
        nonlocal epoch
        if epochs <= 0:
            return
        more = _finetune(h, options, fit_config, train, test, epochs, teacher, f"prune K={k}", epoch, progress,
                         device, monitor, lost)
        more["channels_per_class"] = k
        more["evidence_lost"] = lost
        shares[k] = lost
        epoch += epochs
        rows.append(more)

    def score(h: InfoDisentHead, k: int) -> HeldOut:
        scores = HeldOut.of(h, validation, fit_config.amp)
        tried[k] = scores, copy.deepcopy(h)
        last = rows[-1].index[-1]
        rows[-1].loc[last, "validation_top1"] = scores.top1
        rows[-1].loc[last, "validation_loss"] = scores.loss
        return scores

    def branch(k: int) -> InfoDisentHead:
        """A head of K=k beside the rounds, fine-tuned as a final head: a round's head for the rest of its
        fine-tuning, else pruned from the next larger round's head (or the dense one)."""
        if k in rounds:
            h, lost = copy.deepcopy(rounds[k][0]), rounds[k][1]
            tune(h, max(options.finetune_epochs - options.round_epochs, 1), k, lost)  # the rest of its fine-tuning
            return h
        larger = [r for r in rounds if r > k]
        base, before = rounds[min(larger)] if larger else (dense_head, 0.0)
        imp = class_importance(base, importance)
        h = prune_head(base, importance, k, options.shared_budget(k, d, c), importance=imp)
        tune(h, options.finetune_epochs, k, lost_evidence(before, removed_evidence(imp, h.weight_mask.cpu())))
        return h

    def extras_above(k: int) -> None:
        """Train the frontier's K above ``k`` not trained yet (each beside the rounds, from the round above it)."""
        for e in [e for e in pending if e > k]:
            pending.remove(e)
            extra = branch(e)
            if options.chosen:
                score(extra, e)
            else:
                tried[e] = None, extra

    pending = options.extra_frontier(d)  # kept beside the candidates, never chosen by the rule
    lost = 0.0  # of the dense head's evidence, by the rounds so far
    for k, budget in zip(ks, budgets):
        extras_above(k)  # in the history's order of K, largest first
        imp = class_importance(head, importance)
        head = prune_head(head, importance, k, budget, importance=imp)
        lost = lost_evidence(lost, removed_evidence(imp, head.weight_mask.cpu()))
        # from K (or the largest candidate) on, a round is the full fine-tuning: a candidate is judged
        # as the head it would give
        tune(head, options.finetune_epochs if k <= top else options.round_epochs, k, lost)
        if options.chosen and k <= top:
            score(head, k)
        elif k > top:
            rounds[k] = copy.deepcopy(head), lost
    if not options.chosen:
        tried[top] = None, head
    chosen_head = head
    extras_above(0)
    selection = None
    if options.chosen:
        selection = choose_k({k: s for k, (s, _) in tried.items() if k in options.candidates}, dense_val, options)
        chosen_head = tried[selection.channels_per_class][1]
        if escalate and not selection.within_tolerance:
            chosen_head, selection = _escalate(selection, tried, dense_head, dense_val, options, branch, score)
    return Pruned(chosen_head, pd.concat(rows, ignore_index=True), selection, tried,
                  {k: shares.get(k, 0.0) for k in tried})


def lost_evidence(before: float, removed: float) -> float:
    """The share of the dense head's evidence a head has lost when a prune takes ``removed`` of what is left
    to a head that had lost ``before``: ``1 - (1 - before)(1 - removed)``.

    Args:
        before: the share already lost, in ``[0, 1]``.
        removed: the share of what was left that the prune takes (:func:`removed_evidence`)."""
    return 1.0 - (1.0 - before) * (1.0 - removed)


def finetune_rates(options: SparseOptions, fit_config: FitConfig, lost: float) -> tuple[float, float]:
    """The learning rates of ``W`` and of ``U`` for a fine-tune of a head that has lost ``lost`` of the dense
    head's evidence to its prunes (:func:`lost_evidence` over :func:`removed_evidence` of each): the run's
    rates times ``lost``, at least ``options.finetune_lr_min`` of them, so that a head the masks barely changed
    is not shaken out of the dense head's minimum (the full rate from a converged head loses accuracy with
    nothing pruned at all), while a head far from the dense one gets the full rate it needs to re-specialise
    its few channels. ``options.finetune_lr`` set: that rate for ``W``, the run's for ``U``, unscaled.

    Args:
        options: the pruning options (``finetune_lr``, ``finetune_lr_min``).
        fit_config: the run's training options (``lr``, ``rotation_lr``).
        lost: the share of the dense head's evidence lost, in ``[0, 1]``.
    Returns:
        ``(lr, rotation_lr)``."""
    if options.finetune_lr is not None:
        return options.finetune_lr, fit_config.rotation_lr
    scale = min(1.0, max(options.finetune_lr_min, lost))
    return fit_config.lr * scale, fit_config.rotation_lr * scale


def _finetune(head: InfoDisentHead, options: SparseOptions, fit_config: FitConfig, train: FeatureSource,
              test: FeatureSource | None, epochs: int, teacher: InfoDisentHead | None, phase: str, first_epoch: int,
              progress: bool, device: str | torch.device, monitor: Monitor | None, lost: float) -> pd.DataFrame:
    """Fine-tune ``head`` as pruning does (:func:`finetune_rates` of the ``lost`` share of the dense evidence,
    U trained or not, no warm-up, ``test`` evaluated after the last epoch only: a pass over it costs about a
    third of a training epoch); the history's epochs are numbered on from ``first_epoch``."""
    lr, rotation_lr = finetune_rates(options, fit_config, lost)
    ft = replace(fit_config, epochs=epochs, lr=lr, rotation_lr=rotation_lr, eval_every=0,
                 train_rotation=options.finetune_rotation, warmup_epochs=0, distill=options.distill)
    if monitor is not None:
        monitor.phase, monitor.offset = phase, first_epoch
    more = fit(head, train, test, ft, None, False, progress, device, monitor, teacher)
    more["epoch"] += first_epoch
    return more


def refit(head: InfoDisentHead, dense: InfoDisentHead, options: SparseOptions, fit_config: FitConfig,
          everything: FeatureSource, *, candidates: dict[int, InfoDisentHead] | None = None,
          lost: dict[int, float] | None = None, test: FeatureSource | None = None, first_epoch: int = 0, progress: bool = True,
          device: str | torch.device = "cpu", monitor: Monitor | None = None, teacher: nn.Module | None = None,
          ) -> Refitted:
    """After K is chosen on held-out images, every training image (``everything``) trains the final heads:
    the dense reference is trained again from the start on them (``fit_config``, its seed; with
    ``options.dense_reference``, else ``dense`` stays the reference), then a copy of the chosen ``head`` and
    of each of the other ``candidates`` (K -> head, default none: the frontier a run keeps) is fine-tuned on
    them for ``options.refit_epochs``, each at the rate of its last fine-tune (:func:`finetune_rates` of the
    dense evidence it has lost, ``lost``: K -> share; default, or a K not in it: the lowest rate), as if
    that fine-tune went on with the held-out images added. Returns the chosen
    head, the dense reference, their history (``phase`` "dense reference", then "refit" with each head's
    ``channels_per_class``; epochs numbered on from ``first_epoch``) and the refit candidates, the chosen
    one among them. When the chosen head is the dense one (the fallback), the dense reference is it. A
    ``teacher`` (the black box) is matched by every training, as by the first.

    Args:
        head: the chosen head (pruned, or the dense head when no K kept the budget).
        dense: the dense head trained on the training images without the held-out ones.
        options: the pruning options (``dense_reference``, ``refit_epochs``, ``distill``, rates).
        fit_config: the run's training options, for the dense reference and as the fine-tunes' base.
        everything: every training image's features.
        candidates: the other heads refit beside the chosen one (K -> head). Default None: none.
        lost: the share of the dense evidence each candidate has lost (K -> share). Default None: the lowest
            rate for every head.
        test: features evaluated after the dense reference's training (in the fallback) and after the chosen
            head's fine-tune. Default None: none.
        first_epoch: the number the history's epochs count on from. Default 0.
        progress: show progress bars. Default True.
        device: where the heads train. Default ``"cpu"``.
        monitor: hooks told of every epoch, which may ask the training to stop. Default None.
        teacher: a module whose logits every training matches. Default None: the dense reference when
            ``options.distill > 0``, else no distillation."""
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
    heads = {k: copy.deepcopy(h) for k, h in (candidates or {}).items()}
    chosen = dense if fallback else next((h for h in heads.values() if _same(h, head)), None)
    if chosen is None:
        chosen = heads[int((head.weight_mask > 0).sum(1).max())] = copy.deepcopy(head)
    if options.refit_epochs > 0 and heads:
        if teacher is None:
            teacher = dense.eval() if options.distill > 0 else None
        # the chosen head first, then the others from the largest K; test top-1 in the history for the chosen
        # head only (each epoch costs a pass over the test split)
        for k in sorted(heads, key=lambda a: (heads[a] is not chosen, -a)):
            shown = heads[k] is chosen
            more = _finetune(heads[k], options, fit_config, everything, test if shown else None,
                             options.refit_epochs, teacher, "refit" if shown else f"refit K={k}", first_epoch,
                             progress, device, monitor, (lost or {}).get(k, 0.0))
            first_epoch += options.refit_epochs
            parts.append(more.assign(phase="refit" if shown else "refit candidate", channels_per_class=k))
    return Refitted(chosen, dense, pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(), heads)


def _same(a: InfoDisentHead, b: InfoDisentHead) -> bool:
    """Whether two heads hold the same parameters (the chosen head among the candidates)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _escalate(selection: KSelection, tried: dict[int, tuple[HeldOut, InfoDisentHead]], dense_head: InfoDisentHead,
              dense_val: HeldOut, options: SparseOptions, branch: Callable[[int], InfoDisentHead],
              score: Callable[[InfoDisentHead, int], HeldOut]) -> tuple[InfoDisentHead, KSelection]:
    """No candidate keeps the budget: try :meth:`SparseOptions.escalation`'s K, smallest first, each
    fine-tuned as a final head (``branch``; a K the frontier already trained is taken as it is), and keep
    the first within the budget, else the dense head."""
    went: dict[int, HeldOut] = {}
    for k in options.escalation(dense_head.config.num_features):
        if k in tried:
            went[k], head = tried[k]
        else:
            head = branch(k)
            went[k] = score(head, k)
        lost, noise, within = budget_check(dense_val, went[k], options.tolerance)
        if within:
            return head, escalated(selection, went, k, lost, noise)
    return copy.deepcopy(dense_head), escalated(selection, went, None, 0.0, 0.0)


__all__ = ["Pruned", "Refitted", "class_importance", "finetune_rates", "lost_evidence", "prune_head",
           "refit", "removed_evidence", "shared_channels", "sparsify"]
