import json

import numpy as np
import pytest
import torch

from infodisent.backbone import Backbone
from infodisent.datasets import ImageReadError, PartsConfig, PartsDataset, build_dataset
from infodisent.features import FeatureCache, extract_features

from conftest import write_image

SMALL = PartsConfig(image_size=64, train_per_class=2, test_per_class=1, scale=(0.3, 0.5))


@pytest.fixture
def counter(monkeypatch):
    """Counts the images that pass through any Backbone.forward."""
    seen = {"images": 0}
    original = Backbone.forward

    def counting(self, x):
        seen["images"] += len(x)
        return original(self, x)

    monkeypatch.setattr(Backbone, "forward", counting)
    return seen


def test_extract_then_reuse_without_backbone(tmp_path, tiny_backbone, counter):
    ds = PartsDataset("train", config=SMALL)
    bb = tiny_backbone
    c1 = extract_features(bb, ds, tmp_path, batch_size=8, progress=False)
    assert c1.extracted and counter["images"] == len(ds)
    assert c1.features.dtype == np.float16 and c1.features.shape == (len(ds), *tiny_backbone.feature_shape())
    ds.transform = tiny_backbone.transform
    x = torch.stack([ds[i][0] for i in (0, 5)])
    counter["images"] -= 2
    torch.testing.assert_close(torch.from_numpy(c1.features[[0, 5]].astype(np.float32)), tiny_backbone(x), atol=2e-2, rtol=1e-2)
    c2 = extract_features(bb, ds, tmp_path, batch_size=8, progress=False)
    assert not c2.extracted and counter["images"] == len(ds)  # nothing recomputed
    assert c2.path == c1.path
    # another split or transform gets another entry
    c3 = extract_features(bb, PartsDataset("test", config=SMALL), tmp_path, progress=False)
    assert c3.path != c1.path


def test_killed_extraction_resumes_and_matches_a_clean_one(tmp_path, tiny_backbone, counter):
    ds = PartsDataset("train", config=SMALL)

    def die(done):
        if done >= 16:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(tiny_backbone, ds, tmp_path / "a", batch_size=8, progress=False, on_batch=die)
    entry = next(p for p in (tmp_path / "a").iterdir() if p.is_dir())
    assert not (entry / "manifest.json").exists()
    assert json.loads((entry / "progress.json").read_text())["rows_done"] == 16
    with pytest.raises(FileNotFoundError):
        FeatureCache.open(entry)  # never read as complete
    counter["images"] = 0
    resumed = extract_features(tiny_backbone, ds, tmp_path / "a", batch_size=8, progress=False)
    assert counter["images"] == len(ds) - 16  # only the unfinished rows
    clean = extract_features(tiny_backbone, ds, tmp_path / "b", batch_size=8, progress=False)
    np.testing.assert_array_equal(resumed.features[:], clean.features[:])


def test_mismatched_partial_entry_is_rebuilt(tmp_path, tiny_backbone):
    ds = PartsDataset("train", config=SMALL)
    c = extract_features(tiny_backbone, ds, tmp_path, progress=False)
    (c.path / "manifest.json").unlink()
    (c.path / "meta.json").write_text('{"shape": [1]}')
    again = extract_features(tiny_backbone, ds, tmp_path, progress=False)
    assert again.extracted and again.features.shape[0] == len(ds)


def test_bad_images_are_skipped_and_listed_or_fatal_when_strict(tmp_path, tiny_backbone):
    root = tmp_path / "data"
    for split in ("train", "test"):
        for c in ("a", "b"):
            for k in range(3):
                write_image(root / split / c / f"{k}.png", k)
    bad = root / "train" / "b" / "1.png"
    bad.write_bytes(b"garbage")
    ds = build_dataset("folder", root, "train")
    with pytest.warns(UserWarning, match="1.png"):
        cache = extract_features(tiny_backbone, ds, tmp_path / "c", progress=False)
    assert len(cache) == 5 and not cache.valid[ds.paths.index(str(bad))]
    assert cache.bad_files[0]["path"] == str(bad)
    assert len(list(cache.batches(4))) == 2 and sum(len(y) for _, y in cache.batches(4)) == 5
    with pytest.raises(ImageReadError, match="1.png"):
        extract_features(tiny_backbone, ds, tmp_path / "strict", progress=False, strict=True)


def test_augmented_views(tmp_path, tiny_backbone):
    ds = PartsDataset("train", config=SMALL)
    c = extract_features(tiny_backbone, ds, tmp_path, views=3, seed=1, progress=False)
    n = len(ds)
    assert c.features.shape[0] == 3 * n
    assert (c.indices[:n] == np.arange(n)).all() and (c.labels[n:2 * n] == ds.labels).all()
    assert not np.array_equal(c.features[:n], c.features[n:2 * n])
    assert len(c.rows(view=0)) == n
    again = extract_features(tiny_backbone, ds, tmp_path / "again", views=3, seed=1, progress=False)
    np.testing.assert_array_equal(again.features[:], c.features[:])  # augmentations are seeded
