"""Real photographs from ../shared/datasets (skipped, naming the path, when absent)."""

import json

import pytest
import torch

from infodisent.backbone import load_backbone
from infodisent.datasets import build_dataset
from infodisent.runs import RunConfig, train_run
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
    """infodisent train on real CUB (first 10 classes), offline backbone: InfoDisent >= 0.95 x probe."""
    root = require(CUB50)
    cfg = RunConfig(out=str(tmp_path / "cub"), dataset="cub", root=str(root), max_classes=10,
                    cache_dir=str(tmp_path / "cache"), progress=False, fit=FitConfig(epochs=15))
    m = train_run(cfg).metrics
    print(json.dumps(m["accuracy"]))
    assert m["num_test_images"] == 243
    assert m["accuracy"]["linear_probe"] > 0.7
    assert m["accuracy"]["infodisent"] >= 0.95 * m["accuracy"]["linear_probe"]
