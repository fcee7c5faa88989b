"""Explanation metrics computed from pooled values ``v`` and the head's ``W``.

All functions take arrays: ``V`` (N, D) pooled channel values of N images,
``W`` (C, D) the classifier, ``bias`` (C,) or None, ``labels`` (N,). A
prototype index (:class:`~infodisent.explain.prototypes.PrototypeIndex`) holds ``V``
for a split, so none of these needs a pixel.

What is computed: accuracy (top-1, top-5), the explanation sizes (PIP-Net's global and local size,
channels for 90 % of the evidence, channels above 0.2 of the largest contribution, the top-4 share)
and faithfulness (the logit and accuracy curves as the top or random channels are removed, and the
areas between them). Each is defined once, exactly, in docs/reference.md, "Metrics: definitions".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..records.options import WEIGHT_THRESHOLD
from ..records.results import Accuracy, Faithfulness, Sizes

DEFAULT_KS = (0, 1, 2, 4, 8, 16, 32, 64)


def logits_of(V: np.ndarray, W: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """The head's logits ``V @ W.T + bias``, in float64.

    Args:
        V: pooled channel values, ``(N, D)``.
        W: the classifier, ``(C, D)``.
        bias: the class biases, ``(C,)``. Default None: no bias.
    Returns:
        The logits, ``(N, C)``."""
    z = np.asarray(V, np.float64) @ np.asarray(W, np.float64).T
    return z + bias if bias is not None else z


def accuracy(logits: np.ndarray, labels: np.ndarray) -> Accuracy:
    """Top-1 and top-5 accuracy (top-k over min(5, C) classes); NaN for no images.

    Args:
        logits: ``(N, C)`` class scores.
        labels: ``(N,)`` true classes."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return Accuracy(float("nan"), float("nan"))
    k = min(5, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return Accuracy(float((top[:, 0] == labels).mean()), float((top == labels[:, None]).any(1).mean()))


def global_size(W: np.ndarray, threshold: float = WEIGHT_THRESHOLD) -> int:
    """PIP-Net's global size: channels with ``max_c W[c, d] > threshold``.

    Args:
        W: the classifier, ``(C, D)``.
        threshold: the weight above which a channel has a say in a class. Default
            :data:`~infodisent.records.options.WEIGHT_THRESHOLD`."""
    return int((np.asarray(W).max(axis=0) > threshold).sum())


def _predicted(V, W, bias):
    return logits_of(V, W, bias).argmax(1)


def explanation_sizes(
    V: np.ndarray,
    W: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    threshold: float = WEIGHT_THRESHOLD,
    mass: float = 0.9,
    relative: float = 0.2,
    top: int = 4,
) -> pd.DataFrame:
    """Per image: ``predicted``, ``local_size``, ``channels_for_mass``, ``above_relative``, ``top_share``.

    Each is measured against the predicted class and defined in docs/reference.md, "Metrics: definitions".

    Args:
        V: pooled channel values, ``(N, D)``.
        W: the classifier, ``(C, D)``.
        bias: the class biases, ``(C,)``. Default None: no bias.
        threshold: the weight above which a channel has a say in a class (``local_size``). Default
            :data:`~infodisent.records.options.WEIGHT_THRESHOLD`.
        mass: the share of the positive evidence that ``channels_for_mass`` must reach. Default 0.9.
        relative: the fraction of the largest contribution that ``above_relative`` counts from. Default 0.2.
        top: how many of the largest contributions ``top_share`` adds up. Default 4.
    Returns:
        A DataFrame with one row per image."""
    V, W = np.asarray(V, np.float64), np.asarray(W, np.float64)
    pred = _predicted(V, W, bias)
    Wp = W[pred]
    contrib = Wp * V
    local = ((Wp > threshold) & (V != 0)).sum(1)
    pos = np.clip(contrib, 0, None)
    srt = -np.sort(-pos, axis=1)
    total = srt.sum(1)
    csum = np.cumsum(srt, axis=1)
    reach = np.where(total > 0, (csum < mass * total[:, None] - 1e-12).sum(1) + 1, 0)
    cmax = contrib.max(1)
    above = np.where(cmax > 0, (contrib >= relative * cmax[:, None]).sum(1), 0)
    top_share = np.where(total > 0, srt[:, :top].sum(1) / np.where(total > 0, total, 1), np.nan)
    return pd.DataFrame({"predicted": pred, "local_size": local, "channels_for_mass": reach,
                         "above_relative": above, "top_share": top_share})


def size_summary(V, W, bias=None, *, threshold=WEIGHT_THRESHOLD, mass=0.9, relative=0.2, top=4) -> Sizes:
    """The size metrics (means over images; see the module docstring).

    Args:
        V: pooled channel values, ``(N, D)``.
        W: the classifier, ``(C, D)``.
        bias: the class biases, ``(C,)``. Default None: no bias.
        threshold: the weight above which a channel has a say in a class. Default
            :data:`~infodisent.records.options.WEIGHT_THRESHOLD`.
        mass: the share of the positive evidence that ``channels_for_mass`` must reach. Default 0.9.
        relative: the fraction of the largest contribution that ``above_relative`` counts from. Default 0.2.
        top: how many of the largest contributions ``top_share`` adds up. Default 4.
    Returns:
        The means over the images, with the global size and the settings used."""
    per = explanation_sizes(V, W, bias, threshold=threshold, mass=mass, relative=relative, top=top)
    return Sizes(
        num_channels=int(np.asarray(W).shape[1]),
        global_size=global_size(W, threshold),
        local_size=float(per["local_size"].mean()),
        channels_for_mass=float(per["channels_for_mass"].mean()),
        above_relative=float(per["above_relative"].mean()),
        top_share=float(per["top_share"].mean()),
        nonzero_weights_per_class=float((np.asarray(W) > threshold).sum(1).mean()),
        mass=mass, relative=relative, top=top,
    )


def faithfulness(
    V: np.ndarray,
    W: np.ndarray,
    bias: np.ndarray | None,
    labels: np.ndarray,
    ks: tuple[int, ...] = DEFAULT_KS,
    repeats: int = 5,
    seed: int = 0,
) -> Faithfulness:
    """Remove (zero) the top-k contributing vs. k random channels of each decision; see the module docstring.

    Args:
        V: pooled channel values, ``(N, D)``.
        W: the classifier, ``(C, D)``.
        bias: the class biases, ``(C,)``, or None for no bias.
        labels: ``(N,)`` true classes, for the accuracy curves.
        ks: the numbers of channels removed; those above ``D`` are dropped. Default ``DEFAULT_KS``
            (0 to 64 in powers of two).
        repeats: random orders averaged for the random curves. Default 5.
        seed: the seed of those orders. Default 0.
    Returns:
        The curves per k and the areas between the top and random curves (logit drop and accuracy)."""
    V, W, labels = np.asarray(V, np.float64), np.asarray(W, np.float64), np.asarray(labels)
    n, d = V.shape
    ks = tuple(k for k in ks if k <= d)
    logits = logits_of(V, W, bias)
    pred = logits.argmax(1)
    base = logits[np.arange(n), pred]
    order = np.argsort(-(W[pred] * V), axis=1, kind="stable")
    rng = np.random.default_rng(seed)
    rand_orders = [np.argsort(rng.random((n, d)), axis=1) for _ in range(repeats)]
    rows = []
    for k in ks:
        res = {"k": k}
        for name, orders in (("top", [order]), ("random", rand_orders)):
            drops, accs = [], []
            for o in orders:
                Vk = V.copy()
                np.put_along_axis(Vk, o[:, :k], 0.0, axis=1)
                lk = logits_of(Vk, W, bias)
                drops.append(float((base - lk[np.arange(n), pred]).mean()))
                accs.append(float((lk.argmax(1) == labels).mean()))
            res[f"logit_drop_{name}"] = float(np.mean(drops))
            res[f"accuracy_{name}"] = float(np.mean(accs))
        rows.append(res)
    curves = pd.DataFrame(rows)
    x = np.linspace(0.0, 1.0, len(ks)) if len(ks) > 1 else np.zeros(1)
    gap_logit = (curves["logit_drop_top"] - curves["logit_drop_random"]).to_numpy()
    gap_acc = (curves["accuracy_random"] - curves["accuracy_top"]).to_numpy()
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 lacks trapezoid
    area = (lambda y: float(trapezoid(y, x)) if len(ks) > 1 else float(y[0]))
    return Faithfulness(curves, area(gap_logit), area(gap_acc))


__all__ = [
    "DEFAULT_KS", "Faithfulness", "WEIGHT_THRESHOLD", "accuracy", "explanation_sizes", "faithfulness",
    "global_size", "logits_of", "size_summary",
]
