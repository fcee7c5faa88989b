"""Local and global explanations: the logit is the sum of its contributions, and the pieces are the right ones."""

import numpy as np
import pytest
import torch

import infodisent
from infodisent.core.geometry import cell_at, cell_box
from infodisent.core.head import InfoDisentHead
from infodisent.core.model import InfoDisent
from infodisent.explain.explanation import channel_overview, explain, explain_channel, explain_class
from infodisent.records.model import HeadConfig


@pytest.fixture(scope="module")
def model_and_data(tiny_run):
    _, _, cfg = tiny_run
    run = infodisent.open_run(cfg.out)
    return run.model, run.index("train"), run.dataset("test")


def test_contributions_reproduce_the_logit(model_and_data):
    model, index, ds = model_and_data
    for i in (0, 7, 13):
        e = explain(model, ds.load_image(i))
        # the method computed by hand from the backbone's maps: J = U F, v = max ReLU(J) - max ReLU(-J), W v
        with torch.no_grad():
            F_ = model.backbone(model.transform(ds.load_image(i)).unsqueeze(0))[0].flatten(1)  # (D, HW)
            J = model.U @ F_
            v = J.clamp_min(0).max(1).values - (-J).clamp_min(0).max(1).values
            logits = model.W @ v + (model.bias if model.bias is not None else 0)
        assert e.target == e.predicted == int(torch.argmax(logits))
        np.testing.assert_allclose(e.logits[0], logits.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(e.contributions[0], (model.W[e.target] * v).numpy(), rtol=1e-4, atol=1e-5)
        assert e.reconstruction_error < 1e-4
        assert e.contributions.sum() == pytest.approx(e.logit, rel=1e-4, abs=1e-6)
        pos, neg = e.positive, e.negative
        assert (pos["contribution"] > 0).all() and (neg["contribution"] < 0).all()
        assert pos["contribution"].is_monotonic_decreasing and neg["contribution"].is_monotonic_increasing
        assert pos["contribution"].sum() + neg["contribution"].sum() == pytest.approx(e.logit, rel=1e-4, abs=1e-6)
        assert pos["share"].sum() == pytest.approx(1.0) and neg["share"].sum() == pytest.approx(1.0)
        assert (neg["share"] > 0).all() and neg["share"].is_monotonic_decreasing


def test_coverage_says_how_much_of_the_decision_is_shown(model_and_data):
    model, _, ds = model_and_data
    e = explain(model, ds.load_image(3))
    contrib = e.contributions[0]
    cov = e.coverage(3)  # the three largest contributions by size
    assert set(cov.channels) == set(np.argsort(-np.abs(contrib))[:3].tolist())
    assert cov.shown + cov.rest + cov.bias == pytest.approx(e.logit, rel=1e-4, abs=1e-5)
    assert cov.share == pytest.approx(np.abs(contrib[list(cov.channels)]).sum() / np.abs(contrib).sum())
    assert 0 < cov.share < 1 and cov.others == np.count_nonzero(contrib) - 3  # a dense head: the rest is not zero
    assert f"these 3 channels carry {100 * cov.share:.1f}% of the evidence" in cov.sentence()
    assert e.coverage(range(contrib.size)).share == pytest.approx(1.0)
    default = e.coverage()  # what evidence() shows: 5 strongest each side
    assert set(default.channels) == {ev.channel for ev in e.evidence()}
    # a head whose class keeps 2 channels: those 2 carry all of it, and the sentence says nothing else contributes
    head = model.head
    pruned = InfoDisentHead(HeadConfig(**{**head.config.to_dict(), "pruned": True}))
    pruned.load_state_dict({k: v for k, v in head.state_dict().items()}, strict=False)
    mask = torch.zeros_like(pruned.weight_mask)
    mask[:, :2] = 1
    pruned.set_mask(mask)
    sparse_model = InfoDisent(model.backbone, pruned.eval(), model.class_names)
    s = explain(sparse_model, ds.load_image(3))
    cov = s.coverage(2)
    assert cov.share == pytest.approx(1.0) and cov.others == 0 and cov.rest == 0.0
    assert "no other channel contributes" in cov.sentence() and sparse_model.channels_per_class == 2
    with pytest.raises(ValueError, match="holds 2 images"):
        explain(model, [ds.load_image(0), ds.load_image(1)]).coverage()


def test_logits_match_the_model_and_a_tensor_input(model_and_data):
    model, _, ds = model_and_data
    img = ds.load_image(3)
    e = explain(model, img)
    x = model.transform(img)
    np.testing.assert_allclose(e.logits[0], model.outputs(x[None]).logits[0].numpy(), rtol=1e-5, atol=1e-6)
    e2 = explain(model, x, target=2)
    np.testing.assert_allclose(e2.logits, e.logits, rtol=1e-5, atol=1e-6)
    assert e2.target == 2 and e2.view.size == e.view.size
    np.testing.assert_array_equal(np.asarray(e2.view), np.asarray(e.view))  # the view, recovered from the tensor
    assert list(e.top5["class"]) == list(np.argsort(-e.logits[0])[:5])
    assert e.top5["probability"].is_monotonic_decreasing


def test_bias_is_part_of_the_decomposition(tiny_backbone):
    head = infodisent.InfoDisentHead(infodisent.HeadConfig(96, 4, bias=True))
    with torch.no_grad():
        head.classifier.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    model = infodisent.InfoDisent(tiny_backbone, head)
    x = torch.randn(3, 64, 64)
    batch = explain(model, torch.stack([x, -x]), target=[1, 2])
    assert list(batch.targets) == [1, 2] and batch.reconstruction_error < 1e-4
    np.testing.assert_allclose(batch.contributions.sum(1) + batch.bias_terms,
                               batch.logits[[0, 1], [1, 2]], rtol=1e-6)
    for target in range(4):
        e = explain(model, x, target=target)
        assert e.target_bias == pytest.approx(float(head.bias.detach()[target]))
        assert e.reconstruction_error < 1e-4
        assert e.contributions.sum() + e.target_bias == pytest.approx(e.logit, rel=1e-4)


def test_why_a_and_not_b(model_and_data):
    model, _, ds = model_and_data
    e = explain(model, ds.load_image(5))
    b = int(np.argsort(-e.logits[0])[1])
    t = e.versus(b)
    assert t["difference"].is_monotonic_decreasing
    assert t["difference"].sum() == pytest.approx(e.logits[0, e.target] - e.logits[0, b], rel=1e-4, abs=1e-6)
    # the same decision explained for b directly: versus is the difference of the two explanations
    eb = explain(model, ds.load_image(5), target=b)
    by = t.set_index("channel")
    channels = by.index.to_numpy()
    np.testing.assert_allclose(by["contribution_target"], e.contributions[0, channels], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(by["contribution_other"], eb.contributions[0, channels], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(by["difference"], e.contributions[0, channels] - eb.contributions[0, channels],
                               rtol=1e-5, atol=1e-7)


def test_evidence_is_numbers_with_positions_and_boxes(model_and_data):
    model, _, ds = model_and_data
    e = explain(model, ds.load_image(1))
    ev = e.evidence(3)
    pos = [x for x in ev if x.contribution > 0]
    neg = [x for x in ev if x.contribution < 0]
    assert [x.channel for x in pos] == list(e.positive["channel"].head(3))
    assert [x.channel for x in neg] == list(e.negative["channel"].head(3))
    J = e.J[0]
    for x in ev:
        side = 0 if x.value >= 0 else 1
        assert x.position == e.positions[0, side, x.channel]
        flat = J[x.channel].ravel()
        assert x.position == (flat.argmax() if side == 0 else flat.argmin())  # the winning response's cell
        assert x.box == cell_box(x.position, (2, 2), (64, 64))
        assert x.contribution == pytest.approx(x.weight * x.value)


def test_a_batch_is_the_images_one_by_one(model_and_data):
    model, _, ds = model_and_data
    imgs = [ds.load_image(i) for i in (2, 5, 9)]
    batch = explain(model, imgs)
    assert len(batch) == 3 and batch.J.shape == (3, 96, 2, 2) and batch.positions.shape == (3, 2, 96)
    for j, img in enumerate(imgs):
        one = explain(model, img)
        np.testing.assert_allclose(batch[j].logits, one.logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(batch[j].positions, one.positions)
        assert batch[j].target == one.target
    assert batch[-1].target == batch.targets[2]
    with pytest.raises(ValueError, match="holds 3 images"):
        batch.logit
    assert repr(batch) == "Explanation(3 images; 96 channels on a 2x2 grid)"
    assert repr(batch[1]).startswith(f"Explanation(predicted {batch[1].predicted_name!r}")
    other = batch.with_target(0)
    assert list(other.targets) == [0, 0, 0] and other.reconstruction_error < 1e-4


def test_bad_inputs_get_clear_errors(model_and_data):
    model, _, ds = model_and_data
    img = ds.load_image(0)
    with pytest.raises(ValueError, match="not a class"):
        explain(model, img, target=99)
    for bad in (1.5, "1", True, None.__class__):
        with pytest.raises(TypeError, match="integer class index"):
            explain(model, img, target=bad)
    e = explain(model, img)
    for bad in (99, -1):
        with pytest.raises(ValueError, match="not a class"):
            e.versus(bad)
    with pytest.raises(TypeError, match="integer"):
        e.versus(2.0)
    assert explain(model, img, target=np.int64(2)).target == 2
    with pytest.raises(TypeError, match="PIL image"):
        explain(model, np.zeros((64, 64, 3)))
    with pytest.raises(ValueError, match="input size"):
        explain(model, torch.zeros(3, 8, 8))  # silently a zero explanation before
    with pytest.raises(ValueError, match="input size"):
        explain(model, torch.zeros(2, 1, 64, 64))
    with pytest.raises(ValueError, match="2 targets for 1 images"):
        explain(model, img, target=[0, 1])
    x = model.transform(img)
    assert len(explain(model, [x, x])) == 2  # a list of tensors is a batch
    with pytest.raises(ValueError, match="one shape"):
        explain(model, [x, x[:, :32]])


def test_global_explanations(model_and_data):
    model, index, _ = model_and_data
    W = model.W.numpy()
    ce = explain_class(model, 2, index)
    assert ce.channels["weight"].is_monotonic_decreasing and (ce.channels["weight"] > 1e-3).all()
    assert set(ce.channels["channel"]) == set(np.flatnonzero(W[2] > 1e-3))
    assert ce.channels["share"].sum() == pytest.approx(W[2][W[2] > 1e-3].sum() / W[2][W[2] > 0].sum())
    mask = index.labels == 2
    d = int(ce.channels["channel"][0])
    assert ce.channels["mean_value"][0] == pytest.approx(float(np.asarray(index.v)[mask, d].mean()), rel=1e-5)
    ch = explain_channel(model, d, index)
    assert ch.classes["weight"].is_monotonic_decreasing and 2 in set(ch.classes["class"])
    assert set(ch.prototypes["channel"]) == {d} and set(ch.prototypes["side"]) <= {"pos", "neg"}
    assert len(ch.prototypes) == len(index.table[index.table["channel"] == d])
    with pytest.raises(ValueError, match="outside"):
        explain_channel(model, 500)
    with pytest.raises(TypeError, match="integer class index"):
        explain_class(model, "2")


def test_vit_boxes_are_patches_and_avg_pooling_still_decomposes():
    from PIL import Image

    bb = infodisent.load_backbone("test_vit", "random")  # 160 px, patch 16: a 10x10 token grid
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8))
    for pooling in ("max", "avg"):
        model = infodisent.InfoDisent(bb, infodisent.InfoDisentHead(infodisent.HeadConfig(bb.num_features, 3, pooling=pooling)))
        e = explain(model, img)
        assert e.J.shape == (1, 64, 10, 10) and e.view.size == (160, 160)
        assert e.reconstruction_error < 1e-4
        for ev in e.evidence(2):
            x0, y0, x1, y1 = ev.box
            assert (x1 - x0, y1 - y0) == (16.0, 16.0) and x0 % 16 == 0 and y0 % 16 == 0


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
