"""The compact default end to end (infodisent.pipeline's prune-and-refit step): K chosen on held-out
images, escalation, the fallback to the dense head, and each said where the run is shown."""

import json
import warnings
from dataclasses import replace

import pandas as pd
import pytest
import torch
from helpers import tiny_config
from safetensors.torch import load_file

import infodisent
from infodisent.core.head import InfoDisentHead
from infodisent.pipeline import train_run
from infodisent.records.model import HeadConfig
from infodisent.records.options import FitConfig, SparseOptions
from infodisent.records.run import RunConfig
from infodisent.viz.sentences import budget, compactness_cost


def test_default_run_chooses_k_on_held_out_images(tmp_path):
    cfg = tiny_config(tmp_path, sparse=SparseOptions(finetune_epochs=1, round_epochs=1, candidates=(1, 2, 4), validation=0.25))
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


def test_sparse_run_end_to_end(tmp_path):
    cfg = tiny_config(tmp_path, fit=FitConfig(epochs=3, loss="sigmoid"),
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


def test_no_compact_head_within_budget_falls_back_to_the_dense_head_and_says_so_everywhere(tmp_path, monkeypatch, capsys):
    from infodisent.cli import _print_run
    from infodisent.train import selection
    from infodisent.viz.report import write_report

    # every compact head "shows" a 30-point loss with a 1-point standard error: measurably outside the budget
    monkeypatch.setattr(selection, "paired_loss", lambda dense, compact: (0.30, 0.01))
    sp = SparseOptions(finetune_epochs=2, round_epochs=1, candidates=(1, 2), validation=0.25)
    assert sp.escalation(96) == [4, 8, 32]  # twice the largest candidate, then the earlier rounds' K
    cfg = tiny_config(tmp_path, sparse=sp)
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
    html = write_report(infodisent.open_run(result.run_dir)).read_text()
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
    cfg = tiny_config(tmp_path, sparse=SparseOptions(finetune_epochs=2, round_epochs=1, candidates=(1, 2), validation=0.25))
    result = train_run(cfg)
    sel = result.metrics.sparse.selection
    assert sel.channels_per_class == 8 and sel.escalated == [4, 8] and sel.within_tolerance and not sel.fallback
    assert result.metrics.sparse.channels_per_class == 8 == result.model.channels_per_class
    assert "(the loss rule's choice)" in budget(sel) and "going up (K=4, K=8), K=8 loses nothing" in budget(sel)
    assert "within the 0.5-point budget" in budget(sel) and "WARNING" not in budget(sel)
    assert "cost of compactness: 8 channels per class" in compactness_cost(result.metrics.sparse, result.metrics.infodisent)


def test_without_escalation_a_compact_head_outside_its_budget_is_kept_and_said(tmp_path, monkeypatch, capsys):
    from infodisent.cli import _print_run
    from infodisent.train import selection
    from infodisent.viz.report import write_report

    monkeypatch.setattr(selection, "paired_loss", lambda dense, compact: (0.30, 0.01))
    cfg = tiny_config(tmp_path, sparse=SparseOptions(finetune_epochs=1, round_epochs=1, candidates=(1, 2), validation=0.25,
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
    html = write_report(infodisent.open_run(result.run_dir)).read_text()
    assert "class='warning'" in html and "OUTSIDE the 0.5-point budget" in html


def test_a_class_count_beyond_what_the_default_was_measured_on_is_said_before_training(tmp_path, monkeypatch):
    from infodisent.train import selection

    assert selection.scale_warning(selection.MEASURED_CLASSES) is None
    assert f"this dataset has {selection.MEASURED_CLASSES + 1}" in selection.scale_warning(selection.MEASURED_CLASSES + 1)
    monkeypatch.setattr(selection, "MEASURED_CLASSES", 2)  # the tiny data's classes are "beyond" it
    sp = SparseOptions(finetune_epochs=1, round_epochs=1, candidates=(1, 2), validation=0.25)
    with pytest.warns(selection.ScaleWarning, match="measured on up to 2 classes") as caught:
        train_run(tiny_config(tmp_path / "chosen", sparse=sp, cache_dir=str(tmp_path / "cache")))
    assert sum(issubclass(w.category, selection.ScaleWarning) for w in caught) == 1
    with warnings.catch_warnings():  # K given, or no pruning: nothing was promised by the data's choice
        warnings.simplefilter("error", selection.ScaleWarning)
        train_run(tiny_config(tmp_path / "given", sparse=SparseOptions(channels_per_class=2, finetune_epochs=1,
                                                                     round_epochs=1), cache_dir=str(tmp_path / "cache")))
