"""SIDE-style pruning (infodisent.train.sparse): which channels a class keeps, the schedule, a
shared budget, the refit."""

import json

import pytest
import torch

import infodisent
from infodisent.data.features import FeatureCache
from infodisent.data.sources import CachedSource
from infodisent.records.options import FitConfig, SparseOptions
from infodisent.train.sparse import class_importance, prune_head, shared_channels
from infodisent.train.training import lr_factor


def test_prune_keeps_the_k_most_important_channels(tiny_run):
    _, _, cfg = tiny_run
    model = infodisent.open_run(cfg.out).model
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


def test_shared_budget_limits_the_channels_all_classes_use(tiny_run):
    _, _, cfg = tiny_run
    model = infodisent.open_run(cfg.out).model
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


def test_refit_trains_the_dense_reference_again_and_fine_tunes_the_chosen_head_on_every_training_image(tiny_run):
    from infodisent.train.sparse import refit

    _, _, cfg = tiny_run
    model = infodisent.open_run(cfg.out).model
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
