"""The sparse-decision-layer peer: glm-saga's elastic-net path on globally pooled frozen features.

Wong, Santurkar and Madry (ICML 2021, "Leveraging Sparse Linear Layers for Debuggable Deep Networks")
make a network readable by replacing its last layer with a sparse linear one, fitted along an elastic-net
regularisation path by their ``glm-saga`` solver. InfoDisent's compact head is the same idea with a
learned rotation and a two-sided max in front, so the two are compared at the same number of weights
per class: :func:`elastic_net_path` walks glm-saga's path from the all-zero model towards denser ones
(stopping once it is past the densest point asked for), and :func:`sparse_layer_at` picks, for a K, the
densest point with at most K non-zero weights per class on average. The channels such a layer reads are
the backbone's own (U = I).

The settings are those of the paper's code (``DebuggableDeepNetworks/main.py``): standardised features,
alpha 0.99, learning rate 0.1, tolerance 1e-4 with a look-behind of 3 epochs, 100 log-spaced
penalties down to a thousandth of the largest, minibatches of 256, no class-balancing. glm-saga is an
optional dependency (the ``[interop]`` extra); importing this module does not need it, fitting does.

glm-saga's ``train_saga`` forms each minibatch's weight gradient as a (batch, classes, features) product
and averages it, a GPU-sized habit that is slow on a CPU. ``solver="matmul"``
(the default) runs the same SAGA steps with that average as one matrix product, and glm-saga's own
proximal operators, starting penalty, data set and stopping rule; the tests check that it follows
``solver="glm-saga"`` (glm-saga's ``train_saga`` itself) step for step.

Example:
    >>> path = elastic_net_path(x_train, y_train, num_classes=100, max_per_class=16)
    >>> point = sparse_layer_at(path, 5)
    >>> (point.logits(x_test).argmax(1) == y_test).float().mean()
    >>> refit_support(point, x_train, y_train)  # the same support, without the shrinkage
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from tqdm.auto import tqdm

from ..errors import InputError


@dataclass(frozen=True)
class PathPoint:
    """One solution on the elastic-net path, on raw (unstandardised) pooled features.

    ``weight`` (C, D) and ``bias`` (C,) fold the standardisation in, so ``x @ weight.T + bias`` are the
    logits; ``per_class`` is the mean number of non-zero weights per class (the solver's threshold,
    ``|w| > 1e-5``, on the standardised weights); ``converged``: the solver stopped on its tolerance
    rather than at ``max_epochs``."""

    lam: float
    weight: torch.Tensor
    bias: torch.Tensor
    per_class: float
    max_per_class: int
    train_top1: float
    converged: bool

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's logits for pooled features ``x`` (N, D).

        Args:
            x: pooled features ``(N, D)`` (raw, not standardised)."""
        return x.float() @ self.weight.T + self.bias


def _glm_saga():
    try:
        from glm_saga import elasticnet
    except ImportError as e:  # an optional dependency
        raise InputError("the sparse-layer peer needs glm-saga: pip install 'infodisent[interop]' "
                         "(or pip install glm-saga)") from e
    return elasticnet


def _train_saga(en, linear: torch.nn.Linear, loader, lr: float, max_epochs: int, lam: float, alpha: float,
                state: dict | None, n_ex: int, num_classes: int, tol: float, lookbehind: int,
                logger: Callable[[str], None]) -> dict:
    """glm-saga's ``train_saga`` for the multinomial family, ungrouped, with a look-behind stopping rule and
    no sample weights: the same steps, each minibatch's weight gradient as one matrix product."""
    weight, bias = linear.weight, linear.bias
    if state is None:
        a_table = torch.zeros(n_ex, num_classes)
        w_grad_avg, b_grad_avg = torch.zeros_like(weight), torch.zeros_like(bias)
    else:
        a_table, w_grad_avg, b_grad_avg = state["a_table"], state["w_grad_avg"], state["b_grad_avg"]
    eye = torch.eye(num_classes)
    obj_best, stalled = None, 0
    for t in range(max_epochs):
        total_loss = 0.0
        for X, y, idx in loader:
            out = linear(X)
            total_loss += torch.nn.functional.cross_entropy(out, y).item() * len(X)
            a = torch.softmax(out, 1) - eye[y]
            a_prev = a_table[idx]
            w_grad, w_grad_prev = a.T @ X / len(X), a_prev.T @ X / len(X)
            weight_new = weight - lr * (w_grad - w_grad_prev + w_grad_avg)
            if alpha == 1:
                weight_new = en.soft_threshold(weight_new, lr * lam * alpha)
            else:
                weight_new = en.soft_threshold_with_shrinkage(weight_new, lr * lam * alpha, lr * lam * (1 - alpha))
            b_grad, b_grad_prev = a.mean(0), a_prev.mean(0)
            bias_new = bias - lr * (b_grad - b_grad_prev + b_grad_avg)
            a_table[idx] = a
            w_grad_avg.add_((w_grad - w_grad_prev) * len(X) / n_ex)
            b_grad_avg.add_((b_grad - b_grad_prev) * len(X) / n_ex)
            weight.data, bias.data = weight_new, bias_new
        objective = (total_loss / n_ex + lam * alpha * weight.norm(p=1)
                     + 0.5 * lam * (1 - alpha) * (weight ** 2).sum()).item()
        if obj_best is None or objective + tol < obj_best:
            obj_best, stalled = objective, 0
        else:
            stalled += 1
        if stalled >= lookbehind:
            logger(f"objective {objective:.6f} [early stop at {t}]")
            break
    else:
        logger(f"did not converge at {max_epochs} iterations")
    return {"a_table": a_table, "w_grad_avg": w_grad_avg, "b_grad_avg": b_grad_avg}


def elastic_net_path(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, max_per_class: float = 16.0,
                     alpha: float = 0.99, lr: float = 0.1, max_epochs: int = 2000, tol: float = 1e-4,
                     lookbehind: int = 3, epsilon: float = 1e-3, steps: int = 100, batch_size: int = 256,
                     seed: int = 0, solver: Literal["matmul", "glm-saga"] = "matmul", progress: bool = True,
                     log: Callable[[str], None] | None = None) -> list[PathPoint]:
    """Fit glm-saga's elastic-net path on pooled features, from the largest penalty (the all-zero model)
    down, until the mean number of non-zero weights per class passes ``max_per_class``.

    Args:
        x: pooled training features (N, D), any float dtype.
        y: their labels (N,).
        num_classes: C.
        max_per_class: stop after the first point denser than this many weights per class (default 16).
        alpha: the elastic net's L1 share (default 0.99).
        lr: SAGA's step size (default 0.1).
        max_epochs: most passes per penalty (default 2000).
        tol: the objective's least improvement that counts as progress (default 1e-4).
        lookbehind: stop a penalty after this many passes without progress (default 3).
        epsilon: the smallest penalty as a share of the largest (default 1e-3).
        steps: penalties on the log-spaced path (default 100).
        batch_size: minibatch size (default 256).
        seed: the loader's shuffling seed (default 0).
        solver: ``"matmul"`` (default) or ``"glm-saga"`` (its own ``train_saga``: the same path, slower on a CPU).
        progress: a progress bar over the penalties (default True).
        log: where the solver's messages go (default None: nowhere).
    """
    if x.ndim != 2 or len(x) != len(y):
        raise InputError(f"x must be (N, D) pooled features with one label each; got x {tuple(x.shape)}, "
                         f"y {tuple(y.shape)}")
    if solver not in ("matmul", "glm-saga"):
        raise InputError(f"solver={solver!r}; choose matmul or glm-saga")
    en = _glm_saga()
    x = x.float()
    y = y.long()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(en.IndexedTensorDataset(z, y), batch_size=batch_size, shuffle=True,
                                         generator=generator)
    linear = torch.nn.Linear(z.shape[1], num_classes)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    max_lam = en.maximum_reg(z, y, group=False) / max(1e-3, alpha)
    lams = torch.logspace(math.log10(max_lam), math.log10(max_lam * epsilon), steps)
    quiet = log or (lambda message: None)
    path: list[PathPoint] = []
    state = None
    bar = tqdm(lams.tolist(), desc="glm-saga path", disable=not progress, leave=False)
    for lam in bar:
        messages: list[str] = []

        def keep(message: str) -> None:
            messages.append(message)
            quiet(message)

        if solver == "matmul":
            with torch.no_grad():
                state = _train_saga(en, linear, loader, lr, max_epochs, lam, alpha, state, len(z), num_classes,
                                    tol, lookbehind, keep)
        else:
            with warnings.catch_warnings():  # its F.softmax without dim= (dim 1 on these 2-d logits)
                warnings.filterwarnings("ignore", "Implicit dimension choice for softmax", UserWarning)
                state = en.train_saga(linear, loader, lr, max_epochs, lam, alpha, group=False, state=state,
                                      n_ex=len(z), n_classes=num_classes, tol=tol, lookbehind=lookbehind,
                                      family="multinomial", logger=keep)
        with torch.no_grad():
            w, b = linear.weight.detach().clone(), linear.bias.detach().clone()
            nonzero = (w.abs() > 1e-5).sum(1)
            top1 = float(((z @ w.T + b).argmax(1) == y).float().mean())
            raw_w = w / std
            raw_b = b - (raw_w * mean).sum(1)
        point = PathPoint(lam=float(lam), weight=raw_w, bias=raw_b, per_class=float(nonzero.float().mean()),
                          max_per_class=int(nonzero.max()), train_top1=top1,
                          converged=not any("did not converge" in m for m in messages))
        path.append(point)
        bar.set_postfix(per_class=f"{point.per_class:.1f}", train_top1=f"{top1:.3f}")
        if point.per_class > max_per_class:
            break
    return path


def refit_support(point: PathPoint, x: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-4,
                  max_iter: int = 300) -> PathPoint:
    """``point``'s layer with its support kept and its weights fitted again without the elastic net's
    shrinkage: L2-penalised multinomial regression on standardised features, by full-batch L-BFGS, on the
    non-zero weights only (the bias free). glm-saga's method stops at the path; this refit is the analogue
    of the compact head's last fine-tune, and separates what the support costs from what the shrinkage does.

    Args:
        point: a point of :func:`elastic_net_path` on the same features.
        x: pooled training features (N, D).
        y: their labels (N,).
        l2: the penalty on the squared weights (default 1e-4, the probe's weakest).
        max_iter: L-BFGS iterations (default 300).
    """
    x, y = x.float(), y.long()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    mask = (point.weight * std).abs() > 1e-5  # the weights the path counts (its threshold, standardised)
    weight = torch.nn.Parameter(point.weight * std * mask)
    bias = torch.nn.Parameter(point.bias + (point.weight * mean).sum(1))
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        w = weight * mask
        loss = torch.nn.functional.cross_entropy(z @ w.T + bias, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        w = weight.detach() * mask
        top1 = float(((z @ w.T + bias).argmax(1) == y).float().mean())
        raw_w = w / std
        raw_b = bias.detach() - (raw_w * mean).sum(1)
    return replace(point, weight=raw_w, bias=raw_b, train_top1=top1)


def sparse_layer_at(path: Sequence[PathPoint], k: float) -> PathPoint | None:
    """The densest point of ``path`` with at most ``k`` non-zero weights per class on average (None: the
    path has none with any weight).

    Args:
        path: :func:`elastic_net_path`'s points.
        k: weights per class, the compact head's K.
    """
    within = [p for p in path if 0 < p.per_class <= k]
    return max(within, key=lambda p: p.per_class) if within else None


__all__ = ["PathPoint", "elastic_net_path", "refit_support", "sparse_layer_at"]
