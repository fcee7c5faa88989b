"""The sparse-decision-layer peer: glm-saga's elastic-net path, walked by infodisent.train.glm."""

from __future__ import annotations

import sys

import pytest
import torch

from infodisent.errors import InputError
from infodisent.train.glm import PathPoint, elastic_net_path, refit_support, sparse_layer_at

pytest.importorskip("glm_saga", reason="glm-saga is in the [interop] extra, which make test installs")


def _blobs(n_per_class: int = 40, classes: int = 4, dims: int = 12, seed: int = 0):
    """Pooled-feature-like data: each class lifts two of the dimensions, on a shifted, scaled background."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.randn(len(y), dims, generator=g) * 0.5
    for c in range(classes):
        x[y == c, 2 * c] += 2.0
        x[y == c, 2 * c + 1] += 1.5
    return x * 3.0 + 5.0, y  # not standardised: the path must fold its standardisation back


def test_the_path_goes_from_sparse_to_dense_and_its_layers_read_raw_features():
    x, y = _blobs()
    path = elastic_net_path(x, y, 4, max_per_class=3, steps=30, max_epochs=300, progress=False)
    assert path[0].per_class == 0  # the largest penalty: the all-zero model
    assert path[-1].per_class > 3  # it stops on the first point past max_per_class, not before
    assert all(p.per_class <= 3 for p in path[:-1])
    assert [p.lam for p in path] == sorted((p.lam for p in path), reverse=True)
    # the layer's logits on raw features are those of the standardised solution
    p = path[-1]
    assert p.weight.shape == (4, 12) and p.bias.shape == (4,)
    top1 = float((p.logits(x).argmax(1) == y).float().mean())
    assert top1 == pytest.approx(p.train_top1, abs=1e-6)
    assert top1 > 0.9  # the two lifted dimensions separate the classes
    assert (p.weight != 0).sum(1).float().mean() == pytest.approx(p.per_class)


def test_sparse_layer_at_takes_the_densest_point_within_k():
    w = torch.zeros(2, 3)
    pts = [PathPoint(lam=l, weight=w, bias=torch.zeros(2), per_class=pc, max_per_class=int(pc) + 1,
                     train_top1=0.5, converged=True) for l, pc in ((3.0, 0.0), (2.0, 1.0), (1.0, 2.5), (0.5, 4.0))]
    assert sparse_layer_at(pts, 3).per_class == 2.5
    assert sparse_layer_at(pts, 1).per_class == 1.0
    assert sparse_layer_at(pts, 0.5) is None  # only the all-zero model is that sparse: no layer


def test_bad_input_and_a_missing_solver_are_said(monkeypatch):
    x, y = _blobs()
    with pytest.raises(InputError, match=r"\(N, D\) pooled features"):
        elastic_net_path(x[:, None], y, 4, progress=False)
    monkeypatch.setitem(sys.modules, "glm_saga", None)
    with pytest.raises(InputError, match=r"pip install 'infodisent\[interop\]'"):
        elastic_net_path(x, y, 4, progress=False)


def test_the_matmul_solver_takes_glm_sagas_own_steps():
    x, y = _blobs(n_per_class=30, classes=3, dims=8, seed=1)
    kw = dict(max_per_class=2.5, steps=12, max_epochs=60, batch_size=32, progress=False)
    ours = elastic_net_path(x, y, 3, solver="matmul", **kw)
    theirs = elastic_net_path(x, y, 3, solver="glm-saga", **kw)
    assert len(ours) == len(theirs) > 2
    for a, b in zip(ours, theirs, strict=True):
        assert a.lam == b.lam and a.per_class == b.per_class and a.converged == b.converged
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.bias, b.bias, rtol=1e-4, atol=1e-5)


def test_refit_keeps_the_support_and_undoes_the_shrinkage():
    x, y = _blobs(seed=2)
    path = elastic_net_path(x, y, 4, max_per_class=1.5, steps=30, max_epochs=300, progress=False)
    point = sparse_layer_at(path, 1.5)
    refit = refit_support(point, x, y)
    assert torch.equal(refit.weight != 0, point.weight != 0)  # no weight gained or lost (none is that small)
    assert refit.per_class == point.per_class
    loss = lambda p: float(torch.nn.functional.cross_entropy(p.logits(x), y))  # noqa: E731
    assert loss(refit) < loss(point) - 0.05  # the path's penalty held it back; the refit is free of it
    assert refit.train_top1 >= point.train_top1
