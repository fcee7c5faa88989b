"""The notebooks' library side: fabricated layouts, open_or_train, and the reproduction tables."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from helpers import write_image

import infodisent
from infodisent.core.weights import load_backbone
from infodisent.data.datasets import PartsDataset, build_dataset
from infodisent.pipeline import RunExistsError
from infodisent.records.data import PartsConfig
from infodisent.records.options import FitConfig
from infodisent.records.run import RunConfig
from infodisent.tutorials import reproduction
from infodisent.tutorials.fabricate import LAYOUTS, fabricate


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fabricated_layouts_read_back_with_the_real_loaders(layout, tmp_path):
    root = fabricate(layout, tmp_path / layout, classes=3, train_per_class=2, test_per_class=1, image_size=64)
    train, test = build_dataset(layout, root, "train"), build_dataset(layout, root, "test")
    assert (len(train), len(test), train.num_classes) == (6, 3, 3)
    assert sorted(set(train.labels.tolist())) == [0, 1, 2]
    assert train.load_image(0).size == (64, 64)
    if layout in ("cub", "stanford_cars", "stanford_dogs"):  # class order kept (folder and imagenet sort names)
        source = PartsDataset("train", None, 3, PartsConfig(image_size=64, train_per_class=2, test_per_class=1))
        assert train.labels.tolist() == source.labels.tolist()
        # the same pixels as the generator's image (JPEG-close)
        diff = np.abs(np.asarray(train.load_image(3), float) - np.asarray(source.load_image(3), float)).mean()
        assert diff < 6


def test_fabricated_cub_part_locations_are_the_part_masks_centres(tmp_path):
    config = PartsConfig(image_size=96, train_per_class=2, test_per_class=1)
    root = fabricate("cub", tmp_path, classes=2, train_per_class=2, test_per_class=1, image_size=96)
    ds = build_dataset("cub", root, "train")
    source = PartsDataset("train", None, 2, config)
    assert ds.part_names == source.part_names
    masks = source.masks(1)
    locs = ds.part_locs[ds.part_locs["index"] == 1].sort_values("part_id")
    for (_, loc), mask in zip(locs.iterrows(), masks):
        assert loc.visible == int(mask.any())
        if mask.any():
            ys, xs = np.nonzero(mask)
            assert abs(loc.x - xs.mean()) < 0.06 and abs(loc.y - ys.mean()) < 0.06
    box = ds.boxes.iloc[1]
    ys, xs = np.nonzero(masks.any(0))
    assert (box.x, box.y, box.x + box.width - 1, box.y + box.height - 1) == (xs.min(), ys.min(), xs.max(), ys.max())


def test_fabricate_keeps_a_complete_copy_and_rejects_bad_requests(tmp_path):
    root = fabricate("folder", tmp_path / "f", classes=2, train_per_class=1, test_per_class=1, image_size=48)
    first = sorted(p.stat().st_mtime_ns for p in root.rglob("*.jpg"))
    assert fabricate("folder", tmp_path / "f", classes=2, train_per_class=1, test_per_class=1, image_size=48) == root
    assert sorted(p.stat().st_mtime_ns for p in root.rglob("*.jpg")) == first  # not written again
    with pytest.raises(ValueError, match="unknown layout"):
        fabricate("voc", tmp_path / "v")
    with pytest.raises(ValueError, match="15 classes"):
        fabricate("cub", tmp_path / "c", classes=16)
    with pytest.raises(ValueError, match="at least 1 training"):
        fabricate("folder", tmp_path / "z", test_per_class=0)
    smaller = fabricate("folder", tmp_path / "f", classes=1, train_per_class=1, test_per_class=1, image_size=48)
    assert len(list(smaller.rglob("*.jpg"))) == 2  # other settings: the old copy's files are gone
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(FileExistsError, match="not written by fabricate"):
        fabricate("folder", tmp_path / "mine")


def _tiny(out, **kw) -> RunConfig:
    return RunConfig(out=str(out), backbone="test_resnet", weights="random", image_size=64, max_classes=3,
                     parts=PartsConfig(image_size=64, train_per_class=4, test_per_class=2), num_workers=0,
                     progress=False, fit=FitConfig(epochs=2), sparse=None, probe=False, **kw)


def test_open_or_train_opens_the_same_configuration_and_refuses_to_replace_another(tmp_path):
    cfg = _tiny(tmp_path / "run", cache_dir=str(tmp_path / "cache"))
    run = infodisent.open_or_train(cfg)
    head = run.files.head.read_bytes()
    mtime = run.files.head.stat().st_mtime_ns
    again = infodisent.open_or_train(cfg)
    assert again.files.head.stat().st_mtime_ns == mtime  # opened, not trained
    assert again.metrics.infodisent.top1 == run.metrics.infodisent.top1
    elsewhere = infodisent.open_or_train(replace(cfg, num_workers=1, cache_dir=str(tmp_path / "other")))
    assert elsewhere.files.head.stat().st_mtime_ns == mtime  # loader workers and cache folder: the same run
    longer = replace(cfg, fit=replace(cfg.fit, epochs=3))
    with pytest.raises(RunExistsError):
        infodisent.open_or_train(longer)
    retrained = infodisent.open_or_train(replace(longer, overwrite=True))
    assert len(retrained.history) == 3 and retrained.files.head.read_bytes() != head


def test_open_or_train_continues_an_interrupted_run(tmp_path):
    from infodisent import Monitor, TrainingStopped

    cfg = replace(_tiny(tmp_path / "run", cache_dir=str(tmp_path / "cache")), fit=FitConfig(epochs=3))
    monitor = Monitor(on_epoch=lambda row: monitor.request_stop() if row["epoch"] == 1 else None)
    with pytest.raises(TrainingStopped):
        infodisent.train_run(cfg, monitor)
    run = infodisent.open_or_train(replace(cfg, overwrite=True))  # resumes (overwrite replaces only other runs)
    whole = infodisent.train_run(replace(cfg, out=str(tmp_path / "whole")))
    assert run.history["epoch"].tolist() == [1, 2, 3]
    assert torch.equal(run.model.W, whole.model.W.to(run.model.W.device))


def test_black_box_accuracy_is_the_backbones_own_imagenet_classifier(tmp_path):
    for split in ("train", "val"):
        for k, wnid in enumerate(("n01440764", "n01443537")):  # tench, goldfish: ImageNet classes 0 and 1
            for j in range(3):
                write_image(tmp_path / split / wnid / f"{wnid}_{j}.JPEG", 10 * k + j, size=(48, 48))
    backbone = load_backbone("test_resnet", "random", image_size=64)
    test = build_dataset("imagenet", tmp_path, "test")
    acc = reproduction.black_box_accuracy(backbone, test)
    x = torch.stack([backbone.transform(test.load_image(i)) for i in range(len(test))])
    with torch.no_grad():
        logits = backbone.model(x)
    among = logits[:, test.imagenet_index]  # the two classes' logits: the task the head solves
    truth = torch.as_tensor(test.labels)
    assert acc.top1 == pytest.approx((among.argmax(1) == truth).float().mean().item())
    assert acc.top5 == 1.0  # two classes: both are in the top 5
    fake = build_dataset("imagenet", fabricate("imagenet", tmp_path / "fake", classes=2, train_per_class=1,
                                                  test_per_class=1, image_size=48), "test")
    assert reproduction.black_box_accuracy(backbone, fake) is None  # not ImageNet's classes


def test_comparison_tables():
    ours = pd.DataFrame([{"backbone": "resnet50.tv_in1k", "dataset": "imagenet", "infodisent": 70.0, "black_box": 76.0,
                          "linear_probe": 72.0},
                         {"backbone": "tf_efficientnet_lite0", "dataset": "imagenet", "infodisent": 60.0,
                          "black_box": 75.0, "linear_probe": 65.0}])
    t = reproduction.compare_imagenet(ours).set_index("backbone")
    assert list(t.index) == [*reproduction.IMAGENET["backbone"], "tf_efficientnet_lite0"]  # published order, then ours
    assert t.loc["resnet50.tv_in1k", "difference"] == pytest.approx(70.0 - 67.8)
    assert t.loc["tf_efficientnet_lite0", "kept (ours)"] == pytest.approx(0.8)
    assert np.isnan(t.loc["tf_efficientnet_lite0", "published InfoDisent"])
    assert t.loc["convnext_large.fb_in1k", "kept (published)"] == pytest.approx(round(82.8 / 84.4, 3))

    fine = pd.DataFrame([{"dataset": "cub", "backbone": "a", "classes": 200, "infodisent": 80.0},
                         {"dataset": "cub", "backbone": "b", "classes": 200, "infodisent": 85.0},
                         {"dataset": "stanford_cars", "backbone": "a", "classes": 50, "infodisent": 95.0},
                         {"dataset": "stanford_dogs", "backbone": "a", "classes": 120, "infodisent": 70.0}])
    f = reproduction.compare_fine_grained(fine).set_index("dataset")
    assert f.loc["cub", "backbone"] == "b" and f.loc["cub", "difference"] == pytest.approx(85.0 - 84.1)
    assert not f.loc["stanford_cars", "same_task"] and np.isnan(f.loc["stanford_cars", "difference"])  # 50 of 196
    assert np.isnan(f.loc["stanford_dogs", "published"])

    side = reproduction.compare_side(pd.DataFrame({"head": ["dense", "side K=5"], "top1": [80.0, 79.0],
                                                   "local_size": [1000.0, 5.0]}))
    assert side["top1 vs dense"].tolist() == [0.0, -1.0] and side["size_reduction"].tolist() == [0.0, 0.995]


def test_profiles_are_checked_and_full_needs_its_data():
    with pytest.raises(ValueError, match="smoke, cpu-real, full"):
        reproduction.imagenet_configs("quick")
    with pytest.raises(ValueError, match="root="):
        reproduction.imagenet_configs("full")
    with pytest.raises(ValueError, match="roots= for"):
        reproduction.fine_grained_configs("full", roots={"cub": "/data/cub"})
    full = reproduction.imagenet_configs("full", root="/data/imagenet", out="runs/x")
    assert list(full) == list(reproduction.IMAGENET["backbone"])
    assert all(c.sparse is None and not c.use_cache and c.weights == "timm" for c in full.values())
    # the very black boxes of the paper: timm tags of pretrained ImageNet-1k weights
    assert all(c.backbone in timm.list_pretrained() and c.backbone.endswith("in1k") for c in full.values())
    side = reproduction.side_configs("full", root="/data/imagenet", ks=(8, 5, 1))
    assert list(side) == ["dense", "side K=8", "side K=5", "softmax K=5", "side K=1"]
    assert side["side K=5"].fit.loss == "sigmoid" and side["side K=5"].sparse.channels_per_class == 5
