"""Local and global explanations: the logit is the sum of its contributions, and the pieces are the right ones."""

import numpy as np
import pytest
import torch

import infodisent
from infodisent.explain import explain, explain_channel, explain_class
from infodisent.geometry import cell_box
from infodisent.runs import run_dataset


@pytest.fixture(scope="module")
def model_and_data(tiny_run):
    _, index, cfg = tiny_run
    model = infodisent.load(cfg.out)
    return model, index, run_dataset(cfg.out, split="test")


def test_contributions_reproduce_the_logit(model_and_data):
    model, index, ds = model_and_data
    for i in (0, 7, 13):
        e = explain(model, ds.load_image(i), index=index, top=3, prototypes=2)
        assert e.target == e.predicted == int(np.argmax(e.logits))
        assert e.reconstruction_error < 1e-4
        np.testing.assert_allclose(e.contributions, e.W[e.target] * e.v)
        assert e.contributions.sum() == pytest.approx(e.logit, rel=1e-4, abs=1e-6)
        pos, neg = e.positive, e.negative
        assert (pos["contribution"] > 0).all() and (neg["contribution"] < 0).all()
        assert pos["contribution"].is_monotonic_decreasing and neg["contribution"].is_monotonic_increasing
        assert pos["contribution"].sum() + neg["contribution"].sum() == pytest.approx(e.logit, rel=1e-4, abs=1e-6)
        assert pos["share_of_positive"].sum() == pytest.approx(1.0)


def test_logits_match_the_model_and_a_tensor_input(model_and_data):
    model, _, ds = model_and_data
    img = ds.load_image(3)
    e = explain(model, img)
    x = model.transform(img)
    np.testing.assert_allclose(e.logits, model.outputs(x[None]).logits[0].numpy(), rtol=1e-5, atol=1e-6)
    e2 = explain(model, x, target=2)
    np.testing.assert_allclose(e2.logits, e.logits, rtol=1e-5, atol=1e-6)
    assert e2.target == 2 and e2.image.size == e.image.size
    assert list(e.top5["class"]) == list(np.argsort(-e.logits)[:5])
    assert e.top5["probability"].is_monotonic_decreasing


def test_bias_is_part_of_the_decomposition(tiny_backbone):
    head = infodisent.InfoDisentHead(infodisent.HeadConfig(96, 4, bias=True))
    with torch.no_grad():
        head.classifier.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    model = infodisent.InfoDisent(tiny_backbone, head)
    x = torch.randn(3, 64, 64)
    for target in range(4):
        e = explain(model, x, target=target)
        assert e.bias_term == pytest.approx(float(head.bias.detach()[target]))
        assert e.reconstruction_error < 1e-4
        assert e.contributions.sum() + e.bias_term == pytest.approx(e.logit, rel=1e-4)


def test_why_a_and_not_b(model_and_data):
    model, _, ds = model_and_data
    e = explain(model, ds.load_image(5))
    b = int(np.argsort(-e.logits)[1])
    t = e.versus(b)
    assert t["difference"].is_monotonic_decreasing
    assert t["difference"].sum() == pytest.approx(e.logits[e.target] - e.logits[b], rel=1e-4, abs=1e-6)
    row = t.set_index("channel").loc[11]
    assert row["difference"] == pytest.approx(e.W[e.target, 11] * e.v[11] - e.W[b, 11] * e.v[11])


def test_evidence_heatmaps_boxes_and_prototypes(model_and_data):
    model, index, ds = model_and_data
    e = explain(model, ds.load_image(1), index=index, top=3, prototypes=2)
    pos = [ev for ev in e.evidence if ev.contribution > 0]
    neg = [ev for ev in e.evidence if ev.contribution < 0]
    assert [ev.channel for ev in pos] == list(e.positive["channel"].head(3))
    assert [ev.channel for ev in neg] == list(e.negative["channel"].head(3))
    for ev in e.evidence:
        assert ev.heatmap.shape == (64, 64)
        side = 0 if ev.value >= 0 else 1
        assert ev.position == e.positions[side, ev.channel]
        assert ev.box == cell_box(ev.position, (2, 2), (64, 64))
        assert 1 <= len(ev.prototypes) <= 2 and all(p.channel == ev.channel for p in ev.prototypes)
        assert all(p.side == ev.side for p in ev.prototypes)
        np.testing.assert_allclose(e.heatmap(ev.channel) * (1 if side == 0 else -1), ev.heatmap, atol=1e-6)


def test_bad_inputs(model_and_data):
    model, _, ds = model_and_data
    with pytest.raises(ValueError, match="not a class"):
        explain(model, ds.load_image(0), target=99)
    with pytest.raises(TypeError, match="PIL image"):
        explain(model, np.zeros((64, 64, 3)))
    with pytest.raises(ValueError, match="one image"):
        explain(model, torch.zeros(2, 3, 64, 64))


def test_global_explanations(model_and_data):
    model, index, _ = model_and_data
    W = model.W.numpy()
    ce = explain_class(model, 2, index, top=2, prototypes=3)
    assert ce.channels["weight"].is_monotonic_decreasing and (ce.channels["weight"] > 1e-3).all()
    assert set(ce.channels["channel"]) == set(np.flatnonzero(W[2] > 1e-3))
    assert ce.channels["share"].sum() == pytest.approx(W[2][W[2] > 1e-3].sum() / W[2][W[2] > 0].sum())
    mask = index.labels == 2
    d = int(ce.channels["channel"][0])
    assert ce.channels["mean_value"][0] == pytest.approx(float(np.asarray(index.v)[mask, d].mean()), rel=1e-5)
    assert list(ce.prototypes) == list(ce.channels["channel"].head(2))
    ch = explain_channel(model, d, index, prototypes=2)
    assert ch.classes["weight"].is_monotonic_decreasing and 2 in set(ch.classes["class"])
    assert set(ch.prototypes) == {"pos", "neg"} and len(ch.prototypes["pos"]) <= 2
    assert set(ch.table["channel"]) == {d}
    with pytest.raises(ValueError, match="outside"):
        explain_channel(model, 500)


def test_vit_boxes_are_patches_and_avg_pooling_still_decomposes():
    from PIL import Image

    bb = infodisent.load_backbone("test_vit", "random")  # 160 px, patch 16: a 10x10 token grid
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8))
    for pooling in ("max", "avg"):
        model = infodisent.InfoDisent(bb, infodisent.InfoDisentHead(infodisent.HeadConfig(bb.num_features, 3, pooling=pooling)))
        e = explain(model, img, top=2)
        assert e.J.shape == (64, 10, 10) and e.image.size == (160, 160)
        assert e.reconstruction_error < 1e-4
        for ev in e.evidence:
            x0, y0, x1, y1 = ev.box
            assert (x1 - x0, y1 - y0) == (16.0, 16.0) and x0 % 16 == 0 and y0 % 16 == 0
