"""The linear-probe reference: an unconstrained linear head on globally average-pooled features.

Multinomial logistic regression on standardised features; the L2 strength is chosen on a stratified
held-out part of the training split, then the probe is refit on the whole split (the protocol of
linear-probe evaluations such as CLIP's). The result is a plain ``nn.Linear`` on raw pooled
features (the standardisation folded in).

Two solvers give the same answer (the tests compare their top-1 within a stated tolerance):

- ``"lbfgs"``: full-batch L-BFGS in float32, for data that fits in memory (CUB, Cars, Dogs).
- ``"minibatch"``: Adam over shuffled minibatches, standardising each one on the fly, for data too
  large for that (ImageNet's 1.28 M x 2048 pooled features): the matrix stays as it came (float16 is
  enough) and only a minibatch is ever in float32.

Both walk the L2 grid from the strongest penalty to the weakest, each fit starting from the previous
solution (a warm start: neighbouring penalties have neighbouring solutions), and the final refit starts
from the chosen penalty's held-out fit, so the whole probe costs a few cold fits' worth of passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

DEFAULT_L2_GRID = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1)
IN_MEMORY = 2**27  # "auto": full-batch L-BFGS up to this many matrix entries (512 MB in float32), minibatches beyond
Solver = Literal["auto", "lbfgs", "minibatch"]


@dataclass
class ProbeResult:
    """The fitted probe and how its regularisation was chosen."""

    linear: nn.Linear
    l2: float
    validation: dict[float, float] = field(default_factory=dict)  # l2 -> held-out accuracy
    solver: str = "lbfgs"


@dataclass
class _Linear:
    """Weights on standardised features, float32."""

    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor  # (C,)

    @classmethod
    def zeros(cls, d: int, c: int) -> _Linear:
        return cls(torch.zeros(c, d), torch.zeros(c))


def _moments(x: torch.Tensor, chunk: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of each column, accumulated in float64 over row chunks (``x`` itself
    is never converted as a whole)."""
    n, s, ss = len(x), torch.zeros(x.shape[1], dtype=torch.float64), torch.zeros(x.shape[1], dtype=torch.float64)
    for i in range(0, n, chunk):
        part = x[i:i + chunk].double()
        s += part.sum(0)
        ss += (part * part).sum(0)
    mean = s / n
    var = (ss - n * mean * mean).clamp_min(0) / max(n - 1, 1)
    return mean.float(), var.sqrt().clamp_min(1e-6).float()


def _objective(lin: nn.Linear, z: torch.Tensor, y: torch.Tensor, l2: float) -> torch.Tensor:
    return F.cross_entropy(lin(z), y) + l2 * lin.weight.pow(2).sum()


def _module(init: _Linear) -> nn.Linear:
    lin = nn.Linear(init.weight.shape[1], init.weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(init.weight)
        lin.bias.copy_(init.bias)
    return lin


def _fit_lbfgs(z: torch.Tensor, y: torch.Tensor, l2: float, init: _Linear, max_iter: int) -> _Linear:
    lin = _module(init)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _objective(lin, z, y, l2)
        loss.backward()
        return loss

    opt.step(closure)
    return _Linear(lin.weight.detach().clone(), lin.bias.detach().clone())


def _fit_minibatch(x: torch.Tensor, y: torch.Tensor, rows: np.ndarray, l2: float, init: _Linear,
                   mean: torch.Tensor, std: torch.Tensor, epochs: int, batch_size: int, seed: int) -> _Linear:
    """Adam on minibatches of ``x[rows]`` (standardised one batch at a time), the learning rate decayed to
    zero on a cosine, so that the last passes settle on the optimum of the same objective L-BFGS solves."""
    lin = _module(init)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(rows) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    for _ in range(epochs):
        order = torch.from_numpy(rows)[torch.randperm(len(rows), generator=g)]
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            z = (x[idx].float() - mean) / std
            opt.zero_grad()
            _objective(lin, z, y[idx], l2).backward()
            opt.step()
            sched.step()
    return _Linear(lin.weight.detach().clone(), lin.bias.detach().clone())


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


@torch.no_grad()
def _accuracy(lin: _Linear, x: torch.Tensor, y: torch.Tensor, rows: np.ndarray, mean: torch.Tensor,
              std: torch.Tensor, chunk: int = 1 << 14) -> float:
    correct = 0
    for i in range(0, len(rows), chunk):
        idx = torch.from_numpy(rows[i:i + chunk])
        z = (x[idx].float() - mean) / std
        correct += int(((z @ lin.weight.T + lin.bias).argmax(1) == y[idx]).sum())
    return correct / max(len(rows), 1)


def fit_linear_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID,
    holdout: float = 0.2,
    max_iter: int = 300,
    seed: int = 0,
    solver: Solver = "auto",
    epochs: int = 30,
    batch_size: int = 1024,
) -> ProbeResult:
    """Fit the probe on pooled features ``x`` (N, D; float16 is enough) with labels ``y``.

    ``solver``: ``"lbfgs"`` (full batch, at most ``max_iter`` iterations per fit), ``"minibatch"``
    (``epochs`` passes of ``batch_size`` rows per fit, the first fit twice as many), or ``"auto"``:
    L-BFGS up to :data:`IN_MEMORY` entries, minibatches beyond.

    Args:
        x: pooled features ``(N, D)``.
        y: class labels ``(N,)``.
        num_classes: the number of classes C.
        l2_grid: the L2 strengths tried; with one value it is used without a held-out choice.
            Default :data:`DEFAULT_L2_GRID`.
        holdout: the fraction of each class held out to choose the L2 strength. Default 0.2.
        max_iter: L-BFGS iterations per fit. Default 300.
        seed: seed of the held-out split and of the minibatch order. Default 0.
        solver: ``"auto"``, ``"lbfgs"`` or ``"minibatch"``. Default ``"auto"``.
        epochs: passes over the rows per minibatch fit. Default 30.
        batch_size: rows per minibatch. Default 1024.
    Returns:
        The probe, an ``nn.Linear`` on raw pooled features, with the chosen strength and the held-out
        accuracy of each strength tried."""
    if solver not in ("auto", "lbfgs", "minibatch"):
        raise InputError(f"solver={solver!r}; choose one of auto, lbfgs, minibatch")
    n, d = x.shape
    if solver == "auto":
        solver = "lbfgs" if n * d <= IN_MEMORY else "minibatch"
    y = y.long()
    mean, std = _moments(x)
    z = (x.float() - mean) / std if solver == "lbfgs" else None

    def fit(rows: np.ndarray, l2: float, init: _Linear, first: bool) -> _Linear:
        if solver == "lbfgs":
            return _fit_lbfgs(z[rows], y[rows], l2, init, max_iter)
        return _fit_minibatch(x, y, rows, l2, init, mean, std, 2 * epochs if first else epochs, batch_size, seed)

    everything = np.arange(n)
    scores: dict[float, float] = {}
    fits: dict[float, _Linear] = {}
    grid = sorted(l2_grid, reverse=True)  # strongest penalty first: each fit warm-starts the next
    if len(grid) > 1:
        tr, va = _stratified_holdout(y.numpy(), holdout, seed)
        init = _Linear.zeros(d, num_classes)
        for i, l2 in enumerate(grid):
            init = fits[l2] = fit(tr, l2, init, i == 0)
            scores[l2] = _accuracy(init, x, y, va, mean, std)
        best = max(grid, key=lambda l2: (scores[l2], l2))  # ties: the stronger regulariser
        lin = fit(everything, best, fits[best], False)
    else:
        best = grid[0]
        lin = fit(everything, best, _Linear.zeros(d, num_classes), True)
    out = nn.Linear(d, num_classes)
    with torch.no_grad():
        w = lin.weight / std
        out.weight.copy_(w)
        out.bias.copy_(lin.bias - (w * mean).sum(1))
    return ProbeResult(out, best, {l2: scores[l2] for l2 in l2_grid if l2 in scores}, solver)


@torch.no_grad()
def probe_accuracy(linear: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of a probe (NaN for no rows).

    Args:
        linear: the probe (``ProbeResult.linear``).
        x: pooled features ``(N, D)``, on the probe's device.
        y: class labels ``(N,)``."""
    return float((linear(x.float()).argmax(1) == y).float().mean()) if len(y) else float("nan")
