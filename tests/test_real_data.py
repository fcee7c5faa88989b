"""Real photographs from ../shared/datasets (skipped, naming the path, when absent)."""

import pytest
import torch
from helpers import CUB50, IMAGENETTE, require

import infodisent
from infodisent.core.weights import load_backbone
from infodisent.data.datasets import build_dataset
from infodisent.pipeline import evaluate_run, mine_run, train_run
from infodisent.records.options import FitConfig
from infodisent.records.run import RunConfig


def test_cub50_official_layout():
    root = require(CUB50)
    train, test = build_dataset("cub", root, "train"), build_dataset("cub", root, "test")
    assert (len(train), len(test), train.num_classes) == (1500, 1389, 50)
    assert train.classes[0] == "Black_footed_Albatross"
    assert len(train.boxes) == 1500 and train.part_names[:2] == ["back", "beak"]
    img = train.load_image(0)
    assert min(img.size) == 256
    box = train.boxes.iloc[0]
    assert 0 <= box.x < img.width and box.x + box.width <= img.width + 1


def test_offline_backbone_imagenet_top1_on_real_photos():
    """EfficientNet-Lite0 is published at ~75% ImageNet top-1; Imagenette val photos through our loader."""
    root = require(IMAGENETTE)
    bb = load_backbone()
    ds = build_dataset("imagenet", root, "test", transform=bb.transform)
    loader = torch.utils.data.DataLoader(ds, batch_size=50, num_workers=1)
    index = torch.tensor(ds.imagenet_index)
    correct = 0
    with torch.no_grad():
        for x, y, _ in loader:
            correct += int((bb.model(x).argmax(1) == index[y]).sum())
    top1 = correct / len(ds)
    print(f"offline EfficientNet-Lite0 ImageNet top-1 on {len(ds)} Imagenette val photos: {top1:.3f}")
    assert top1 > 0.68


@pytest.mark.slow
def test_cub_subset_end_to_end(tmp_path):
    """Real CUB (first 5 classes), offline backbone, the default compact head: train (10 epochs; InfoDisent >= 0.95 x
    probe, at most 5 points below its own dense head: 15 held-out images resolve no finer than 6.7 points),
    mine, explain, evaluate the explanations (sizes, faithfulness, part metrics), report."""
    root = require(CUB50)
    cfg = RunConfig(out=str(tmp_path / "cub"), dataset="cub", root=str(root), max_classes=5,
                    cache_dir=str(tmp_path / "cache"), progress=False, fit=FitConfig(epochs=10))
    m = train_run(cfg).metrics
    print(m.table())
    assert m.num_test_images == 132
    assert m.linear_probe.top1 > 0.7
    assert m.infodisent.top1 >= 0.95 * m.linear_probe.top1
    assert m.sparse.selection is not None and m.sparse.selection.images == 15
    assert m.sparse.channels_per_class in (3, 5, 8) and m.infodisent.top1 >= m.sparse.dense.top1 - 0.05

    run = infodisent.open_run(cfg.out)
    index = mine_run(run, "train", progress=False)
    assert index.meta.source == "cache" and index.meta.num_valid == 150 and index.k == 10
    e = run.explain([0, 60, 120])
    assert e.reconstruction_error < 1e-4 and e.J.shape == (3, 1280, 7, 7)
    r = run.renderer("train")
    for i in range(3):
        top = e[i].evidence(1)[0]
        patches = r.prototypes(top.channel, top.side, 5)
        assert len(patches) == 5 and patches[0].view.size == (224, 224)
        assert r.evidence(e, top.channel, i).view.size == (224, 224)

    ev = evaluate_run(run, progress=False, explanations=True).explanations
    print(ev.size, ev.cub_parts)
    assert ev.accuracy.top1 == pytest.approx(m.infodisent.top1, abs=1e-6)
    assert ev.size.global_size == int((run.model.W.numpy().max(0) > 1e-3).sum()) and 1 <= ev.size.channels_for_mass <= ev.size.local_size <= 1280
    faith = ev.faithfulness
    assert faith.area_logit > 0 and faith.area_accuracy > 0
    assert faith.curves["accuracy_top"].iloc[-1] < faith.curves["accuracy_random"].iloc[-1]
    k = m.sparse.channels_per_class
    assert ev.size.local_size <= k and ev.size.global_size <= 5 * k  # a compact head: K channels per class
    assert ev.cub_parts.channels_scored == ev.size.global_size and ev.cub_parts.stability_images > 0
    saved = infodisent.open_run(cfg.out).metrics.explanations
    assert saved.size == ev.size and saved.cub_parts.purity == ev.cub_parts.purity
