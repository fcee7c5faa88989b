"""The field's instruments on InfoDisent and its peers (:mod:`infodisent.eval.field`): every method explains the
same decision in the shape Quantus takes, the memo changes no score, and the Quantus metrics run end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import infodisent
from infodisent.errors import InputError
from infodisent.eval.field import (
    EXPLAINERS,
    Differentiable,
    FieldSettings,
    Memo,
    channels_last,
    explain_func,
    explain_methods,
    metric_table,
    object_masks,
    ranks,
    score_methods,
    spread_over_classes,
)
from infodisent.explain.interop import input_attribution

pytest.importorskip("quantus")
pytest.importorskip("captum")


@pytest.fixture(scope="module")
def run_images(tiny_run):
    _, _, cfg = tiny_run
    run = infodisent.open_run(cfg.out)
    ds = run.dataset("test")
    idx = spread_over_classes(ds.labels, 6)
    x = torch.stack([run.model.transform(ds.load_image(int(i))) for i in idx])
    with torch.no_grad():
        y = run.model(x).argmax(1)
    return run, ds, idx, x, y


def test_every_method_explains_the_decision_in_quantus_shape(run_images):
    run, _, _, x, y = run_images
    model = run.model
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


def test_the_gradient_model_is_the_model(run_images):
    run, _, _, x, _ = run_images
    with torch.no_grad():
        torch.testing.assert_close(Differentiable(run.model)(x), run.model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(channels_last(run.model)(x), run.model(x), rtol=1e-4, atol=1e-4)
    xg = x.clone().requires_grad_(True)
    Differentiable(run.model)(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0  # the backbone's own forward has no gradient


def test_explain_func_refuses_an_unknown_method_and_takes_numpy(run_images):
    run, _, _, x, y = run_images
    with pytest.raises(InputError, match="unknown attribution method"):
        explain_func(run.model, x, y, method="Occlusion")
    a = explain_func(Memo(run.model), x.numpy(), y.numpy(), method="Grad-CAM")  # a memo is unwrapped
    b = explain_func(run.model, x, int(y[0]), method="Grad-CAM")[:1]
    assert a.shape == (len(x), 1, *x.shape[-2:])
    np.testing.assert_allclose(a[:1], b, rtol=1e-5, atol=1e-6)


def test_the_memo_answers_as_the_model_and_once_per_input(run_images):
    run, _, _, x, _ = run_images

    class Counting(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.calls = model, 0

        def forward(self, z):
            self.calls += 1
            return self.model(z)

    counting = Counting(run.model)
    memo = Memo(counting)
    with torch.no_grad():
        first, again, other = memo(x), memo(x.clone()), memo(x[:3])
        torch.testing.assert_close(first, run.model(x))
    assert torch.equal(first, again) and counting.calls == 2 and other.shape[0] == 3


def test_spread_over_classes_and_object_masks(run_images):
    run, ds, idx, x, _ = run_images
    labels = np.array([2, 0, 0, 1, 2, 2, 0])
    assert spread_over_classes(labels, 5).tolist() == [1, 3, 0, 2, 4]  # class by class, first images first
    assert spread_over_classes(labels, 100).tolist() == [1, 3, 0, 2, 4, 6, 5]
    assert sorted(np.asarray(ds.labels)[idx].tolist()) == list(range(6))  # six images, six classes
    masks = object_masks(ds, run.model.transform, idx)
    assert masks.shape == (len(idx), 1, *x.shape[-2:]) and masks.dtype == bool
    assert 0 < masks.mean() < 1
    # the union of the part masks, in the view
    from infodisent.core.geometry import ViewGeometry

    m = ds.masks(int(idx[0])).any(0)
    want = ViewGeometry.from_transform(run.model.transform, (m.shape[1], m.shape[0])).view_mask(m)
    assert np.array_equal(masks[0, 0], want)


def test_the_quantus_metrics_score_every_method(run_images):
    run, ds, idx, x, y = run_images
    model = channels_last(run.model)
    methods = ["InfoDisent", "Grad-CAM", "Saliency"]
    maps, _ = explain_methods(model, x, y, methods)
    settings = FieldSettings(probes=3, faithfulness_runs=5, region_steps=4, sensitivity_samples=2)
    full = np.ones((len(x), 1, *x.shape[-2:]), dtype=bool)
    table = score_methods(model, x, y, full, maps, settings, progress=False)
    assert set(table["method"]) == set(methods)
    assert list(dict.fromkeys(table["metric"])) == list(metric_table().metric)
    pg = table[table["metric"] == "Pointing Game"]
    assert (pg["mean"] == 1.0).all() and (pg["n"] == len(x)).all()  # the whole view is the object
    rma = table[table["metric"] == "Relevance Mass Accuracy"]
    np.testing.assert_allclose(rma["mean"], 1.0, atol=1e-6)  # all mass is inside
    probes = table[table["metric"].isin(["Faithfulness Correlation", "Region Perturbation (AOPC)", "Max-Sensitivity"])]
    assert (probes["n"] <= 3).all() and probes["mean"].notna().all()
    sparse = table[table["metric"] == "Sparseness"].set_index("method")["mean"]
    assert ((sparse >= 0) & (sparse <= 1)).all()
    # without masks the localisation metrics are left out
    quick = score_methods(model, x, y, None, maps, settings, metrics=["Pointing Game", "Sparseness"], progress=False)
    assert set(quick["metric"]) == {"Sparseness"}
    with pytest.raises(InputError, match="unknown metrics"):
        score_methods(model, x, y, None, maps, settings, metrics=["Accuracy"], progress=False)


def test_the_memo_changes_no_faithfulness_score(run_images):
    run, _, _, x, y = run_images
    maps, _ = explain_methods(run.model, x, y, ["InfoDisent", "Grad-CAM"])
    settings = FieldSettings(probes=4, faithfulness_runs=6)
    memo = score_methods(run.model, x, y, None, maps, settings, metrics=["Faithfulness Correlation"],
                         progress=False)
    import quantus

    for method, a in maps.items():  # the same metric with the model itself, the generator seeded alike
        np.random.seed(settings.seed)
        plain = quantus.FaithfulnessCorrelation(nr_runs=6, subset_size=224, perturb_baseline="black",
                                                return_aggregate=False, disable_warnings=True)(
            model=run.model, x_batch=x[:4].numpy(), y_batch=y[:4].numpy(), a_batch=a[:4], softmax=False,
            device="cpu", channel_first=True)
        got = memo.set_index("method").loc[method, "mean"]
        assert got == pytest.approx(float(np.nanmean(plain)), abs=1e-6)


def test_ranks_follow_each_metrics_direction():
    table = pd.DataFrame({
        "method": ["a", "b", "c"] * 2, "metric": ["up"] * 3 + ["down"] * 3,
        "better": ["higher"] * 3 + ["lower"] * 3, "mean": [0.1, 0.5, 0.3, 0.1, 0.5, 0.3]})
    r = ranks(table)
    assert r["up"].to_dict() == {"a": 3, "b": 1, "c": 2}
    assert r["down"].to_dict() == {"a": 1, "b": 3, "c": 2}
