"""Real photographs from ../shared/datasets (skipped, naming the path, when absent)."""

import json

import pytest
import torch

import infodisent
from infodisent.backbone import load_backbone
from infodisent.datasets import build_dataset
from infodisent.explain import explain
from infodisent.runs import RunConfig, evaluate_run, mine_run, run_dataset, train_run
from infodisent.training import FitConfig

from conftest import CUB50, IMAGENETTE, require


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
    """Real CUB (first 10 classes), offline backbone: train (InfoDisent >= 0.95 x probe), mine, explain,
    evaluate the explanations (sizes, faithfulness, part metrics), report."""
    root = require(CUB50)
    cfg = RunConfig(out=str(tmp_path / "cub"), dataset="cub", root=str(root), max_classes=10,
                    cache_dir=str(tmp_path / "cache"), progress=False, fit=FitConfig(epochs=15))
    m = train_run(cfg).metrics
    print(json.dumps(m["accuracy"]))
    assert m["num_test_images"] == 243
    assert m["accuracy"]["linear_probe"] > 0.7
    assert m["accuracy"]["infodisent"] >= 0.95 * m["accuracy"]["linear_probe"]

    index = mine_run(cfg.out, split="train", cache_dir=cfg.cache_dir, progress=False)
    assert index.meta["source"] == "cache" and index.meta["num_valid"] == 300 and index.k == 10
    model = infodisent.load(cfg.out)
    test = run_dataset(cfg.out, split="test")
    for i in (0, 100, 200):
        e = explain(model, test.load_image(i), index=index)
        assert e.reconstruction_error < 1e-4 and len(e.evidence[0].prototypes) == 5
        assert e.evidence[0].prototypes[0].view.size == (224, 224)

    ev = evaluate_run(cfg.out, cache_dir=cfg.cache_dir, progress=False, explanations=True)["explanations"]
    print(json.dumps({k: ev[k] for k in ("size", "cub_parts")}, default=str))
    assert ev["accuracy"]["top1"] == pytest.approx(m["accuracy"]["infodisent"], abs=1e-6)
    size = ev["size"]
    for key in ("global_size", "local_size", "channels_for_90pct", "above_0.2_of_max"):
        assert 1 <= size[key] <= 1280, key
    faith = ev["faithfulness"]
    assert faith["area_logit"] > 0 and faith["area_accuracy"] > 0
    assert faith["accuracy_top"][-1] < faith["accuracy_random"][-1]
    parts = ev["cub_parts"]
    for key in ("purity", "consistency", "stability"):
        assert 0 <= parts[key] <= 1, key
    saved = json.loads((tmp_path / "cub" / "metrics.json").read_text())["explanations"]
    assert saved["size"] == size and saved["cub_parts"]["purity"] == parts["purity"]
