"""Find a shortcut and switch it off: the planted mark, the suspicious-channel ranking, switching channels off
in a head, an explanation and a new run (with its provenance)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import infodisent
from infodisent.core.head import switch_off
from infodisent.data.datasets import PartsDataset
from infodisent.errors import InputError
from infodisent.records.data import PartsConfig
from infodisent.run import RunExistsError, open_run
from infodisent.studies.shortcuts import before_after, class_reliance, edit, mark_channels, suspicious_channels


def test_the_planted_mark_follows_its_class_in_training_and_chance_in_test():
    cfg = PartsConfig(image_size=96, train_per_class=40, test_per_class=40, shortcut_class=2, shortcut_share=0.9,
                      shortcut_test_share=0.5)
    train, test = PartsDataset("train", config=cfg, max_classes=4), PartsDataset("test", config=cfg, max_classes=4)
    marked = np.array([train.has_mark(i) for i in range(len(train))])
    labels = np.asarray(train.labels)
    assert not marked[labels != 2].any()  # only the shortcut's class carries it in training
    assert 0.75 <= marked[labels == 2].mean() <= 1.0
    in_test = np.array([test.has_mark(i) for i in range(len(test))])
    assert 0.35 <= in_test.mean() <= 0.65 and all(in_test[np.asarray(test.labels) == c].any() for c in range(4))
    i = int(np.flatnonzero(marked)[0])
    img, masks = train.render(i)
    x0, y0, x1, y1 = train.mark_box(i)
    pixels = np.asarray(img)[y0:y1, x0:x1].reshape(-1, 3)
    assert (pixels == (255, 0, 255)).all(1).mean() > 0.5  # magenta, with a white cross
    assert not masks[:, y0:y1, x0:x1].any()  # on no part: the mark is background for every part mask
    assert train.mark_box(int(np.flatnonzero(~marked)[0])) is None
    clean = PartsDataset("test", config=replace(cfg, shortcut_test_share=0.0), max_classes=4)
    assert not any(clean.has_mark(i) for i in range(len(clean)))
    # a dataset without a shortcut keeps the description (and so the feature-cache key) it always had
    plain = PartsDataset("train", config=PartsConfig())
    assert plain.describe() == "71c2037eb99c2f9a"
    assert PartsDataset("train", config=replace(PartsConfig(), shortcut_class=0)).describe() != plain.describe()
    with pytest.raises(InputError, match="shortcut"):
        PartsConfig(shortcut_share=1.5)


def test_class_reliance_is_each_class_share_of_its_positive_evidence():
    W = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    V = np.array([[3.0, 1.0, 5.0], [1.0, -1.0, 5.0], [0.0, 1.0, 2.0]])
    labels = np.array([0, 0, 1])
    r = class_reliance(W, V, labels)
    # class 0: mean positive contributions (2, 0.5, 0) of 2.5; class 1: (0, 2, 2) of 4
    np.testing.assert_allclose(r, [[0.8, 0.2, 0.0], [0.0, 0.5, 0.5]])


def test_switching_channels_off_in_a_head_and_in_an_explanation(tiny_run):
    _, _, cfg = tiny_run
    run = infodisent.open_run(cfg.out)
    head = run.model.head
    off = [3, 17]
    edited = switch_off(head, off)
    assert edited.config.pruned and not head.config.pruned  # the original is left alone
    W, W2 = head.W.detach(), edited.W.detach()
    assert (W2[:, off] == 0).all() and torch.equal(W2[:, [d for d in range(W.shape[1]) if d not in off]],
                                                   W[:, [d for d in range(W.shape[1]) if d not in off]])
    x = torch.as_tensor(np.asarray(run.cache("test").features[:4], np.float32))
    with torch.no_grad():
        out = head.forward_details(x)
        expected = out.logits - out.v[:, off] @ W[:, off].T
        np.testing.assert_allclose(edited(x), expected, rtol=1e-5, atol=1e-5)
    e = run.explain(2)
    w = e.without(off)
    np.testing.assert_allclose(w.logits[0], e.logits[0] - e.W[:, off] @ e.v[0, off], rtol=1e-10)
    assert w.contributions[0, off].tolist() == [0.0, 0.0] and w.target == e.target
    with pytest.raises(InputError, match="outside"):
        switch_off(head, [head.config.num_features])
    with pytest.raises(InputError, match="at least one"):
        e.without([])


def test_an_edit_is_a_new_run_with_its_provenance(tiny_run, tmp_path):
    _, _, cfg = tiny_run
    run = open_run(cfg.out)
    off = [int(run.model.W.argmax(1)[0])]  # class 0's heaviest channel
    edited = edit(run, disable=off, out=tmp_path / "edited")
    written = json.loads((tmp_path / "edited" / "config.json").read_text())
    assert written["edit"] == {"source": str(run.path), "disabled": off, "finetune_epochs": 0}
    assert edited.config.edit.disabled == tuple(off)
    assert (edited.model.W[:, off] == 0).all()
    assert torch.equal(edited.model.U, run.model.U)
    preds = edited.predictions("test")
    assert edited.metrics.infodisent.top1 == pytest.approx(preds["correct"].mean())
    assert edited.metrics.sparse is None and edited.metrics.explanations is None
    tuned = edit(run, disable=off, out=tmp_path / "tuned", finetune_epochs=2)
    assert (tuned.model.W[:, off] == 0).all() and torch.allclose(tuned.model.U, run.model.U)  # U fixed
    assert not torch.equal(tuned.model.W, edited.model.W)  # the other weights moved
    assert tuned.config.edit.finetune_epochs == 2
    table = before_after(run, edited, {"test": run.dataset("test")})
    assert table.loc["test", "before"] == pytest.approx(run.metrics.infodisent.top1)
    assert table.loc["test", "change"] == pytest.approx(table.loc["test", "after"] - table.loc["test", "before"])
    with pytest.raises(RunExistsError):
        edit(run, disable=off, out=tmp_path / "edited")
    with pytest.raises(InputError, match="new run directory"):
        edit(run, disable=off, out=cfg.out)
    with pytest.raises(InputError, match="outside"):
        edit(run, disable=[10_000], out=tmp_path / "bad")


def test_suspicious_channels_need_parts_and_rank_by_background_times_reliance(tiny_run):
    _, _, cfg = tiny_run
    run = infodisent.open_run(cfg.out)
    table = suspicious_channels(run)
    assert list(table.columns) == ["channel", "background", "reliance", "class", "class_name", "score"]
    assert table["score"].is_monotonic_decreasing
    np.testing.assert_allclose(table["score"], table["background"] * table["reliance"])
    assert table["background"].between(0, 1).all() and table["reliance"].between(0, 1).all()
    W = run.model.W.numpy()
    assert set(table["channel"]) <= set(np.flatnonzero(W.max(0) > 1e-3).tolist())
    on_mark = mark_channels(run.index("train"), run.dataset("train"), run.model.transform, table["channel"][:3])
    assert (on_mark == 0).all()  # no shortcut was planted in this run's data
