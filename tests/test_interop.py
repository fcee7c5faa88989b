"""Captum and Quantus call InfoDisent: the input attribution is exact (its sum is the logit minus the bias),
Captum's interface and visualisation take it, and a Quantus metric scores it in one call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import infodisent
from infodisent.errors import InputError
from infodisent.explain.interop import (
    EXPLAINERS,
    Differentiable,
    InfoDisentAttribution,
    channel_maps,
    explain_func,
    explain_methods,
    input_attribution,
    logit_map,
    quantus_explain_func,
    spread,
)


@pytest.fixture(scope="module")
def model_and_images(tiny_run):
    _, _, cfg = tiny_run
    run = infodisent.open_run(cfg.out)
    ds = run.dataset("test")
    x = torch.stack([run.model.transform(ds.load_image(i)) for i in range(6)])
    return run.model, x


def _bias(model, t):
    return model.bias[t] if model.bias is not None else torch.zeros(len(t))


def test_the_attribution_sums_to_the_logit_exactly(model_and_images):
    model, x = model_and_images
    with torch.no_grad():
        logits = model(x)
    for target in (None, 2, torch.tensor([0, 1, 2, 3, 4, 5])):
        attr = input_attribution(model, x, target)
        t = logits.argmax(1) if target is None else torch.as_tensor(target).expand(len(x))
        assert attr.shape == x.shape
        want = logits[torch.arange(len(x)), t] - _bias(model, t)
        torch.testing.assert_close(attr.double().sum((1, 2, 3)).float(), want, rtol=1e-4, atol=1e-4)
        # the same decision on the grid, and channel by channel
        torch.testing.assert_close(logit_map(model, x, target).sum((1, 2)), want, rtol=1e-4, atol=1e-4)
    maps, t = channel_maps(model, x, 1)
    out = model.outputs(x)
    torch.testing.assert_close(maps.sum((2, 3)), model.W[1] * out.v, rtol=1e-5, atol=1e-6)  # W[c, d] v_d
    per = input_attribution(model, x, 1, per_channel=True)
    assert per.shape == (6, model.head.config.num_features, *x.shape[-2:])
    torch.testing.assert_close(per.sum((2, 3)), maps.sum((2, 3)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_completeness_holds_for_a_head_with_a_bias_and_for_average_pooling(model_and_images, pooling):
    model, x = model_and_images
    torch.manual_seed(0)
    head = infodisent.InfoDisentHead(infodisent.HeadConfig(model.head.config.num_features, 4, pooling=pooling,
                                                           bias=True))
    with torch.no_grad():
        head.bias.normal_()
    other = infodisent.InfoDisent(model.backbone, head)
    with torch.no_grad():
        logits = other(x)
    attr = input_attribution(other, x, 2)
    torch.testing.assert_close(attr.sum((1, 2, 3)), logits[:, 2] - head.bias[2], rtol=1e-4, atol=1e-4)


def test_a_channel_counts_where_it_peaks_and_where_it_dips(model_and_images):
    model, x = model_and_images
    maps, t = channel_maps(model, x[:1], 0)
    out = model.outputs(x[:1])
    d = int(torch.argmax(model.W[0] * (out.pool.pos_values[0] + out.pool.neg_values[0])))
    flat = maps[0, d].flatten()
    w = float(model.W[0, d])
    hi, lo = int(out.pool.pos_index[0, d]), int(out.pool.neg_index[0, d])
    if hi != lo:
        assert float(flat[hi]) == pytest.approx(w * float(out.pool.pos_values[0, d]), rel=1e-5)
        assert float(flat[lo]) == pytest.approx(-w * float(out.pool.neg_values[0, d]), rel=1e-5)
    assert int((flat != 0).sum()) <= 2  # nowhere else


def test_spread_keeps_each_cells_sum_on_sizes_the_grid_does_not_divide():
    cells = torch.arange(35, dtype=torch.float64).reshape(1, 7, 5) - 10
    px = spread(cells, (30, 23))
    assert px.shape == (1, 30, 23)
    assert float(px.sum()) == pytest.approx(float(cells.sum()), abs=1e-9)
    rows = (torch.arange(30) * 7) // 30
    cols = (torch.arange(23) * 5) // 23
    for r, c in ((0, 0), (3, 2), (6, 4)):  # each cell's pixels carry that cell's value, shared evenly
        mask = (rows[:, None] == r) & (cols[None, :] == c)
        assert float(px[0][mask].sum()) == pytest.approx(float(cells[0, r, c]), abs=1e-9)
        assert torch.unique(px[0][mask]).numel() == 1


def test_bad_targets_are_said(model_and_images):
    model, x = model_and_images
    with pytest.raises(InputError, match="3 targets for 6 images"):
        input_attribution(model, x, torch.tensor([0, 1, 2]))
    with pytest.raises(InputError, match=r"in \[0, 6\)"):
        input_attribution(model, x, 99)


def test_captum_takes_it_as_one_of_its_own(model_and_images):
    captum = pytest.importorskip("captum", reason="Captum is in the [interop] extra, which make test installs")
    import matplotlib

    matplotlib.use("Agg")
    from captum.attr import Attribution
    from captum.attr import visualization as viz
    from captum.metrics import infidelity

    model, x = model_and_images
    explainer = InfoDisentAttribution(model)
    assert isinstance(explainer, Attribution) and not explainer.has_convergence_delta()
    attr = explainer.attribute(x[:2], target=3)
    torch.testing.assert_close(attr, input_attribution(model, x[:2], 3))
    fig, _ = viz.visualize_image_attr(attr[0].permute(1, 2, 0).numpy(), x[0].permute(1, 2, 0).numpy(),
                                      method="blended_heat_map", sign="all", use_pyplot=False)
    assert fig is not None
    # Captum's own metrics take it: infidelity compares attribution-weighted perturbations with the logit's change
    torch.manual_seed(0)

    def perturb(inputs: torch.Tensor):
        noise = 0.05 * torch.randn_like(inputs)
        return noise, inputs - noise

    with torch.no_grad():
        score = infidelity(model, perturb, x[:2], attr, target=3, n_perturb_samples=4)
    assert score.shape == (2,) and torch.isfinite(score).all() and captum.__version__


def test_a_quantus_metric_scores_it_in_one_call(model_and_images):
    quantus = pytest.importorskip("quantus", reason="Quantus is in the [interop] extra, which make test installs")
    model, x = model_and_images
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(1).numpy()
    a = quantus_explain_func(model, x.numpy(), y)
    assert a.shape == (6, 1, *x.shape[-2:]) and a.dtype == np.float32
    scores = quantus.Sparseness(disable_warnings=True)(model=model, x_batch=x.numpy(), y_batch=y, a_batch=None,
                                                      explain_func=quantus_explain_func, device="cpu")
    assert len(scores) == 6 and all(0.0 <= s <= 1.0 for s in scores)
    # what Quantus scored is this map: the Gini index of |attribution| (Chalasani et al.), by hand
    for i in range(6):
        v = np.sort(np.abs(a[i]).ravel())
        n = len(v)
        gini = float(((2 * np.arange(1, n + 1) - n - 1) * v).sum() / (n * v.sum()))
        assert scores[i] == pytest.approx(gini, abs=2e-3)


# ----------------------------------------------------------------------------- every method as Quantus takes it


@pytest.fixture(scope="module")
def decisions(model_and_images):
    model, x = model_and_images
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_every_method_explains_the_decision_in_quantus_shape(decisions):
    model, x, y = decisions
    maps, seconds = explain_methods(model, x, y, list(EXPLAINERS), batch_size=4)
    assert set(maps) == set(seconds) == set(EXPLAINERS)
    for name, a in maps.items():
        assert a.shape == (len(x), 1, *x.shape[-2:]) and a.dtype == np.float32 and np.isfinite(a).all(), name
        assert seconds[name] > 0
    # InfoDisent: the exact map, channels summed
    want = input_attribution(model, x, y).sum(1, keepdim=True).numpy()
    np.testing.assert_allclose(maps["InfoDisent"], want, rtol=1e-6, atol=1e-7)
    for cam in ("Grad-CAM", "Grad-CAM++", "LayerCAM"):
        assert maps[cam].min() >= 0 and maps[cam].max() <= 1
    # Saliency: |d logit / d x| summed over the colour channels, by hand
    xg = x.clone().requires_grad_(True)
    Differentiable(model)(xg)[torch.arange(len(x)), y].sum().backward()
    np.testing.assert_allclose(maps["Saliency"], xg.grad.abs().sum(1, keepdim=True).numpy(), rtol=1e-4, atol=1e-6)
    # Integrated Gradients as Quantus's explain() calls Captum: 10 trapezoid steps from a zero baseline, i.e. the
    # gradients at 0, 1/9, ..., 1 of the way weighted as Captum's trapezoid rule weighs them (1/10, the two ends
    # halved), times the input, summed over the colours
    xs = torch.cat([x * a for a in torch.linspace(0, 1, 10)]).requires_grad_(True)
    Differentiable(model)(xs)[torch.arange(len(xs)), y.repeat(10)].sum().backward()
    weights = torch.full((10,), 1 / 10.0)
    weights[[0, -1]] = 1 / 20.0
    grads = (xs.grad.reshape(10, *x.shape) * weights[:, None, None, None, None]).sum(0)
    np.testing.assert_allclose(maps["Integrated Gradients"], (grads * x).sum(1, keepdim=True).numpy(),
                               rtol=1e-3, atol=1e-5)
    with torch.no_grad():  # and so, roughly, completeness
        gap = (model(x) - model(torch.zeros_like(x)))[torch.arange(len(x)), y]
    np.testing.assert_allclose(maps["Integrated Gradients"].sum((1, 2, 3)), gap.numpy(), rtol=0.2, atol=0.2)


def test_the_gradient_model_is_the_model(decisions):
    model, x, _ = decisions
    with torch.no_grad():
        torch.testing.assert_close(Differentiable(model)(x), model(x), rtol=1e-5, atol=1e-5)
        # the backbone feeds a CPU batch in channels-last memory: the same maps as the plain layout's
        from infodisent.core.backbone import feature_map

        torch.testing.assert_close(model.backbone(x), feature_map(model.backbone.model, x.contiguous()),
                                   rtol=1e-4, atol=1e-4)
    xg = x.clone().requires_grad_(True)
    Differentiable(model)(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0  # the backbone's own forward has no gradient


def test_explain_func_refuses_an_unknown_method_and_takes_numpy(decisions):
    model, x, y = decisions
    with pytest.raises(InputError, match="unknown attribution method"):
        explain_func(model, x, y, method="Occlusion")
    with pytest.raises(InputError, match="explains an InfoDisent model"):
        explain_func(torch.nn.Linear(3, 3), x, y)

    class Wrapper(torch.nn.Module):  # as Quantus's metrics may be handed a wrapper of the model
        def __init__(self, model):
            super().__init__()
            self.model = model

    a = explain_func(Wrapper(model), x.numpy(), y.numpy(), method="Grad-CAM")  # unwrapped, numpy in
    b = explain_func(model, x, int(y[0]), method="Grad-CAM")[:1]  # one class for every image
    assert a.shape == (len(x), 1, *x.shape[-2:])
    np.testing.assert_allclose(a[:1], b, rtol=1e-5, atol=1e-6)
