import gc
import json

import numpy as np
import pytest
import torch
from helpers import write_image
from safetensors.torch import save_file

from infodisent.core.backbone import Backbone
from infodisent.core.weights import load_backbone
from infodisent.data.datasets import ImageReadError, PartsDataset, build_dataset
from infodisent.data.datasets.base import SkippedImageWarning
from infodisent.data.extract import extract_features
from infodisent.data.features import FeatureCache, _entry, cache_key, find_cache
from infodisent.data.loader import stream_feature_maps
from infodisent.errors import CorruptFileError
from infodisent.io import read_json
from infodisent.records.data import PartsConfig

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


def kill_midway(backbone, ds, root, rows: int = 16):
    """Start an extraction under ``root`` and kill it once ``rows`` rows are flushed; the entry's folder."""

    def die(done):
        if done >= rows:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(backbone, ds, root, batch_size=8, progress=False, on_batch=die)
    gc.collect()  # drop the killed run's memory map before files are touched
    return next(p for p in root.iterdir() if p.is_dir())


def test_killed_extraction_resumes_and_matches_a_clean_one(tmp_path, tiny_backbone, counter):
    ds = PartsDataset("train", config=SMALL)
    entry = kill_midway(tiny_backbone, ds, tmp_path / "a")
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


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_damaged_partial_entry_restarts_and_matches_a_clean_one(tmp_path, tiny_backbone, counter, damage):
    ds = PartsDataset("train", config=SMALL)
    entry = kill_midway(tiny_backbone, ds, tmp_path / "a")
    features = entry / "features.npy"
    if damage == "truncated":  # cut inside the 16 finished rows
        row_bytes = int(np.prod(tiny_backbone.feature_shape())) * 2
        data = features.read_bytes()
        features.write_bytes(data[: len(data) - (len(ds) - 10) * row_bytes])
        problem = "features.npy has .* bytes, expected"
    else:  # same size, finished bytes changed
        m = np.load(features, mmap_mode="r+")
        m[3] += 1
        m.flush()
        del m
        problem = "finished rows of features.npy do not match their checksum"
    counter["images"] = 0
    with pytest.warns(UserWarning, match=problem) as record:
        resumed = extract_features(tiny_backbone, ds, tmp_path / "a", batch_size=8, progress=False)
    assert any(str(entry) in str(w.message) and "from scratch" in str(w.message) for w in record)
    assert counter["images"] == len(ds)  # restarted, not resumed
    clean = extract_features(tiny_backbone, ds, tmp_path / "b", batch_size=8, progress=False)
    np.testing.assert_array_equal(resumed.features[:], clean.features[:])
    assert resumed.valid.all()


def test_resume_checksum_covers_the_finished_rows(tmp_path, tiny_backbone, counter):
    ds = PartsDataset("train", config=SMALL)
    entry = kill_midway(tiny_backbone, ds, tmp_path / "a")
    m = np.load(entry / "features.npy", mmap_mode="r+")
    m[20] += 1  # an unfinished row: rewritten on resume, so no reason to restart
    m.flush()
    del m
    counter["images"] = 0
    resumed = extract_features(tiny_backbone, ds, tmp_path / "a", batch_size=8, progress=False)
    assert counter["images"] == len(ds) - 16
    clean = extract_features(tiny_backbone, ds, tmp_path / "b", batch_size=8, progress=False)
    np.testing.assert_array_equal(resumed.features[:], clean.features[:])


@pytest.mark.parametrize("name", ["features.npy", "manifest.json", "labels.npy"])
def test_damaged_complete_entry_is_refused_then_rebuilt(tmp_path, tiny_backbone, counter, name):
    ds = PartsDataset("train", config=SMALL)
    cache = extract_features(tiny_backbone, ds, tmp_path, batch_size=8, progress=False)
    entry, expected = cache.path, np.array(cache.features)
    del cache
    gc.collect()  # no memory map may outlive the truncation
    data = (entry / name).read_bytes()
    (entry / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=name) as e:
        FeatureCache.open(entry)
    assert e.value.path == entry / name and "damaged or incomplete" in str(e.value)
    with pytest.warns(UserWarning, match=name):
        assert find_cache(tiny_backbone, ds, tmp_path) is None
    counter["images"] = 0
    with pytest.warns(UserWarning, match=f"{entry}.*{name}"):
        again = extract_features(tiny_backbone, ds, tmp_path, batch_size=8, progress=False)
    assert again.extracted and counter["images"] == len(ds)
    np.testing.assert_array_equal(again.features[:], expected)
    assert find_cache(tiny_backbone, ds, tmp_path).path == entry


def test_entry_with_arrays_of_inconsistent_length_is_refused(tmp_path, tiny_backbone):
    cache = extract_features(tiny_backbone, PartsDataset("train", config=SMALL), tmp_path, progress=False)
    np.save(cache.path / "valid.npy", cache.valid[:-1])
    with pytest.raises(CorruptFileError, match="valid.npy"):
        FeatureCache.open(cache.path)


def test_read_json_names_a_cut_short_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"a": [1, 2, 3], "b": "x"}, indent=2)[:20])
    with pytest.raises(CorruptFileError) as e:
        read_json(path)
    assert str(path) in str(e.value) and e.value.path == path and "invalid JSON" in e.value.reason
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json")


def folder_with_a_bad_image(root):
    """A folder dataset, 2 classes x 3 images per split; ``train/b/1.png`` is not an image."""
    for split in ("train", "test"):
        for c in ("a", "b"):
            for k in range(3):
                write_image(root / split / c / f"{k}.png", k)
    bad = root / "train" / "b" / "1.png"
    bad.write_bytes(b"garbage")
    return build_dataset("folder", root, "train"), bad


def test_bad_images_are_skipped_and_listed_or_fatal_when_strict(tmp_path, tiny_backbone):
    ds, bad = folder_with_a_bad_image(tmp_path / "data")
    with pytest.warns(SkippedImageWarning, match=r"skipping unreadable image .*1\.png: not a recognised image format"):
        cache = extract_features(tiny_backbone, ds, tmp_path / "c", progress=False)
    assert len(cache) == 5 and not cache.valid[ds.paths.index(str(bad))]
    assert cache.bad_files[0]["path"] == str(bad)
    assert len(list(cache.batches(4))) == 2 and sum(len(y) for _, y in cache.batches(4)) == 5
    with pytest.raises(ImageReadError, match="1.png"):
        extract_features(tiny_backbone, ds, tmp_path / "strict", progress=False, strict=True)


def test_strict_with_loader_workers_raises_the_image_error(tmp_path, tiny_backbone):
    ds, bad = folder_with_a_bad_image(tmp_path / "data")
    with pytest.raises(ImageReadError, match="1.png") as e:
        extract_features(tiny_backbone, ds, tmp_path / "strict", progress=False, strict=True, num_workers=1)
    assert type(e.value) is ImageReadError and e.value.path == str(bad) and "DataLoader worker" not in str(e.value)


def test_stream_feature_maps_matches_the_cache_and_skips_bad_images(tmp_path, tiny_backbone):
    ds, bad = folder_with_a_bad_image(tmp_path / "data")
    skipped = []
    with pytest.warns(SkippedImageWarning, match="1.png"):
        batches = list(stream_feature_maps(tiny_backbone, ds, batch_size=4, skipped=skipped))
    assert skipped == [f"{bad}: not a recognised image format"]
    indices = np.concatenate([b.indices for b in batches])
    assert sorted(indices.tolist()) == sorted(set(range(len(ds))) - {ds.paths.index(str(bad))})
    with pytest.warns(SkippedImageWarning):
        cache = extract_features(tiny_backbone, ds, tmp_path / "c", progress=False)
    maps = torch.cat([b.maps for b in batches])
    torch.testing.assert_close(maps, torch.from_numpy(cache.features[indices].astype(np.float32)), atol=2e-2, rtol=1e-2)
    with pytest.raises(ImageReadError, match="1.png"):
        list(stream_feature_maps(tiny_backbone, ds, strict=True, num_workers=1))


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


def entry_folder(backbone, ds, root):
    return _entry(backbone, ds, root, 1, 0)[1]


def test_cache_key_follows_image_size_weights_and_transform(tmp_path):
    ds = PartsDataset("train", config=SMALL)
    base = load_backbone("test_resnet", "random", image_size=64)
    twin = load_backbone("test_resnet", "random", image_size=64)
    assert cache_key(twin, ds) == cache_key(base, ds)
    assert entry_folder(twin, ds, tmp_path) == entry_folder(base, ds, tmp_path)

    bigger = load_backbone("test_resnet", "random", image_size=96)
    weights = tmp_path / "w.safetensors"
    state = {k: v.clone().contiguous() for k, v in base.model.state_dict().items()}
    state["fc.bias"] += 0.01
    save_file(state, str(weights))
    from_file = load_backbone("test_resnet", weights, image_size=64)
    cropped = load_backbone("test_resnet", "random", image_size=64)
    cropped.data_config["crop_pct"] = 0.5
    resampled = load_backbone("test_resnet", "random", image_size=64)
    resampled.data_config["interpolation"] = "nearest" if base.data_config["interpolation"] != "nearest" else "bilinear"
    narrower = load_backbone("test_resnet", "random", image_size=64, model_kwargs={"channels": (8, 16, 24, 32)})
    folders = {entry_folder(bb, ds, tmp_path) for bb in (base, bigger, from_file, cropped, resampled, narrower)}
    assert len(folders) == 6  # each change alone gives its own entry (model_kwargs too)
    assert entry_folder(load_backbone("test_resnet", weights, image_size=64), ds, tmp_path) == entry_folder(from_file, ds, tmp_path)


def test_skip_warnings_point_at_the_callers_line(tmp_path, tiny_backbone):
    """The line a warning shows is the user's call, not the library's own source."""
    root = tmp_path / "data"
    for c in ("a", "b"):
        for k in range(2):
            write_image(root / "train" / c / f"{k}.png", k)
    (root / "train" / "b" / "1.png").write_bytes(b"garbage")
    ds = build_dataset("folder", root, "train")
    with pytest.warns(UserWarning, match="skipping unreadable image") as record:
        extract_features(tiny_backbone, ds, tmp_path / "c", progress=False)
    assert record[0].filename == __file__


def test_map_batches_are_what_streaming_the_backbone_gives(tmp_path, tiny_backbone):
    from infodisent.data.loader import stream_feature_maps

    ds = PartsDataset("train", config=SMALL)
    cache = extract_features(tiny_backbone, ds, tmp_path, views=2, seed=3, progress=False)
    cached = list(cache.map_batches(7))
    streamed = list(stream_feature_maps(tiny_backbone, ds, batch_size=7))
    assert [len(b.indices) for b in cached] == [len(b.indices) for b in streamed]
    np.testing.assert_array_equal(np.concatenate([b.indices for b in cached]), np.arange(len(ds)))  # view 0 only
    for c, s in zip(cached, streamed):
        np.testing.assert_array_equal(c.indices, s.indices)
        torch.testing.assert_close(c.maps, s.maps, atol=2e-2, rtol=1e-2)  # the cache holds fp16 maps
