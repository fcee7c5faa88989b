"""The black-box reference: a linear probe on globally average-pooled features.

Multinomial logistic regression trained to convergence with full-batch L-BFGS
on standardised features; the L2 strength is chosen on a stratified held-out
part of the training split, then the probe is refit on the whole split
(the protocol of linear-probe evaluations such as CLIP's). The result is a
plain ``nn.Linear`` on raw pooled features (the standardisation folded in).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_L2_GRID = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1)


@dataclass
class ProbeResult:
    """The fitted probe and how its regularisation was chosen."""

    linear: nn.Linear
    l2: float
    validation: dict[float, float] = field(default_factory=dict)  # l2 -> held-out accuracy


def _fit_lbfgs(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int) -> nn.Linear:
    lin = nn.Linear(x.shape[1], num_classes, dtype=x.dtype)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(
        lin.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
        tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def _stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(round(len(idx) * fraction))
        if len(idx) > 1:
            val.extend(rng.permutation(idx)[: max(1, k)])
    val_mask = np.zeros(len(y), bool)
    val_mask[val] = True
    return np.flatnonzero(~val_mask), np.flatnonzero(val_mask)


def fit_linear_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID,
    holdout: float = 0.2,
    max_iter: int = 1000,
    seed: int = 0,
) -> ProbeResult:
    """Fit the probe on pooled features ``x`` (N, D) with labels ``y``."""
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    yn = y.numpy()
    scores: dict[float, float] = {}
    if len(l2_grid) > 1:
        tr, va = _stratified_holdout(yn, holdout, seed)
        for l2 in l2_grid:
            lin = _fit_lbfgs(z[tr], y[tr], num_classes, l2, max_iter)
            with torch.no_grad():
                scores[l2] = float((lin(z[va]).argmax(1) == y[va]).double().mean())
        best = max(l2_grid, key=lambda l2: (scores[l2], l2))  # ties: the stronger regulariser
    else:
        best = l2_grid[0]
    lin = _fit_lbfgs(z, y, num_classes, best, max_iter)
    out = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        w = lin.weight / std
        out.weight.copy_(w.float())
        out.bias.copy_((lin.bias - (w * mean).sum(1)).float())
    return ProbeResult(out, best, scores)


@torch.no_grad()
def probe_accuracy(linear: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((linear(x).argmax(1) == y).float().mean()) if len(y) else float("nan")
