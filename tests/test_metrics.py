"""Explanation metrics on hand-made arrays whose answers are known."""

import numpy as np
import pytest

from infodisent.eval.metrics import accuracy, explanation_sizes, faithfulness, global_size, size_summary


def test_accuracy_top1_top5():
    logits = np.array([[3, 2, 1, 0, -1, -2], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0.0]])
    labels = np.array([0, 0, 5])
    acc = accuracy(logits, labels)
    assert (acc.top1, acc.top5) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert accuracy(logits, np.array([1, 1, 4])).top5 == pytest.approx(1.0)


def test_global_size_counts_channels_some_class_uses():
    W = np.array([[0.0, 0.5, 0.0, 0.0005], [0.0, 0.0009, 0.2, 0.0]])
    assert global_size(W) == 2
    assert global_size(W, threshold=1e-4) == 3


def test_sizes_per_image():
    # one class dominates; contributions to it: [4, 3, 2, 1, 0, -1]
    W = np.array([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    V = np.array([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]])
    per = explanation_sizes(V, W)
    assert per["predicted"][0] == 0
    assert per["local_size"][0] == 5  # v=0 has no say
    assert per["channels_for_mass"][0] == 3  # 4+3+2 = 9 >= 0.9 * 10
    assert per["above_relative"][0] == 4  # >= 0.2 * 4 = 0.8: 4, 3, 2, 1
    assert per["top_share"][0] == pytest.approx(1.0)  # 4 channels carry everything
    per = explanation_sizes(V, W, mass=0.95, relative=0.6, top=2)
    assert per["channels_for_mass"][0] == 4 and per["above_relative"][0] == 2
    assert per["top_share"][0] == pytest.approx(0.7)
    s = size_summary(np.vstack([V, V]), W)
    assert s.global_size == 6 and s.channels_for_mass == 3 and s.num_channels == 6 and s.mass == 0.9


def test_faithfulness_top_channels_hurt_more_than_random():
    rng = np.random.default_rng(0)
    n, d, c = 200, 64, 4
    labels = rng.integers(0, c, n)
    W = np.zeros((c, d))
    for k in range(c):
        W[k, k * 4 : k * 4 + 4] = 1.0  # each class reads 4 channels
    W += 0.01
    V = rng.normal(0, 0.1, (n, d))
    V[np.arange(n)[:, None], labels[:, None] * 4 + np.arange(4)] += 2.0
    f = faithfulness(V, W, None, labels, ks=(0, 1, 2, 4, 8), repeats=3)
    cur = f.curves
    assert list(cur["k"]) == [0, 1, 2, 4, 8]
    assert cur["logit_drop_top"][0] == 0 and cur["accuracy_top"][0] == 1.0
    # removing the top-1 channel drops the logit by exactly the largest contribution
    contrib = (W[labels] * V)
    assert cur["logit_drop_top"][1] == pytest.approx(contrib.max(1).mean(), rel=1e-9)
    assert (cur["logit_drop_top"] >= cur["logit_drop_random"] - 1e-12).all()
    assert cur["accuracy_top"][3] < 0.6 < cur["accuracy_random"][3]
    assert f.area_logit > 1.0 and f.area_accuracy > 0.3
    d_ = f.to_dict()
    assert set(d_) >= {"area_logit", "area_accuracy", "k", "logit_drop_top", "accuracy_random"}


def test_faithfulness_is_zero_when_nothing_distinguishes_channels():
    V = np.ones((10, 8))
    W = np.ones((2, 8))
    W[1] *= 0.5
    f = faithfulness(V, W, None, np.zeros(10, int), ks=(0, 2, 4), repeats=2)
    assert f.area_logit == pytest.approx(0.0, abs=1e-12) and f.area_accuracy == pytest.approx(0.0)
