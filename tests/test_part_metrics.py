"""Part purity, pointing game, CUB consistency and stability on hand-built indexes with known answers."""

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import CUB50, require, write_image
from torchvision import transforms as T

import infodisent
from infodisent.eval.evaluation import explanation_metrics
from infodisent.eval.part_metrics import (
    KeypointRegions,
    cell_coverage,
    channel_classes,
    channel_purity,
    cub_part_metrics,
    has_parts,
    part_groups,
    parts_purity,
    pointing_game,
    prototype_parts,
)
from infodisent.explain.prototypes import IndexMeta, PrototypeIndex
from infodisent.records.data import DatasetSpec

NO_RESIZE = T.Compose([])  # the view is the image itself


class FakeParts:
    """Two part types on 64x64 images with a 2x2 grid: part 0 fills the top-left cell, part 1 the bottom-right."""

    part_names = ["eye", "wheel"]
    parts_of_class = [(0,), (1,)]

    def masks(self, i):
        m = np.zeros((2, 64, 64), bool)
        m[0, :32, :32] = True
        m[1, 40:64, 40:64] = True  # 24x24 of the 32x32 bottom-right cell
        return m


def _index(table_rows, v=None, positions=None, labels=None, n=4, d=3):
    table = pd.DataFrame(table_rows, columns=["channel", "side", "rank", "image", "position"])
    table["row"], table["col"] = table["position"] // 2, table["position"] % 2
    table["label"], table["value"] = 0, 1.0
    v = np.zeros((n, d), np.float32) if v is None else v
    positions = np.zeros((n, 2, d), np.int16) if positions is None else positions
    labels = np.zeros(n, int) if labels is None else labels
    meta = IndexMeta(dataset=DatasetSpec("parts", None, "test"), classes=["a", "b"], k=4, grid=(2, 2), view=(64, 64),
                     channels=d, num_images=n, num_valid=n, pooling="max", source="cache")
    return PrototypeIndex(table, v, positions, labels, meta)


def test_cell_coverage():
    cov = cell_coverage(FakeParts().masks(0), (2, 2))
    np.testing.assert_allclose(cov[0], [[1, 0], [0, 0]])
    np.testing.assert_allclose(cov[1], [[0, 0], [0, (24 * 24) / (32 * 32)]])


def test_parts_purity_counts_the_dominant_part():
    rows = [(0, "pos", r, r, 0) for r in range(3)] + [(0, "pos", 3, 3, 3)]  # 3 x eye, 1 x wheel
    rows += [(1, "pos", r, r, 1) for r in range(4)]  # background only
    rows += [(2, "pos", 0, 0, 3), (2, "neg", 0, 1, 0)]  # the neg side is ignored
    pur = parts_purity(_index(rows), FakeParts(), NO_RESIZE).set_index("channel")
    assert pur.loc[0, "part"] == 0 and pur.loc[0, "purity"] == pytest.approx(0.75)
    assert pur.loc[1, "part"] == -1 and pur.loc[1, "purity"] == 0.0 and pur.loc[1, "background"] == 1.0
    assert pur.loc[2, "part"] == 1 and pur.loc[2, "purity"] == 1.0 and pur.loc[2, "patches"] == 1
    strict = parts_purity(_index(rows), FakeParts(), NO_RESIZE, min_coverage=0.9).set_index("channel")
    assert strict.loc[2, "part"] == -1  # the wheel covers only 56 % of its cell


def test_pointing_game_hits_misses_and_chance():
    W = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    v = np.array([[5.0, 1.0, 0.0], [0.2, 3.0, 0.0], [1.0, 0.0, 0.0], [0.0, -2.0, 0.0]], np.float32)
    positions = np.zeros((4, 2, 3), np.int16)
    positions[0, 0, 0] = 0  # class 0 (eye), top channel 0 points at the eye: hit
    positions[1, 0, 1] = 0  # class 1 (wheel), channel 1 points at the eye cell: miss
    positions[2, 0, 0] = 3  # class 0, channel 0 points at the wheel cell centre (48, 48): miss, 16 px > 15 from the eye
    pg = pointing_game(_index([], v=v[:3], positions=positions[:3], n=3), FakeParts(), NO_RESIZE, W)
    assert list(pg["predicted"]) == [0, 1, 0] and list(pg["channel"]) == [0, 1, 0]
    assert list(pg["hit"]) == [True, False, False]
    assert (pg["x"][0], pg["y"][0]) == (16.0, 16.0)
    # chance: share of the view within 15 px of the predicted class's parts
    eye_zone = (np.add.outer(np.arange(64), np.zeros(64)) < 32 + 15) & (np.add.outer(np.zeros(64), np.arange(64)) < 32 + 15)
    assert pg["chance"][0] == pytest.approx(eye_zone.mean(), abs=0.02)


def test_pointing_game_follows_the_negative_side_when_v_is_negative():
    W = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 0.0]])  # an unconstrained W: v_1 < 0 argues for class 0
    v = np.array([[0.0, -2.0, 0.0]], np.float32)
    positions = np.zeros((1, 2, 3), np.int16)
    positions[0, 0, 1] = 3  # the pos side sits on the wheel
    positions[0, 1, 1] = 0  # the neg side (the one that made v negative) on the eye
    pg = pointing_game(_index([], v=v, positions=positions, n=1), FakeParts(), NO_RESIZE, W)
    assert pg["predicted"][0] == 0 and pg["channel"][0] == 1
    assert (pg["x"][0], pg["y"][0]) == (16.0, 16.0) and pg["hit"][0]


def test_stability_noise_is_huang_et_al_s():
    """EvalProtoPNet's perturb_img: N(0, 0.2) clipped to +-0.25 on the ImageNet-normalised input."""

    from infodisent.eval.part_metrics import IMAGENET_STD, perturb

    pixels = torch.full((4, 3, 64, 64), 0.5)
    noise = (perturb(pixels, generator=torch.Generator().manual_seed(0)) - pixels) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert noise.abs().max() <= 0.25 + 1e-6 and (noise.abs() > 0.2499).float().mean() == pytest.approx(0.2113, abs=0.01)
    assert noise.std() == pytest.approx(0.163, abs=0.004)  # the std of N(0, 0.2) clipped at 1.25 sigma
    assert noise.mean().abs() < 0.005
    again = perturb(pixels, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, pixels + noise * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))


def test_part_groups_merge_left_and_right():
    groups, ids = part_groups(["back", "left eye", "right eye", "left wing", "tail"])
    assert groups == ["back", "eye", "wing", "tail"] and list(ids) == [0, 1, 1, 2, 3]


def test_channel_classes_are_those_with_it_among_their_heaviest():
    W = np.array([[0.9, 0.5, 0.0, 0.1], [0.0, 0.8, 0.7, 0.0]])
    got = channel_classes(W, top=2)
    assert {d: list(c) for d, c in got.items()} == {0: [0], 1: [0, 1], 2: [1]}


class FakeCUB:
    """Two images (100x100, no resize) with keypoints; part ids 1..3 = back, left eye, right eye."""

    part_names = ["back", "left eye", "right eye"]

    def __init__(self, tmp):
        self.paths = [str(write_image(tmp / f"{i}.png", i, size=(64, 64))) for i in range(4)]
        rows = []
        for i in range(4):
            rows += [(i, i + 1, 1, 10.0, 10.0, 1), (i, i + 1, 2, 50.0, 50.0, 1), (i, i + 1, 3, 60.0, 10.0, int(i < 2))]
        self.part_locs = pd.DataFrame(rows, columns=["index", "image_id", "part_id", "x", "y", "visible"])


def test_keypoint_regions(tmp_path):
    ds = FakeCUB(tmp_path)
    regions = KeypointRegions(ds, NO_RESIZE, (2, 2), window_cells=1.0)  # region = the cell itself
    assert regions.groups == ["back", "eye"]
    assert list(regions.present(0, 0)) == [True, False]  # back at (10, 10)
    assert list(regions.present(0, 1)) == [False, True]  # right eye at (60, 10)
    assert list(regions.present(2, 1)) == [False, False]  # ... invisible on image 2
    assert list(regions.present(0, 3)) == [False, True]  # left eye at (50, 50)
    assert list(regions.visible(3)) == [True, True]


def test_cub_purity_and_consistency(tmp_path):
    ds = FakeCUB(tmp_path)
    W = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    rows = [(0, "pos", r, r, 0) for r in range(4)] + [(1, "pos", r, r, 3 if r < 2 else 2) for r in range(4)]
    positions = np.zeros((4, 2, 3), np.int16)
    positions[:, 0, 0] = 0  # channel 0 always on the back: consistent
    positions[:, 0, 1] = [3, 3, 2, 2]  # channel 1: eye twice, then nothing: 50 % < 80 %
    positions[:, 0, 2] = [0, 3, 0, 3]  # channel 2: back on images of class 0, eye on class 1
    index = _index(rows, v=np.ones((4, 3), np.float32), positions=positions, labels=np.array([0, 0, 1, 1]), d=3)
    out = cub_part_metrics(index, ds, W, NO_RESIZE, window_cells=1.0, top_classes=1)
    assert out.purity == pytest.approx((1.0 + 0.5) / 2)  # channel 0: back 4/4; channel 1: eye 2/4
    assert out.channels_scored == 2 and out.consistency_channels == 2
    assert out.consistency == pytest.approx(0.5)  # channel 0 yes, channel 1 no
    out2 = cub_part_metrics(index, ds, W, NO_RESIZE, window_cells=1.0, top_classes=2)
    assert out2.consistency_channels == 3


def test_explanation_metrics_of_a_run(tiny_run):
    result, _, cfg = tiny_run
    run = infodisent.open_run(cfg.out)
    from infodisent.eval.metrics import explanation_sizes
    from infodisent.eval.part_metrics import parts_purity, pointing_game
    from infodisent.explain.prototypes import mine_prototypes

    ds = run.dataset("test")
    index = mine_prototypes(run.model, ds, None, k=3, features=run.cache("test"), progress=False)
    m = explanation_metrics(run.model, index, ds)
    assert m.accuracy.top1 == pytest.approx(result.metrics.infodisent.top1, abs=1e-6)
    assert m.num_images == len(ds) and m.prototypes_per_channel == 3
    W, V = run.model.W.double().numpy(), np.asarray(index.v, np.float64)
    per = explanation_sizes(V, W)
    assert m.size.global_size == int((W.max(0) > 1e-3).sum())
    assert m.size.local_size == pytest.approx(per["local_size"].mean())
    assert m.size.channels_for_mass == pytest.approx(per["channels_for_mass"].mean())
    pur = parts_purity(index, ds, run.model.transform)
    assert m.parts.purity == pytest.approx(pur["purity"].mean())  # every channel is used by this dense head
    pg = pointing_game(index, ds, run.model.transform, W)
    assert m.parts.pointing_game == pytest.approx(pg["hit"].mean())
    assert m.parts.pointing_game_chance == pytest.approx(pg["chance"].mean())
    f = m.faithfulness.curves
    assert f["logit_drop_top"].iloc[-1] > f["logit_drop_random"].iloc[-1] and m.faithfulness.area_logit > 0
    again = type(m).from_dict(m.to_dict())  # the JSON form loads back
    assert again.to_dict() == m.to_dict() and again.size == m.size


def test_cub_metrics_on_real_birds(tmp_path):
    """Three real CUB classes through the offline backbone, with an untrained (identity U) head."""
    root = require(CUB50)
    from infodisent.core.weights import load_backbone
    from infodisent.data.datasets import build_dataset
    from infodisent.explain.prototypes import mine_prototypes

    bb = load_backbone()
    ds = build_dataset("cub", root, "test", max_classes=3)
    head = infodisent.InfoDisentHead(infodisent.HeadConfig(1280, 3))
    model = infodisent.InfoDisent(bb, head, ds.classes)
    index = mine_prototypes(model, ds, None, k=5, progress=False)
    out = cub_part_metrics(index, ds, model.W.numpy(), bb.transform, model=model, stability_images=12)
    assert out.window_px == pytest.approx(72.0) and len(out.part_groups) == 12
    assert out.channels_scored == 1280 and out.stability_images == 12
    for key in ("purity", "consistency", "stability"):
        assert 0.0 <= getattr(out, key) <= 1.0, key
    assert out.purity > 0.2  # a patch of a bird photo usually holds some keypoint


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
