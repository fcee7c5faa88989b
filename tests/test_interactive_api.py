"""The library functions the widgets stand on: the training monitor, point-and-ask, channel overview,
prototype parts, the post-hoc CAM reference and the new figures."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import infodisent
from infodisent.core.geometry import cell_at, cell_box
from infodisent.eval.part_metrics import channel_purity, has_parts, parts_purity, prototype_parts
from infodisent.explain.explanation import channel_overview, explain_channel
from infodisent.explain.posthoc import PosthocCAM, backbone_maps
from infodisent.train.monitor import Monitor, TrainingStopped
from infodisent.viz.plots import classes_figure, history_figure, value_histogram, versus_figure, waterfall_figure


@pytest.fixture(scope="module")
def run(tiny_run):
    return infodisent.open_run(tiny_run[2].out)


def test_a_monitor_hears_every_epoch_and_its_stop_resumes_to_the_same_head(tiny_run, tmp_path):
    cfg = replace(tiny_run[2], out=str(tmp_path / "full"), fit=replace(tiny_run[2].fit, epochs=4))
    seen = []
    full = infodisent.train_run(cfg, monitor=Monitor(on_progress=seen.append))
    stages = [p.stage for p in seen]
    assert stages[0] == "features train" and stages[-1] == "done"
    assert [p.done for p in seen if p.stage == "train"] == [1, 2, 3, 4]

    stopped = replace(cfg, out=str(tmp_path / "stopped"))
    rows = []
    m = Monitor(on_epoch=lambda row: (rows.append(row), row["epoch"] == 2 and m.request_stop()))
    with pytest.raises(TrainingStopped, match="after epoch 2 of 4"):
        infodisent.train_run(stopped, monitor=m)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["phase"] == "train"
    assert torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert not (tmp_path / "stopped" / "config.json").exists()  # not a run yet
    resumed = infodisent.train_run(replace(stopped, resume=True))
    torch.testing.assert_close(resumed.model.W, full.model.W, rtol=0, atol=1e-6)
    assert resumed.metrics.infodisent.top1 == full.metrics.infodisent.top1


def test_a_monitor_hears_pruning_rounds_by_phase(tiny_run, tmp_path):
    sparse = infodisent.SparseOptions(channels_per_class=3, round_epochs=1, finetune_epochs=1)
    cfg = replace(tiny_run[2], out=str(tmp_path / "pruned"), sparse=sparse, fit=replace(tiny_run[2].fit, epochs=2))
    m = Monitor()
    result = infodisent.train_run(cfg, monitor=m)
    phases = [r["phase"] for r in m.rows]
    assert phases[:2] == ["train", "train"] and phases[-1] == "prune K=3"
    assert [r["epoch"] for r in m.rows] == list(range(1, len(result.history) + 1))

    # a stop asked for in the last dense epoch ends before any pruning, resumable
    late = replace(cfg, out=str(tmp_path / "late"))
    m = Monitor(on_epoch=lambda row: row["epoch"] == 2 and m.request_stop())
    with pytest.raises(TrainingStopped, match="before pruning"):
        infodisent.train_run(late, monitor=m)
    assert [r["phase"] for r in m.rows] == ["train", "train"]
    resumed = infodisent.train_run(replace(late, resume=True))
    torch.testing.assert_close(resumed.model.W, result.model.W, rtol=0, atol=1e-6)


def test_point_and_ask_finds_the_channels_that_peak_under_a_point(run):
    e = run.explain(1)
    (gh, gw), sw = e.grid, e.view.size[0]
    for pos in range(gh * gw):
        x0, y0, x1, y1 = cell_box(pos, e.grid, e.view.size)
        assert cell_at((x0 + x1) / 2, (y0 + y1) / 2, e.grid, e.view.size) == pos
        here = e.at((x0 + x1) / 2, y0 + 0.01)
        v = e.v[0]
        winning = np.where(v >= 0, e.positions[0, 0], e.positions[0, 1])
        assert set(here["channel"]) == set(np.flatnonzero(winning == pos))
        np.testing.assert_allclose(here["contribution"], e.W[e.target, here["channel"]] * v[here["channel"]])
        assert (np.diff(np.abs(here["contribution"].to_numpy())) <= 1e-12).all()  # largest first
    centres = [cell_box(p, e.grid, e.view.size) for p in range(gh * gw)]
    total = sum(e.at((x0 + x1) / 2, (y0 + y1) / 2)["contribution"].sum() for x0, y0, x1, y1 in centres)
    assert total == pytest.approx(e.logit - e.target_bias)  # every channel peaks in exactly one cell
    with pytest.raises(ValueError, match="outside"):
        e.at(sw + 1, 0)


def test_channel_overview_counts_classes_and_purity(run):
    index = run.index("train")
    df = channel_overview(run.model, index)
    W = run.model.W.double().numpy()
    assert len(df) == W.shape[1]
    np.testing.assert_array_equal(df["classes"], (W > 1e-3).sum(0))
    fired = df[df["channel"].isin(index.table.loc[index.table["side"] == "pos", "channel"])]
    d = int(fired["classes"].idxmax())
    assert df.loc[d, "top_class"] == explain_channel(run.model, d).classes["class"].iloc[0]
    labels = index.prototypes(d, "pos")["label"]
    assert df.loc[d, "class_purity"] == pytest.approx(labels.value_counts().iloc[0] / len(labels))
    assert ((df["fires"] >= 0) & (df["fires"] <= 1)).all()


def test_prototype_parts_agree_with_the_purity_metric(run):
    index, ds = run.index("train"), run.dataset("train")
    assert has_parts(ds)
    cache = {}
    channels = sorted(index.table["channel"].unique())[:6]
    purity = channel_purity(index, ds, run.model.transform, channels)
    for d in channels:
        pp = prototype_parts(index, ds, run.model.transform, d, cache=cache)
        assert list(pp["image"]) == list(index.prototypes(d, "pos")["image"])
        named = [p[0] for p in pp["parts"] if p]
        assert all(n in ds.part_names for n in named)
        top = max((named.count(n) for n in set(named)), default=0)
        assert purity[d] == pytest.approx(top / len(pp))
    assert any(k[0] == "cells" for k in cache)  # the cache was filled, so a second call reads no masks
    ref = parts_purity(index, ds, run.model.transform, channels=channels).set_index("channel")["purity"]
    np.testing.assert_allclose(purity.to_numpy(), ref.reindex(channels).to_numpy())


def test_gradcam_is_computed_from_the_explanation_without_a_second_backbone_pass(run):
    e = run.explain(2)
    model = run.model
    x = model.transform(run.dataset("test").load_image(2))[None]
    with torch.no_grad():
        F_ = model.backbone(x)
    torch.testing.assert_close(backbone_maps(model, e), F_, rtol=1e-4, atol=1e-4)  # F = U^T J

    cams = PosthocCAM(model)
    for target in (0, 3):
        maps = cams(e, target)
        assert set(maps) == {"Grad-CAM", "Grad-CAM++"}
        assert maps["Grad-CAM"].shape == e.view.size[::-1]
        # Grad-CAM by hand: gradient-averaged channel weights, ReLU of the weighted sum, scaled to [0, 1]
        f = F_.clone().requires_grad_(True)
        logit = model.head(f)[0, target]
        (g,) = torch.autograd.grad(logit, f)
        cam = torch.relu((g.mean((2, 3), keepdim=True) * f).sum(1))[0].detach()
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-8)
        up = torch.nn.functional.interpolate(cam[None, None], size=e.view.size[::-1], mode="bilinear",
                                             align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(maps["Grad-CAM"], up, atol=2e-3)
    with pytest.raises(ValueError, match="unknown CAM method"):
        PosthocCAM(model, ["Score-CAM"])


def test_the_waterfall_adds_up_to_the_logit_and_names_its_channels(run):
    e = run.explain(0)
    for target in range(3):
        t = e.with_target(target)
        fig = waterfall_figure(t, n=3)
        w = fig.data[0]
        steps = np.asarray(w.x[:-1], float)
        assert w.measure[-1] == "total" and w.x[-1] == pytest.approx(t.logit)
        assert steps.sum() == pytest.approx(t.logit)
        shown = [c for c in w.customdata if c >= 0]
        table = t.table().set_index("channel")
        for label, value, c in zip(w.y, w.x, w.customdata):
            if c >= 0:
                assert label == f"ch {c}" and value == pytest.approx(table.at[c, "contribution"])
        assert len(shown) <= 6


def test_versus_classes_histogram_and_history_figures(run):
    e = run.explain(0)
    other = int(np.argsort(-e.logits[0])[1])
    fig = versus_figure(e, other, n=4)
    vs = e.versus(other).set_index("channel")
    for c, a, b in fig.data[0].customdata:
        assert vs.at[int(c), "contribution_target"] == pytest.approx(a)
        assert vs.at[int(c), "contribution_other"] == pytest.approx(b)
    ce = explain_channel(run.model, 0)
    assert list(classes_figure(ce.classes, 0).data[0].y) == [str(n) for n in ce.classes["name"][:10]]
    h = value_histogram(np.array([1.0, 2.0, np.nan]), 0, {"positive prototypes": np.array([2.0])})
    assert len(h.data[0].x) == 2 and list(h.data[1].x) == [2.0]
    hist = run.history
    hf = history_figure(hist)
    assert list(hf.data[0].y) == list(hist["train_loss"])
