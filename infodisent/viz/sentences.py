"""Sentences built from results: what the command line prints, the report shows and the widgets say.

The records (:mod:`infodisent.records.results`) stay data; each function here reads one of them and
returns plain English, loud (``WARNING: ...``) where a promise is missed.

Example:
    >>> m = infodisent.open_run("runs/demo").metrics
    >>> print(compact_head(m.sparse)); print(budget(m.sparse.selection))
"""

from __future__ import annotations

from ..records.results import Accuracy, Agreement, FrontierPoint, KSelection, SanityChecks, SparseSummary


def agreement(a: Agreement) -> str:
    """One line on how closely the head follows the backbone's own classifier.

    Args:
        a: the agreement measured on one split."""
    which = "its ImageNet classifier read on these classes" if a.classifier == "imagenet" else "its own classifier"
    return (f"agreement with the backbone's black box ({which}): the same class on {100 * a.top1:.1f}% of "
            f"{a.num_images} images, KL(black box || InfoDisent) {a.kl:.3f} nats; the black box's own "
            f"top-1 {a.black_box.top1:.3f}")


def _refs(trained: float | None, untrained: float | None, chance: float) -> str:
    named = (("trained", trained), ("untrained head", untrained), ("chance", chance))
    return ", ".join(f"{name} {x:.3f}" for name, x in named if x is not None)


def sanity(checks: SanityChecks) -> str:
    """One line per sanity check, newline-separated.

    Args:
        checks: the checks recorded by :func:`infodisent.studies.sanity.sanity_checks`."""
    lines = [f"sanity, the last {m.stages} stage{'s' if m.stages > 1 else ''} of the backbone re-initialised: "
             f"channel maps' rank correlation {m.map_spearman:.2f}, SSIM {m.map_ssim:.2f}; contributions' rank "
             f"correlation {m.ranking_spearman:.2f}; top-1 {m.top1:.2f}" for m in checks.model]
    if checks.labels is not None:
        s = checks.labels
        lines.append(f"sanity, labels shuffled: purity {s.purity:.3f} "
                     f"({_refs(s.purity_trained, s.purity_untrained, s.purity_chance)}), pointing game "
                     f"{s.pointing_game:.3f} ({_refs(s.pointing_game_trained, s.pointing_game_untrained, s.pointing_game_chance)}), "
                     f"top-1 {s.top1:.3f}")
    return "\n".join(lines)


def _lost(sel: KSelection, k: int, lost: float | None = None) -> str:
    """``K=k loses x points`` (``lost``: the paired loss; default: the difference of the top-1s)."""
    lost = sel.dense_top1 - sel.top1[str(k)] if lost is None else lost
    did = f"loses {100 * lost:.1f} points" if lost > 0 else f"gains {-100 * lost:.1f} points" if lost < 0 \
        else "loses nothing"
    return f"K={k} {did}"


def budget(sel: KSelection) -> str:
    """One sentence on the accuracy budget: loud when it is missed or the dense head is shown instead.

    Args:
        sel: how K was chosen (``metrics.sparse.selection``)."""
    within = f"the {100 * sel.tolerance:.1f}-point budget"
    ref = f"against the dense head ({sel.dense_top1:.3f} on {sel.images} held-out images)"
    if sel.fallback:
        went = ", ".join(_lost(sel, a) for a in [sel.rule_k, *sel.escalated])
        return (f"WARNING: no compact head within {within} of held-out top-1 {ref}: {went}; "
                "the dense head is shown (every channel counts in every decision)")
    k = sel.channels_per_class
    lost = sel.dense_top1 - sel.top1[str(k)] if sel.lost is None else sel.lost
    said = f"{_lost(sel, k, lost)} of held-out top-1 {ref}"
    if sel.escalated:
        said = (f"{_lost(sel, sel.rule_k)} (the loss rule's choice), outside {within}; "
                f"going up ({', '.join(f'K={a}' for a in sel.escalated)}), {said}")
    if not sel.within_tolerance:
        return (f"WARNING: {said}: OUTSIDE {within}; the compact head is kept: compare it with the dense "
                "head (metrics 'sparse.dense') before trusting its accuracy")
    if sel.noise is not None and lost > sel.tolerance:
        return (f"{said}: not measurably outside {within} ({sel.images} images cannot resolve less than "
                f"{100 * (sel.tolerance + sel.noise):.1f} points)")
    return f"{said}: within {within}"


def compact_head(summary: SparseSummary) -> str:
    """K, how it was chosen, what compactness cost on the test split and, loudly, a missed budget.

    Args:
        summary: what pruning did (``metrics.sparse``)."""
    k, sel = summary.channels_per_class, summary.selection
    how = "given"
    if sel is not None:
        order = sorted(sel.top1, key=lambda a: -int(a))
        if sel.loss:
            tried = ", ".join(f"K={a}: {sel.loss[a]:.3f}" for a in order)
            how = (f"chosen on {sel.images} held-out training images by calibrated loss "
                   f"(dense {sel.dense_loss:.3f}; {tried}); {budget(sel)}")
        else:  # no losses recorded: the candidates' held-out top-1 alone
            tried = ", ".join(f"K={a}: {sel.top1[a]:.3f}" for a in order)
            how = f"chosen on {sel.images} held-out training images (dense {sel.dense_top1:.3f}; {tried})"
    head = f"compact head: {k} channels per class" if k is not None else "dense head (fallback)"
    then = f"; then fine-tuned {summary.refit_epochs} epochs on every training image" if summary.refit_epochs else ""
    if summary.dense_fit is None:
        return f"{head}, {how}{then}; test top-1 of the dense head before pruning: {summary.dense.top1:.4f}"
    return (f"{head}, {how}{then}; test top-1 of the dense head trained on every training image: "
            f"{summary.dense.top1:.4f} ({summary.dense_fit.top1:.4f} without the held-out images)")


def compactness_cost(summary: SparseSummary, compact: Accuracy) -> str:
    """What compactness costs, at a glance: the shipped head's test top-1 against the dense head's.

    Args:
        summary: what pruning did (``metrics.sparse``).
        compact: the shipped head's test accuracy (``metrics.infodisent``)."""
    if summary.channels_per_class is None:
        return (f"no compact head kept the accuracy budget: the dense head is shown (test top-1 "
                f"{summary.dense.top1:.3f})")
    d = compact.top1 - summary.dense.top1
    return (f"cost of compactness: {summary.channels_per_class} channels per class, test top-1 {compact.top1:.3f} "
            f"against {summary.dense.top1:.3f} dense ({100 * d:+.1f} points)")


def frontier_steps(points: list[FrontierPoint]) -> str:
    """One sentence on what each step down in K costs and buys: the test top-1 lost, and the channels a
    reader saves (local size) and, where measured, the consistency gained, from the largest compact K down;
    empty with fewer than two compact heads.

    Args:
        points: the kept heads (``metrics.frontier``)."""
    compact = sorted((p for p in points if p.channels_per_class is not None), key=lambda p: -p.channels_per_class)
    if len(compact) < 2:
        return ""
    steps = []
    for a, b in zip(compact, compact[1:]):
        lost = 100 * (a.test.top1 - b.test.top1)
        step = (f"K={a.channels_per_class}→{b.channels_per_class} "
                f"{'costs' if lost >= 0 else 'gains'} {abs(lost):.1f} points of top-1 for "
                f"{a.local_size - b.local_size:.1f} fewer channels per decision")
        if a.consistency is not None and b.consistency is not None:
            step += f" and {b.consistency - a.consistency:+.3f} consistency"
        steps.append(step)
    return "Each step down in K: " + "; ".join(steps)


__all__ = ["agreement", "budget", "compact_head", "compactness_cost", "frontier_steps", "sanity"]
