"""The field's instruments on InfoDisent and its peers (:mod:`infodisent.eval.field`): the images and their ground
truth, the memo changes no score, and the Quantus metrics score every method end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import infodisent
from infodisent.core.geometry import ViewGeometry
from infodisent.errors import InputError
from infodisent.eval.field import (
    FieldSettings,
    Memo,
    metric_table,
    object_masks,
    ranks,
    score_methods,
    spread_over_classes,
)
from infodisent.explain.interop import explain_methods

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


def test_the_memo_answers_as_the_model_does(run_images):
    run, _, _, x, _ = run_images
    memo = Memo(run.model)
    with torch.no_grad():
        first, again, part = memo(x), memo(x.clone()), memo(x[:3])
        torch.testing.assert_close(first, run.model(x))
        torch.testing.assert_close(part, run.model(x[:3]))
    assert torch.equal(first, again)


def test_spread_over_classes_takes_class_by_class():
    labels = np.array([2, 0, 0, 1, 2, 2, 0])
    assert spread_over_classes(labels, 5).tolist() == [1, 3, 0, 2, 4]  # each class's first image, then its second
    assert spread_over_classes(labels, 100).tolist() == [1, 3, 0, 2, 4, 6, 5]


def test_object_masks_are_the_parts_in_the_view(run_images):
    run, ds, idx, x, _ = run_images
    assert sorted(np.asarray(ds.labels)[idx].tolist()) == list(range(6))  # six images, six classes
    masks = object_masks(ds, run.model.transform, idx)
    assert masks.shape == (len(idx), 1, *x.shape[-2:]) and masks.dtype == bool
    assert 0 < masks.mean() < 1
    m = ds.masks(int(idx[0])).any(0)  # the union of the two parts
    want = ViewGeometry.from_transform(run.model.transform, (m.shape[1], m.shape[0])).view_mask(m)
    assert np.array_equal(masks[0, 0], want)


def test_object_masks_are_the_cub_boxes_in_the_view(tmp_path):
    from infodisent.data.datasets import build_dataset
    from infodisent.tutorials.fabricate import fabricate

    root = fabricate("cub", tmp_path / "cub", classes=2, train_per_class=1, test_per_class=2, image_size=96)
    ds = build_dataset("cub", root, "test")
    transform = infodisent.load_backbone("test_resnet", "random", image_size=64).transform  # resize 73, crop 64
    masks = object_masks(ds, transform, np.arange(len(ds)))
    assert masks.shape == (len(ds), 1, 64, 64)
    for i in range(len(ds)):
        b = ds.boxes.iloc[i]
        geo = ViewGeometry.from_transform(transform, ds.load_image(i).size)
        corners = np.array([[b["x"], b["y"]], [b["x"] + b["width"], b["y"] + b["height"]]])
        (x0, y0), (x1, y1) = geo.points_to_view(corners)
        rows, cols = np.flatnonzero(masks[i, 0].any(1)), np.flatnonzero(masks[i, 0].any(0))
        # the mask spans the box, to the nearest-neighbour resize's pixel, clipped by the crop
        assert abs(cols[0] - max(x0, 0)) <= 1.5 and abs(cols[-1] + 1 - min(x1, 64)) <= 1.5
        assert abs(rows[0] - max(y0, 0)) <= 1.5 and abs(rows[-1] + 1 - min(y1, 64)) <= 1.5


def test_the_quantus_metrics_score_every_method(run_images):
    run, ds, idx, x, y = run_images
    model = run.model.eval()
    methods = ["InfoDisent", "Grad-CAM", "Saliency"]
    maps, _ = explain_methods(model, x, y, methods)
    settings = FieldSettings(probes=3, faithfulness_runs=5, region_steps=4, sensitivity_samples=2)
    # a mask of the rows holding each InfoDisent map's maximum (Quantus counts every pixel at the maximum), or of
    # the other rows: the masks are read in the maps' orientation, image by image
    a = maps["InfoDisent"][:, 0]
    peak_rows = a.max(2) == a.max((1, 2))[:, None]  # (N, S)
    band = peak_rows[:, None, :, None] & np.ones((1, 1, 1, x.shape[-1]), bool)
    assert band.any() and not band.all()
    table = score_methods(model, x, y, band, maps, settings, progress=False)
    away = score_methods(model, x, y, ~band, maps, settings, metrics=["Pointing Game"], progress=False)
    assert set(table["method"]) == set(methods)
    assert list(dict.fromkeys(table["metric"])) == list(metric_table().metric)
    pg = table[table["metric"] == "Pointing Game"].set_index("method")
    assert pg.loc["InfoDisent", "mean"] == 1.0 and pg.loc["InfoDisent", "n"] == len(x)
    assert away.set_index("method").loc["InfoDisent", "mean"] == 0.0
    rma = table[table["metric"] == "Relevance Mass Accuracy"]
    assert ((rma["mean"] >= 0) & (rma["mean"] <= 1)).all()  # a share of the positive evidence
    mprt = table[table["metric"] == "MPRT"].set_index("method")
    assert mprt.loc["InfoDisent", "mean"] < 0.99  # the randomised model (head included) explains otherwise
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
