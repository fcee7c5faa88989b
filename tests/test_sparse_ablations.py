"""SIDE-style sparse heads, the ablation flags and the grid command."""

import json
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import infodisent
from infodisent.cli import main
from infodisent.config import RunConfig
from infodisent.core.head import HeadConfig, InfoDisentHead
from infodisent.data.datasets import PartsConfig
from infodisent.data.features import FeatureCache
from infodisent.data.sources import CachedSource, holdout_split
from infodisent.eval.ablations import ablation_grid
from infodisent.pipeline import train_run
from infodisent.train.sparse import SparseOptions, class_importance, prune_head, shared_channels
from infodisent.train.training import FitConfig, loss_fn, lr_factor

SMALL = PartsConfig(image_size=64, train_per_class=4, test_per_class=2, scale=(0.3, 0.5))


def tiny_cfg(tmp_path, **kw):
    base = dict(
        out=str(tmp_path / "run"), backbone="test_resnet", weights="random", image_size=64, parts=SMALL,
        max_classes=5, cache_dir=str(tmp_path / "cache"), num_workers=0, progress=False, fit=FitConfig(epochs=3),
    )
    return RunConfig(**{**base, **kw})


def test_sigmoid_loss_is_one_vs_rest_bce():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    y = torch.tensor([0, 2])
    manual = -(F.logsigmoid(torch.tensor([2.0, 1.0, -0.5])).sum() + F.logsigmoid(torch.tensor([0.0, -3.0, -2.0])).sum()) / 2
    torch.testing.assert_close(loss_fn(logits, y, FitConfig(loss="sigmoid")), manual)
    torch.testing.assert_close(loss_fn(logits, y, FitConfig()), F.cross_entropy(logits, y))
    with pytest.raises(ValueError, match="loss='hinge'; choose one of softmax, sigmoid"):
        FitConfig(loss="hinge")  # refused where it is given, before any extraction


def test_prune_keeps_the_k_most_important_channels(tiny_run):
    _, _, cfg = tiny_run
    model = infodisent.load(cfg.out)
    cache = FeatureCache.open(next(p for p in __import__("pathlib").Path(cfg.cache_dir).iterdir()
                                   if p.is_dir() and (p / "manifest.json").is_file()
                                   and json.loads((p / "manifest.json").read_text())["key"]["split"] == "train"))
    src = CachedSource(cache, 16, view=0)
    imp = class_importance(model.head, src)
    x, y = cache.load(cache.rows(view=0))
    with torch.no_grad():
        v = model.head.forward_details(x).v.double()
    c = int(y[0])
    expect = model.W.double()[c] * v[y == c].mean(0)
    torch.testing.assert_close(imp[c], expect, rtol=1e-6, atol=1e-9)
    pruned = prune_head(model.head, src, 3)
    W = pruned.W.detach()
    assert ((W > 0).sum(1) <= 3).all() and (pruned.weight_mask.sum(1) == 3).all()
    for cls in range(W.shape[0]):
        assert set(torch.nonzero(pruned.weight_mask[cls]).flatten().tolist()) == set(imp[cls].topk(3).indices.tolist())
    torch.testing.assert_close(pruned.U, model.head.U)
    with torch.no_grad():
        logits = pruned(x)
        torch.testing.assert_close(logits, model.head.forward_details(x).v @ W.T, rtol=1e-5, atol=1e-5)
    again = prune_head(pruned, src, 2)  # a second round stays inside the first round's channels
    assert ((again.weight_mask <= pruned.weight_mask).all()) and (again.weight_mask.sum(1) == 2).all()
    with pytest.raises(ValueError, match="channels_per_class must be"):
        prune_head(model.head, src, 0)


def test_prune_schedule():
    assert SparseOptions(5).schedule(1280) == [320, 80, 20, 5]
    assert SparseOptions(5, ratio=1).schedule(1280) == [5]
    assert SparseOptions(10, ratio=2).schedule(50) == [40, 20, 10]
    # K chosen: rounds down to the largest candidate, then every smaller candidate in turn
    assert SparseOptions().schedule(1280) == [512, 128, 32, 8, 5, 3]
    assert SparseOptions(candidates=(5, 2, 3, 2)).candidates == (2, 3, 5)
    # 4x more per earlier round, while that is below all the channels
    assert SparseOptions(5, channels_total=12).budgets(1280, 15) == [768, 192, 48, 12]
    assert SparseOptions(channels_total=10, candidates=(2, 3)).budgets(1280, 15) == [None, 640, 160, 40, 10, 10]
    assert SparseOptions(5, channels_total=12).budgets(1280, 2) == [None] * 4  # 2 classes never use more than 12
    # no candidate within the budget: twice the largest, then the earlier rounds' K, all below the dense head
    assert SparseOptions().escalation(1280) == [16, 32, 128, 512]
    assert SparseOptions(ratio=1).escalation(1280) == [16] and SparseOptions().escalation(16) == []
    assert SparseOptions(channels_total=40).shared_budget(16, 1280, 15) == 80  # 40 for K=8: twice as many
    assert SparseOptions(channels_total=40).shared_budget(128, 1280, 15) == 640
    assert SparseOptions(channels_total=40).shared_budget(512, 1280, 15) is None  # 2560 > all 1280 channels: no limit
    with pytest.raises(ValueError, match="channels_per_class >= 1"):
        SparseOptions(0)
    with pytest.raises(ValueError, match="validation"):
        SparseOptions(validation=0.0)
    with pytest.raises(ValueError, match="channels_total"):
        SparseOptions(5, channels_total=4)


def test_holdout_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(4), [10, 20, 3, 1])
    fit_idx, val_idx = holdout_split(labels, 0.2, seed=3)
    assert np.intersect1d(fit_idx, val_idx).size == 0 and np.union1d(fit_idx, val_idx).tolist() == list(range(34))
    assert np.bincount(labels[val_idx], minlength=4).tolist() == [2, 4, 1, 0]  # >= 1 per class, never a whole class
    again = holdout_split(labels, 0.2, seed=3)
    assert np.array_equal(again[1], val_idx) and not np.array_equal(holdout_split(labels, 0.2, seed=4)[1], val_idx)
    with pytest.raises(ValueError, match="validation fraction"):
        holdout_split(labels, 1.0)


def test_sources_hold_out_images(tiny_run, tiny_backbone):
    from infodisent.data.datasets import PartsDataset
    from infodisent.data.sources import StreamingSource

    _, _, cfg = tiny_run
    run = infodisent.open_run(cfg.out)
    cache = run.cache("train")
    fit_idx, val_idx = holdout_split(cache.labels[cache.rows(view=0)], 0.25, seed=0)
    cached = CachedSource(cache, 8, view=0, images=val_idx)
    assert len(cached) == len(val_idx)
    labels = torch.cat([y for _, y in cached.batches(None)])
    assert labels.tolist() == cache.labels[cache.rows(view=0)][val_idx].tolist()
    ds = PartsDataset("train", config=SMALL)
    streamed = StreamingSource(tiny_backbone, ds, 4, images=fit_idx[fit_idx < len(ds)])
    assert len(streamed) == int((fit_idx < len(ds)).sum())
    assert sum(len(y) for _, y in streamed.batches(None)) == len(streamed)


def test_shared_budget_limits_the_channels_all_classes_use(tiny_run):
    _, _, cfg = tiny_run
    model = infodisent.load(cfg.out)
    run = infodisent.open_run(cfg.out)
    src = CachedSource(run.cache("train"), 16, view=0)
    imp = class_importance(model.head, src)
    pruned = prune_head(model.head, src, 2, channels_total=3)
    used = torch.nonzero(pruned.weight_mask.sum(0)).flatten()
    assert len(used) <= 3 and (pruned.weight_mask.sum(1) == 2).all()
    assert set(used.tolist()) <= set(shared_channels(imp, 3).tolist())
    norm = imp.clamp_min(0) / imp.clamp_min(0).sum(1, keepdim=True)
    assert set(shared_channels(imp, 3).tolist()) == set(norm.sum(0).topk(3).indices.tolist())
    with pytest.raises(ValueError, match="channels_total"):
        prune_head(model.head, src, 2, channels_total=1)


def test_default_run_chooses_k_on_held_out_images(tmp_path):
    cfg = tiny_cfg(tmp_path, sparse=SparseOptions(finetune_epochs=1, round_epochs=1, candidates=(1, 2, 4), validation=0.25))
    assert RunConfig(out="x").sparse == SparseOptions()  # compact by default
    result = train_run(cfg)
    sel = result.metrics.sparse.selection
    k = result.metrics.sparse.channels_per_class
    assert sel is not None and sel.channels_per_class == k and sel.images == 5  # one of 4 images per class, 5 classes
    assert sel.tolerance == 0.005 and sel.loss_se == 1.0
    tried = {int(a): b for a, b in sel.top1.items()}
    losses = {int(a): b for a, b in sel.loss.items()}
    # every candidate is tried; K is the smallest whose calibrated held-out loss is within one standard
    # error of the best one's
    assert set(tried) == set(losses) == {1, 2, 4}
    best = min(losses, key=lambda a: (losses[a], a))
    assert sel.loss_gap[str(best)] == 0
    assert k == min(a for a in losses if sel.loss_gap[str(a)] <= sel.loss_gap_se[str(a)] + 1e-12)
    # the budget: a loss counts when it exceeds the tolerance by more than 1.645 paired standard errors
    assert sel.lost == pytest.approx(sel.dense_top1 - tried[k], abs=1e-6)
    assert sel.within_tolerance == (sel.lost <= 0.005 + sel.noise + 1e-9)
    W = load_file(str(result.run_dir / "head.safetensors"))["W"]
    assert int((W > 0).sum(1).max()) <= k
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["channels_per_class"] == infodisent.open_run(result.run_dir).model.channels_per_class == k
    assert config["run"]["sparse"]["channels_per_class"] is None  # the choice, as asked for, is recorded too
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["sparse"]["selection"]["top1"] == {str(a): b for a, b in sorted(tried.items())}
    assert metrics["sparse"]["dense"]["top1"] == pytest.approx(result.metrics.sparse.dense.top1)
    hist = pd.read_csv(result.run_dir / "history.csv")
    # every head fine-tuned as a final one, largest K first: the frontier's 16 (scored, never chosen), then the
    # candidates
    scored = hist.dropna(subset=["validation_top1"])
    assert scored["channels_per_class"].tolist() == [16, 4, 2, 1]
    assert scored["validation_top1"].tolist()[1:] == pytest.approx([tried[a] for a in sorted(tried, reverse=True)])
    assert scored["validation_loss"].tolist()[1:] == pytest.approx([losses[a] for a in sorted(losses, reverse=True)])
    # the held-out images only chose: then both heads were fine-tuned on every training image
    refit, reference = hist[hist["phase"] == "refit"], hist[hist["phase"] == "dense reference"]
    assert len(refit) == 5 == result.metrics.sparse.refit_epochs and (refit["channels_per_class"] == k).all()
    assert len(reference) == 3 and reference["channels_per_class"].isna().all()  # the dense epochs, on every image
    pruned_last = int(hist[hist["phase"] == "prune"]["epoch"].max())
    assert reference["epoch"].tolist() + refit["epoch"].tolist() == list(range(pruned_last + 1, pruned_last + 9))
    assert result.metrics.infodisent.top1 == pytest.approx(refit["test_top1"].iloc[-1])
    assert result.metrics.sparse.dense_fit is not None and metrics["sparse"]["dense_fit"]["top1"] is not None
    assert list(result.metrics.table().index) == ["InfoDisent", "InfoDisent, dense (all training images)",
                                                  "InfoDisent, dense (held-out images left out)", "linear probe"]
    resumed = train_run(replace(cfg, resume=True))  # finished: the choice is read back, nothing retrained
    assert resumed.metrics.sparse == result.metrics.sparse


def test_refit_trains_the_dense_reference_again_and_fine_tunes_the_chosen_head_on_every_training_image(tiny_run):
    from infodisent.train.sparse import refit

    _, _, cfg = tiny_run
    model = infodisent.load(cfg.out)
    src = CachedSource(infodisent.open_run(cfg.out).cache("train"), 16, view=0)
    pruned = prune_head(model.head, src, 2)
    seen = []

    class Counting:  # every training image, counted as the refit reads them
        batch_size = src.batch_size  # what the schedule's steps per epoch are counted with

        def __len__(self):
            return len(src)

        def batches(self, epoch):
            for x, y in src.batches(epoch):
                seen.append(len(y))
                yield x, y

    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    fit_config = FitConfig(epochs=3)
    chosen, dense, hist, kept = refit(pruned, model.head, SparseOptions(refit_epochs=2), fit_config, Counting(),
                                      progress=False)
    assert list(kept) == [2] and kept[2] is chosen  # no other candidate: the chosen head alone is kept
    assert sum(seen) == (3 + 2) * len(src)  # the dense reference's 3 epochs, the chosen head's 2
    assert hist["phase"].tolist() == ["dense reference"] * 3 + ["refit"] * 2
    assert chosen.config.pruned and not dense.config.pruned
    torch.testing.assert_close(chosen.weight_mask, pruned.weight_mask)  # the channels chosen stay the channels
    assert all(torch.equal(v, pruned.state_dict()[k]) for k, v in before.items())  # a copy was fine-tuned
    assert not torch.equal(chosen.W, pruned.W)
    # the reference starts afresh from the run's seed: the same head every time, not the one passed in
    again, dense2, _, _ = refit(pruned, model.head, SparseOptions(refit_epochs=0), fit_config, Counting(), progress=False)
    assert torch.equal(dense.W, dense2.W) and not torch.equal(dense.W, model.head.W)
    assert torch.equal(again.W, pruned.W)  # no refit epochs: the chosen head as it was
    # the fallback: the chosen head is the dense one, and the reference trained on every image is shipped
    seen.clear()
    only, same, hist, _ = refit(model.head, model.head, SparseOptions(), fit_config, Counting(), progress=False)
    assert only is same and torch.equal(only.W, dense.W) and sum(seen) == 3 * len(src)
    assert hist["phase"].tolist() == ["dense reference"] * 3
    # without a dense reference, the dense head passed in stays the reference
    _, kept, _, _ = refit(pruned, model.head, SparseOptions(dense_reference=False), fit_config, Counting(),
                          progress=False)
    assert torch.equal(kept.W, model.head.W)
    # other candidates: each refit as the chosen one is, at the lowest fine-tuning rate, after it
    other = prune_head(model.head, src, 1)
    seen.clear()
    chosen, _, hist, kept = refit(pruned, model.head, SparseOptions(refit_epochs=2, dense_reference=False), fit_config,
                                  Counting(), candidates={1: other, 2: pruned}, lost={1: 0.8}, progress=False)
    assert sorted(kept) == [1, 2] and kept[2] is chosen and sum(seen) == 4 * len(src)
    assert hist["phase"].tolist() == ["refit"] * 2 + ["refit candidate"] * 2
    assert hist["channels_per_class"].tolist() == [2, 2, 1, 1] and hist["epoch"].tolist() == [1, 2, 3, 4]
    # each at the rate of its last fine-tune (cosine-decayed within the refit; lr is the rate after the epoch):
    # K=2's share unknown, the lowest rate; K=1 lost 80% of the dense evidence, 0.8 of the training rate
    steps = -(-len(src) // 16)  # per epoch
    lr_at = lambda epoch, base: base * lr_factor(epoch * steps - 1, 2 * steps, 0)  # noqa: E731 - the epoch's last step
    assert hist["lr"].tolist() == pytest.approx([lr_at(1, 0.1 * fit_config.lr), lr_at(2, 0.1 * fit_config.lr),
                                                 lr_at(1, 0.8 * fit_config.lr), lr_at(2, 0.8 * fit_config.lr)])
    torch.testing.assert_close(kept[1].weight_mask, other.weight_mask)


def test_sparse_run_end_to_end(tmp_path):
    cfg = tiny_cfg(tmp_path, fit=FitConfig(epochs=3, loss="sigmoid"),
                   sparse=SparseOptions(2, finetune_epochs=2, finetune_rotation=False, round_epochs=1),
                   head=HeadConfig(bias=True))
    result = train_run(cfg)
    m = result.metrics
    hist = pd.read_csv(result.run_dir / "history.csv")
    assert m.sparse.channels_per_class == 2
    assert m.sparse.dense.top1 == pytest.approx(hist["test_top1"][2])  # the dense head, after its last epoch
    assert m.infodisent.top1 == pytest.approx(hist["test_top1"].iloc[-1])  # the pruned, fine-tuned head
    # 4x fewer channels per round, from D=96, and the frontier's K = 16 beside them, pruned from the 32 round
    assert m.sparse.schedule == [32, 16, 8, 2]
    hist = pd.read_csv(result.run_dir / "history.csv")
    assert list(hist["phase"]) == ["train"] * 3 + ["prune"] * 6 and list(hist["epoch"]) == list(range(1, 10))
    assert list(hist["channels_per_class"][3:]) == [32, 16, 16, 8, 2, 2]
    # a given K keeps the dense head and the frontier's 16 beside it
    assert [p.key for p in m.frontier] == ["dense", "16", "2"] and m.point(2).shown
    W = load_file(str(result.run_dir / "head.safetensors"))["W"]
    assert ((W > 0).sum(1) <= 2).all()
    ckpt = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["phase"] == "pruned" and ckpt["head_config"]["pruned"]  # the checkpoint is the pruned head
    pruned = InfoDisentHead(HeadConfig(**ckpt["head_config"]))
    pruned.load_state_dict(ckpt["head"])
    model = infodisent.open_run(result.run_dir).model
    assert model.head.config.pruned and model.head.config.bias
    torch.testing.assert_close(model.W, W)
    torch.testing.assert_close(pruned.W.detach(), W)
    history = pd.read_csv(result.run_dir / "history.csv")
    resumed = train_run(replace(cfg, resume=True))  # a finished pruned run: nothing is trained again
    torch.testing.assert_close(resumed.model.W, W)
    assert resumed.metrics.sparse.dense == m.sparse.dense
    pd.testing.assert_frame_equal(pd.read_csv(result.run_dir / "history.csv"), history)
    from infodisent.train.checkpoints import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match="pruned with"):
        train_run(replace(cfg, resume=True, sparse=replace(cfg.sparse, channels_per_class=3)))
    with pytest.raises(CheckpointMismatchError, match="other head options"):
        train_run(replace(cfg, resume=True, head=HeadConfig(bias=True, pooling="avg")))


def test_ablation_flags_reach_the_head(tmp_path, capsys):
    out = tmp_path / "abl"
    args = ["train", "--backbone", "test_resnet", "--weights", "random", "--image-size", "64", "--max-classes", "3",
            "--epochs", "1", "--cache-dir", str(tmp_path / "cache"), "--num-workers", "0", "--quiet"]
    assert main([*args, "--out", str(out), "--no-rotation", "--pooling", "avg", "--unconstrained", "--dense"]) == 0
    head = json.loads((out / "config.json").read_text())["head"]
    assert not head["pruned"] and json.loads((out / "config.json").read_text())["channels_per_class"] is None
    assert (head["rotation"], head["pooling"], head["nonnegative"]) == (False, "avg", False)
    model = infodisent.load(out)
    torch.testing.assert_close(model.U, torch.eye(model.U.shape[0]))
    assert main([*args, "--out", str(tmp_path / "p"), "--prune-k", "0"]) == 2
    assert "channels_per_class >= 1" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "p"), "--prune-k", "2", "--dense"]) == 2
    assert "--dense and --prune-k exclude each other" in capsys.readouterr().err


def test_ablation_grid_writes_one_table(tmp_path):
    cfg = tiny_cfg(tmp_path, out=str(tmp_path / "grid"), max_classes=3, fit=FitConfig(epochs=2))
    table = ablation_grid(cfg, channels_per_class=2, stability=False, finetune_epochs=1)
    assert list(table["variant"]) == ["infodisent", "no_rotation", "avg_pooling", "unconstrained_w", "gumbel", "side_sparse",
                                      "sparse_softmax", "sparse_no_rotation", "compact"]
    assert table["channels_per_class"].isna().tolist() == [True] * 5 + [False] * 4  # dense rows are dense
    disk = pd.read_csv(tmp_path / "grid" / "ablations.csv")
    assert disk.shape == table.shape and disk["variant"].tolist() == table["variant"].tolist()
    row = table.set_index("variant")
    assert not row.loc["no_rotation", "rotation"] and row.loc["avg_pooling", "pooling"] == "avg"
    assert row.loc["side_sparse", "global_size"] <= 3 * 2 and row.loc["side_sparse", "loss"] == "sigmoid"
    assert row.loc["sparse_softmax", "global_size"] <= 3 * 2 and row.loc["sparse_softmax", "loss"] == "softmax"
    for col in ("top1", "parts.purity", "parts.pointing_game"):
        assert table[col].between(0, 1).all(), col
    assert (table["global_size"] >= 1).all() and (table["global_size"] <= 96).all()
    U = load_file(str(tmp_path / "grid" / "no_rotation" / "head.safetensors"))["U"]
    torch.testing.assert_close(U, torch.eye(96))
    assert np.isfinite(table["faithfulness_area_logit"]).all()
    again = ablation_grid(cfg, channels_per_class=2, names=["avg_pooling"], stability=False)  # one row rerun, the rest kept
    assert list(again["variant"]) == list(table["variant"])
    pd.testing.assert_frame_equal(again.drop(index=2), table.drop(index=2), check_dtype=False)
    hist = pd.read_csv(tmp_path / "grid" / "sparse_softmax" / "history.csv")
    W = load_file(str(tmp_path / "grid" / "sparse_softmax" / "head.safetensors"))["W"]
    before = pd.read_csv(tmp_path / "grid" / "ablations.csv")
    ablation_grid(cfg, channels_per_class=2, names=["sparse_softmax"], stability=False, finetune_epochs=1,
                           resume=True)  # finished: evaluated again, not trained again
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "grid" / "sparse_softmax" / "history.csv"), hist)
    torch.testing.assert_close(load_file(str(tmp_path / "grid" / "sparse_softmax" / "head.safetensors"))["W"], W)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "grid" / "ablations.csv"), before)  # the same numbers
    with pytest.raises(ValueError, match="unknown ablation"):
        ablation_grid(cfg, names=["nope"])


def test_no_compact_head_within_budget_falls_back_to_the_dense_head_and_says_so_everywhere(tmp_path, monkeypatch, capsys):
    from infodisent.cli import _print_run
    from infodisent.train import selection
    from infodisent.viz.report import write_report

    # every compact head "shows" a 30-point loss with a 1-point standard error: measurably outside the budget
    monkeypatch.setattr(selection, "paired_loss", lambda dense, compact: (0.30, 0.01))
    sp = SparseOptions(finetune_epochs=2, round_epochs=1, candidates=(1, 2), validation=0.25)
    assert sp.escalation(96) == [4, 8, 32]  # twice the largest candidate, then the earlier rounds' K
    cfg = tiny_cfg(tmp_path, sparse=sp)
    with pytest.warns(selection.BudgetWarning, match="no compact head within the 0.5-point budget"):
        result = train_run(cfg)
    sel = result.metrics.sparse.selection
    assert sel.fallback and not sel.within_tolerance and sel.channels_per_class is None and sel.rule_k in (1, 2)
    assert sel.escalated == [4, 8, 32] and set(sel.top1) == {"1", "2", "4", "8", "32"}
    assert result.metrics.sparse.channels_per_class is None
    # the shipped head is the dense head itself: every channel, and the dense head's test accuracy
    assert not result.model.head.config.pruned and result.model.channels_per_class is None
    assert result.metrics.infodisent.top1 == pytest.approx(result.metrics.sparse.dense.top1)
    hist = pd.read_csv(result.run_dir / "history.csv")
    prune = hist[hist["phase"] == "prune"]
    # each escalated K was fine-tuned as a final head (a round's head for the rest of its epochs) and scored
    # (and the frontier's 16, scored beside them)
    assert prune.groupby("channels_per_class").size().to_dict() == {1: 2, 2: 2, 4: 2, 8: 1 + 1, 16: 2, 32: 1 + 1}
    assert prune["validation_top1"].notna().sum() == 6
    # every one is kept, the dense head shown
    assert [(p.key, p.shown) for p in result.metrics.frontier] == [
        ("dense", True), ("32", False), ("16", False), ("8", False), ("4", False), ("2", False), ("1", False)]
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["sparse"]["selection"]["fallback"] is True and metrics["sparse"]["channels_per_class"] is None
    assert metrics["sparse"]["selection"]["escalated"] == [4, 8, 32]
    _print_run(result)
    out = capsys.readouterr().out
    assert "WARNING: no compact head within the 0.5-point budget" in out and "the dense head is shown" in out
    assert "K=32 loses" in out and "no compact head kept the accuracy budget" in out
    html = write_report(result.run_dir).read_text()
    assert "class='warning'" in html and "the dense head is shown" in html
    resumed = train_run(replace(cfg, resume=True))  # finished: the dense head is read back, nothing retrained
    assert resumed.metrics.sparse == result.metrics.sparse and not resumed.model.head.config.pruned
    assert infodisent.open_run(result.run_dir).model.channels_per_class is None


def test_escalation_keeps_the_first_larger_k_within_the_budget(tmp_path, monkeypatch):
    from infodisent.train import selection

    calls = []

    def paired_loss(dense, compact):  # the rule's choice and K=4 miss the budget, K=8 keeps it
        calls.append(len(calls))
        return (0.30, 0.01) if len(calls) <= 2 else (0.0, 0.01)

    monkeypatch.setattr(selection, "paired_loss", paired_loss)
    cfg = tiny_cfg(tmp_path, sparse=SparseOptions(finetune_epochs=2, round_epochs=1, candidates=(1, 2), validation=0.25))
    result = train_run(cfg)
    sel = result.metrics.sparse.selection
    assert sel.channels_per_class == 8 and sel.escalated == [4, 8] and sel.within_tolerance and not sel.fallback
    assert result.metrics.sparse.channels_per_class == 8 == result.model.channels_per_class
    assert "(the loss rule's choice)" in sel.budget() and "going up (K=4, K=8), K=8 loses nothing" in sel.budget()
    assert "within the 0.5-point budget" in sel.budget() and "WARNING" not in sel.budget()
    assert "cost of compactness: 8 channels per class" in result.metrics.sparse.cost(result.metrics.infodisent)


def test_without_escalation_a_compact_head_outside_its_budget_is_kept_and_said(tmp_path, monkeypatch, capsys):
    from infodisent.cli import _print_run
    from infodisent.train import selection
    from infodisent.viz.report import write_report

    monkeypatch.setattr(selection, "paired_loss", lambda dense, compact: (0.30, 0.01))
    cfg = tiny_cfg(tmp_path, sparse=SparseOptions(finetune_epochs=1, round_epochs=1, candidates=(1, 2), validation=0.25,
                                                  escalate=False))
    with pytest.warns(selection.BudgetWarning, match="OUTSIDE the 0.5-point budget"):
        result = train_run(cfg)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["sparse"]["selection"]["within_tolerance"] is False
    assert metrics["sparse"]["selection"]["lost"] == pytest.approx(0.30)
    assert metrics["sparse"]["selection"]["escalated"] == [] and result.model.head.config.pruned
    _print_run(result)
    out = capsys.readouterr().out
    assert "WARNING: K=" in out and "loses 30.0 points" in out and "OUTSIDE the 0.5-point budget" in out
    html = write_report(result.run_dir).read_text()
    assert "class='warning'" in html and "OUTSIDE the 0.5-point budget" in html


def test_a_class_count_beyond_what_the_default_was_measured_on_is_said_before_training(tmp_path, monkeypatch):
    from infodisent.train import selection

    assert selection.scale_warning(selection.MEASURED_CLASSES) is None
    assert f"this dataset has {selection.MEASURED_CLASSES + 1}" in selection.scale_warning(selection.MEASURED_CLASSES + 1)
    monkeypatch.setattr(selection, "MEASURED_CLASSES", 2)  # the tiny data's classes are "beyond" it
    sp = SparseOptions(finetune_epochs=1, round_epochs=1, candidates=(1, 2), validation=0.25)
    with pytest.warns(selection.ScaleWarning, match="measured on up to 2 classes") as caught:
        train_run(tiny_cfg(tmp_path / "chosen", sparse=sp, cache_dir=str(tmp_path / "cache")))
    assert sum(issubclass(w.category, selection.ScaleWarning) for w in caught) == 1
    with warnings.catch_warnings():  # K given, or no pruning: nothing was promised by the data's choice
        warnings.simplefilter("error", selection.ScaleWarning)
        train_run(tiny_cfg(tmp_path / "given", sparse=SparseOptions(channels_per_class=2, finetune_epochs=1,
                                                                     round_epochs=1), cache_dir=str(tmp_path / "cache")))


def test_cli_pruning_options_reach_the_run_config():
    from infodisent.cli import _data_config, _run_config, build_parser

    def cfg(*extra):
        a = build_parser().parse_args(["train", "--out", "x", *extra])
        return _run_config(a, _data_config(a)).sparse

    assert cfg() == SparseOptions()  # the command line's defaults are the library's
    assert cfg("--no-escalate").escalate is False
    assert cfg("--refit-epochs", "0").refit_epochs == 0
    assert cfg("--loss-se", "2", "--prune-candidates", "4", "2").loss_se == 2.0
    assert cfg("--dense") is None
