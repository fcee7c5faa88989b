"""Prototype mining: the streaming top-k against brute force, the saved index, the CLI."""

import json

import numpy as np
import pytest
import torch
from helpers import write_image

import infodisent
from infodisent.cli import main
from infodisent.data.datasets import ImageFolderDataset
from infodisent.explain.prototypes import PrototypeIndex, StaleIndexError, mine_prototypes
from infodisent.run import save_head


def _brute_force(model, cache):
    rows = cache.rows(view=0)
    x, _ = cache.load(rows)
    with torch.no_grad(), model.head.frozen_parameters():
        J = model.head.rotation(x).flatten(2)
        v = model.head.forward_details(x).v
    return J, v, cache.indices[rows]


def test_streaming_top_k_equals_brute_force(tiny_run):
    result, index, cfg = tiny_run
    run = infodisent.open_run(cfg.out)
    model, cache = run.model, run.cache("train")
    J, v, images = _brute_force(model, cache)
    np.testing.assert_allclose(index.v[images], v.numpy(), atol=1e-5)
    for side, values in (("pos", J.amax(2).clamp_min(0)), ("neg", (-J).amax(2).clamp_min(0))):
        top = values.topk(index.k, dim=0)
        for d in (0, 17, 95):
            got = index.prototypes(d, side)
            expect_vals = top.values[:, d].numpy()
            expect_imgs = images[top.indices[:, d].numpy()]
            keep = expect_vals > 0
            np.testing.assert_allclose(got["value"], expect_vals[keep], rtol=1e-5)
            assert list(got["image"]) == list(expect_imgs[keep])
            assert list(got["rank"]) == list(range(keep.sum()))
            flat = J[top.indices[0, d], d]
            expect_pos = int(flat.argmax() if side == "pos" else flat.argmin())
            if keep[0]:
                assert got["position"][0] == expect_pos
                assert (got["row"][0], got["col"][0]) == divmod(expect_pos, index.grid[1])
    assert (index.positions[images, 0] == J.argmax(2).numpy()).all()
    assert (index.positions[images, 1] == J.argmin(2).numpy()).all()


def test_batch_size_does_not_change_the_index(tiny_run):
    _, index, cfg = tiny_run
    run = infodisent.open_run(cfg.out)
    small = mine_prototypes(run.model, run.dataset("train"), None, k=4, features=run.cache("train"), batch_size=3,
                            progress=False)
    assert small.path is None and small.meta.source == "cache"
    assert small.table[["channel", "side", "rank", "image", "position"]].equals(
        index.table[["channel", "side", "rank", "image", "position"]])
    np.testing.assert_array_equal(small.v, index.v)


def test_index_on_disk_loads_without_pixels(tiny_run):
    _, index, cfg = tiny_run
    path = index.path
    assert sorted(p.name for p in path.iterdir()) == ["index.csv", "labels.npy", "meta.json", "positions.npy", "v.npy"]
    loaded = infodisent.open_run(cfg.out).index("train")
    assert isinstance(loaded.v, np.memmap) and loaded.v.shape == (36, 96)
    assert loaded.grid == (2, 2) and loaded.k == 4 and loaded.meta.num_valid == 36
    with pytest.raises(AttributeError):
        loaded.meta = None  # frozen data
    assert set(loaded.table.columns) == {"channel", "side", "rank", "image", "label", "position", "row", "col", "value"}
    assert (loaded.table["value"] > 0).all() and set(loaded.table["side"]) == {"pos", "neg"}
    assert loaded.table.groupby(["channel", "side"]).size().max() == 4


def test_backbone_source_matches_the_cache(tiny_run):
    _, index, cfg = tiny_run
    run = infodisent.open_run(cfg.out)
    fresh = mine_prototypes(run.model, run.dataset("train"), None, k=4, batch_size=16, progress=False)
    assert fresh.meta.source == "backbone"
    np.testing.assert_allclose(fresh.v, index.v, atol=2e-2)  # the cache holds fp16 maps


def test_retrained_head_makes_the_index_stale(tiny_run, tmp_path):
    import shutil

    _, _, cfg = tiny_run
    run = tmp_path / "copy"
    shutil.copytree(cfg.out, run)
    model = infodisent.open_run(run).model
    with torch.no_grad():
        model.head.classifier.parametrizations.weight.original.mul_(0.5)
    save_head(model.head, run / "head.safetensors")
    with pytest.raises(StaleIndexError, match="infodisent mine"):
        infodisent.open_run(run).index("train")
    assert PrototypeIndex.load(run / "prototypes" / "train").k == 4  # without a head to compare, it loads

    opened = infodisent.open_run(run)
    opened.model  # loaded now; then the head on disk changes under it
    with torch.no_grad():
        model.head.classifier.parametrizations.weight.original.mul_(0.5)
    save_head(model.head, run / "head.safetensors")
    infodisent.mine_run(opened, "train", k=2, num_workers=0, progress=False)  # mined with the loaded head
    with pytest.raises(StaleIndexError):
        infodisent.open_run(run).index("train")  # so it is not the index of the head on disk


def test_unreadable_images_are_skipped_and_reported(tiny_backbone, tmp_path):
    root = tmp_path / "folder"
    for i in range(3):
        write_image(root / "train" / "a" / f"{i}.png", i)
        write_image(root / "train" / "b" / f"{i}.png", 10 + i)
    (root / "train" / "b" / "broken.png").write_bytes(b"not a png")
    ds = ImageFolderDataset(root, "train")
    head = infodisent.InfoDisentHead(infodisent.HeadConfig(96, 2))
    model = infodisent.InfoDisent(tiny_backbone, head, ds.classes)
    with pytest.warns(UserWarning, match="broken.png"):
        index = mine_prototypes(model, ds, tmp_path / "run" / "prototypes" / "train", k=2, progress=False)
    bad = ds.paths.index(str(root / "train" / "b" / "broken.png"))
    assert np.isnan(index.v[bad]).all() and index.meta.num_valid == 6
    assert any("broken.png" in s for s in index.meta.skipped_images)
    assert bad not in set(index.table["image"])


def test_mine_cli(tiny_run, tmp_path, capsys):
    _, _, cfg = tiny_run
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(cfg.out, run)
    assert main(["mine", str(run), "--split", "test", "--k", "3", "--quiet", "--num-workers", "0"]) == 0
    assert "prototype index" in capsys.readouterr().out
    meta = json.loads((run / "prototypes" / "test" / "meta.json").read_text())
    assert meta["k"] == 3 and meta["dataset"]["split"] == "test" and meta["num_images"] == 18
    assert meta["source"] == "cache"  # the run's own cache root, from its config
    assert main(["mine", str(tmp_path / "missing"), "--quiet"]) == 2
    assert f"{tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    assert main(["mine", str(tmp_path), "--quiet"]) == 2
    assert "not an InfoDisent run directory (missing config.json, head.safetensors)" in capsys.readouterr().err
    assert main(["mine", str(run), "--k", "0", "--quiet"]) == 2
    assert "k (prototypes per channel" in capsys.readouterr().err


def test_predictions_from_the_index_match_the_head(tiny_run):
    _, _, cfg = tiny_run
    run = infodisent.open_run(cfg.out)
    preds = run.predictions("train")  # from the mined index: no image, no backbone
    cache = run.cache("train")
    rows = cache.rows(view=0)
    x, y = cache.load(rows)
    with torch.no_grad():
        logits = run.model.head.eval()(x)
    assert list(preds["image"]) == list(cache.indices[np.sort(rows)])
    np.testing.assert_array_equal(preds["predicted"], logits.argmax(1).numpy())
    np.testing.assert_array_equal(preds["label"], y.numpy())
