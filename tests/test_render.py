"""The renderer: prototype patches and evidence from the index and the feature cache, cached, in batches."""

import dataclasses

import numpy as np
import pytest
import torch

import infodisent
from infodisent.core.geometry import around, cell_box
from infodisent.explain.render import LRU, Renderer


@pytest.fixture
def run(tiny_run):
    _, _, cfg = tiny_run
    return infodisent.open_run(cfg.out)


class Counting:
    """Wraps a dataset and counts its image reads."""

    def __init__(self, ds):
        self.ds, self.reads = ds, 0

    def __getattr__(self, name):
        return getattr(self.ds, name)

    def load_image(self, i):
        self.reads += 1
        return self.ds.load_image(i)


def test_prototype_patches_boxes_and_heatmaps(run):
    r = run.renderer("train")
    index = run.index("train")
    counts = index.table.groupby(["channel", "side"]).size().unstack(fill_value=0)
    both = counts[(counts["pos"] >= 3) & (counts["neg"] >= 3)].index
    assert len(both), "the tiny run has channels firing on both sides"
    for side in ("pos", "neg"):
        patches = r.prototypes(int(both[0]), side, n=3)
        rows = index.prototypes(int(both[0]), side).head(3)
        assert len(patches) == 3 and [p.image for p in patches] == list(rows["image"]) and [p.rank for p in patches] == [0, 1, 2]
        for p, (_, row) in zip(patches, rows.iterrows()):
            assert p.view.size == (64, 64) and p.heatmap.shape == (64, 64) and p.side == side
            assert p.box == cell_box(int(row["position"]), (2, 2), (64, 64))
            y, x = np.unravel_index(p.heatmap.argmax(), p.heatmap.shape)
            assert p.box[0] <= x < p.box[2] and p.box[1] <= y < p.box[3]  # the heatmap peaks in the box
            assert p.heatmap.max() == pytest.approx(p.value, rel=2e-2, abs=1e-3)
            x0, y0, x1, y1 = around(p.box, (64, 64), 64)  # 2 cells of 32 px around the box, clipped
            assert p.crop().size == (int(x1) - int(x0), int(y1) - int(y0)) and p.crop().size[0] in (48, 64)
    d = int(both[0])
    assert r.prototype(d, "pos", 1).image == int(index.prototypes(d, "pos")["image"][1])
    with pytest.raises(ValueError, match="outside"):
        r.prototypes(96)
    with pytest.raises(ValueError, match="side"):
        r.prototypes(3, "up")
    with pytest.raises(ValueError, match="rank 99"):
        r.prototype(3, "pos", 99)


def test_channel_maps_need_only_one_row_of_U(run):
    r = run.renderer("train")
    F_ = r.feature_maps([0, 4])
    full = torch.einsum("ed,bdhw->behw", run.model.U, torch.from_numpy(F_.astype(np.float32)))
    np.testing.assert_allclose(r.channel_maps([0, 4], 7), full[:, 7].numpy(), rtol=1e-5, atol=1e-6)
    cache = run.cache("train")
    row = int(np.flatnonzero(cache.indices == 4)[0])
    np.testing.assert_array_equal(F_[1], cache.features[row])  # read from the feature cache


def test_warm_renders_read_nothing_and_cold_ones_read_each_image_once(run):
    ds = Counting(run.dataset("train"))
    r = Renderer(run.model, ds, run.index("train"), run.cache("train"))
    first = r.prototypes(11, "pos")
    images = {p.image for p in first}
    assert ds.reads == len(images)  # one read per distinct image, nothing else
    again = r.prototypes(11, "pos")
    assert ds.reads == len(images)  # warm: nothing read again
    for a, b in zip(first, again):
        assert a.image == b.image and a.box == b.box and np.array_equal(a.heatmap, b.heatmap)
    firing = sorted(set(run.index("train").table.query("side == 'pos'")["channel"]))[:20]
    silent = sorted(set(range(96)) - set(run.index("train").table.query("side == 'pos'")["channel"]))
    keys = [(d, "pos", 0) for d in firing] + [(d, "pos", 0) for d in silent[:1]]
    batch = r.render(keys)
    assert [p.channel for p in batch[:len(firing)]] == firing and all(p.rank == 0 for p in batch[:len(firing)])
    assert batch[len(firing):] == [None] * len(silent[:1])  # a channel that never fires on that side
    assert ds.reads == len({p.image for p in batch if p} | images)  # each image read once, however many patches


def test_without_a_feature_cache_the_backbone_gives_the_same_maps(run):
    with_cache = run.renderer("train")
    without = Renderer(run.model, run.dataset("train"), run.index("train"), features=None)
    a, b = with_cache.prototypes(9, "neg", 2), without.prototypes(9, "neg", 2)
    for p, q in zip(a, b):
        assert p.image == q.image and p.box == q.box
        np.testing.assert_allclose(p.heatmap, q.heatmap, atol=2e-2)  # the cache holds fp16 maps


def test_evidence_comes_from_the_explanation(run):
    ds = Counting(run.dataset("train"))
    r = Renderer(run.model, ds, run.index("train"), run.cache("train"))
    e = run.explain(4)
    for ev in e.evidence(2):
        p = r.evidence(e, ev.channel)
        assert p.channel == ev.channel and p.side == ev.side and p.box == ev.box and p.image == 4
        sign = 1.0 if ev.side == "pos" else -1.0
        np.testing.assert_allclose(p.heatmap, sign * r.heatmap(e, ev.channel), atol=1e-6)
        y, x = np.unravel_index(p.heatmap.argmax(), p.heatmap.shape)
        assert ev.box[0] <= x < ev.box[2] and ev.box[1] <= y < ev.box[3]
    assert ds.reads == 0  # the explanation holds its view: no image read for evidence


def test_an_index_of_another_backbone_is_refused(run):
    index = run.index("train")
    meta = dataclasses.replace(index.meta, channels=64)
    other = dataclasses.replace(index, meta=meta)  # a copy: the shared index is left alone
    r = Renderer(run.model, run.dataset("train"), other, run.cache("train"))
    with pytest.raises(ValueError, match="another backbone"):
        r.prototypes(5)
    assert run.index("train").channels == 96


def test_a_renderer_without_index_says_how_to_get_one(run):
    r = Renderer(run.model, run.dataset("train"))
    with pytest.raises(ValueError, match="infodisent mine"):
        r.prototypes(0)


def test_lru_evicts_the_least_recently_used():
    c = LRU(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # "a" is now the most recent
    c.put("c", 3)
    assert "b" not in c and "a" in c and "c" in c and len(c) == 2
    assert c.get("b") is None and (c.hits, c.misses) == (1, 1)


def test_tiny_caches_still_return_everything_asked_for(run):
    """A request larger than the caches: entries evicted during the call are not lost."""
    r = Renderer(run.model, run.dataset("train"), run.index("train"), run.cache("train"), images=2, maps=3,
                 patches=2)
    r.feature_maps([0, 1, 2])
    maps = r.feature_maps([0, 5, 6, 7, 0])
    assert maps.shape[0] == 5
    np.testing.assert_array_equal(maps[0], maps[4])
    firing = sorted(set(run.index("train").table.query("side == 'pos'")["channel"]))[:6]
    patches = r.render([(d, "pos", 0) for d in firing])
    assert [p.channel for p in patches] == firing
    assert len(r.prototypes(firing[0], "pos")) == len(run.index("train").rows(firing[0], "pos"))
    without = Renderer(run.model, run.dataset("train"), run.index("train"), maps=2)
    assert without.feature_maps(list(range(5)), batch_size=2).shape[0] == 5  # backbone, in batches of 2
