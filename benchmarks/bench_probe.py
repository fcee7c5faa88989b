"""The linear probe's cost, as ratios measured in one run, and its answer against the previous solver.

Pooled features shaped like CUB's (N images x D channels, C classes; Gaussian classes with a scale
and an offset per channel, as pooled features have). Three probes, each choosing its L2 strength on
the same held-out fifth and refit on everything:

1. the previous version's protocol: float64 full-batch L-BFGS from zero at every grid point, 1000
   iterations at most (written out here as the reference);
2. this version's ``"lbfgs"``: float32, warm starts along the grid, 300 iterations at most;
3. this version's ``"minibatch"`` (what ImageNet-scale data gets): Adam on minibatches of float16 rows.

Usage: python benchmarks/bench_probe.py [--images 3000] [--channels 1280] [--classes 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from infodisent.train.probe import DEFAULT_L2_GRID, _stratified_holdout, fit_linear_probe, probe_accuracy


def blobs(n: int, d: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    means = torch.randn(c, d, generator=torch.Generator().manual_seed(0)) * 0.12
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    scale = torch.rand(d, generator=torch.Generator().manual_seed(1)) * 2 + 0.2
    return ((means[y] + torch.randn(n, d, generator=g)) * scale + 1.0).relu(), y


def previous_probe(x: torch.Tensor, y: torch.Tensor, c: int) -> torch.nn.Linear:
    """The previous version's fit_linear_probe: float64, cold L-BFGS (1000 iterations) per grid point."""
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std

    def solve(rows, l2):
        lin = torch.nn.Linear(x.shape[1], c, dtype=torch.float64)
        torch.nn.init.zeros_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
        opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=1000, history_size=20, tolerance_grad=1e-7,
                                tolerance_change=1e-10, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(lin(z[rows]), y[rows]) + l2 * lin.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return lin

    tr, va = _stratified_holdout(y.numpy(), 0.2, 0)
    scores = {}
    for l2 in DEFAULT_L2_GRID:
        with torch.no_grad():
            scores[l2] = float((solve(tr, l2)(z[va]).argmax(1) == y[va]).double().mean())
    best = max(DEFAULT_L2_GRID, key=lambda l2: (scores[l2], l2))
    lin = solve(np.arange(len(y)), best)
    out = torch.nn.Linear(x.shape[1], c)
    with torch.no_grad():
        w = lin.weight / std
        out.weight.copy_(w.float())
        out.bias.copy_((lin.bias - (w * mean).sum(1)).float())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--channels", type=int, default=1280)
    p.add_argument("--classes", type=int, default=100)
    a = p.parse_args()
    x, y = blobs(a.images, a.channels, a.classes, 1)
    xt, yt = blobs(a.images, a.channels, a.classes, 2)
    rows = {}
    t = time.perf_counter()
    rows["previous (float64, cold L-BFGS)"] = probe_accuracy(previous_probe(x, y, a.classes), xt, yt), \
        time.perf_counter() - t
    for name, data, solver in (("lbfgs (float32, warm starts)", x, "lbfgs"),
                               ("minibatch (float16 rows)", x.half(), "minibatch")):
        t = time.perf_counter()
        res = fit_linear_probe(data, y, a.classes, solver=solver)
        rows[name] = probe_accuracy(res.linear, xt, yt), time.perf_counter() - t
    base_acc, base_t = rows["previous (float64, cold L-BFGS)"]
    print(f"{a.images} x {a.channels} pooled features, {a.classes} classes, {torch.get_num_threads()} threads")
    for name, (acc, secs) in rows.items():
        print(f"{name:34s} test top-1 {acc:.4f} ({100 * (acc - base_acc):+.2f} points)   time / previous "
              f"{secs / base_t:.2f}")


if __name__ == "__main__":
    main()
