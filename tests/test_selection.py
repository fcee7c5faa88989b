"""Choosing K by calibrated held-out loss, and the accuracy budget checked image by image."""

import math

import pytest
import torch
import torch.nn.functional as F

from infodisent.records.options import SparseOptions
from infodisent.train.selection import HeldOut, budget_check, calibrated_loss, choose_k, escalated, paired_loss
from infodisent.viz.sentences import budget


def test_calibrated_loss_finds_the_temperature_that_made_the_logits():
    torch.manual_seed(0)
    y = torch.randint(0, 4, (2000,))
    true = torch.randn(2000, 4) + 2.0 * F.one_hot(y, 4)
    labels = torch.distributions.Categorical(logits=true).sample()  # labels drawn from softmax(true)
    losses, t = calibrated_loss(true / 3.0, labels)  # the same beliefs, three times too unsure
    assert t == pytest.approx(1 / 3, rel=0.1) and losses.shape == (2000,)
    assert float(losses.mean()) == pytest.approx(float(F.cross_entropy(true, labels)), rel=0.02)
    assert float(losses.mean()) <= float(F.cross_entropy(true / 3.0, labels)) + 1e-6  # never worse than no scaling
    torch.testing.assert_close(losses, F.cross_entropy(true / 3.0 / t, labels, reduction="none"))


def test_paired_loss_counts_images_only_one_head_gets_right():
    dense = torch.tensor([1, 1, 1, 1, 0, 1, 1, 1, 1, 1], dtype=torch.bool)
    compact = torch.tensor([1, 0, 1, 0, 1, 1, 1, 1, 1, 1], dtype=torch.bool)
    lost, se = paired_loss(dense, compact)
    assert lost == pytest.approx(0.1)  # 2 lost, 1 gained, of 10
    d = torch.tensor([0, 1, 0, 1, -1, 0, 0, 0, 0, 0], dtype=torch.float64)
    assert se == pytest.approx(float(d.std() / math.sqrt(10)))
    assert paired_loss(dense, dense) == (0.0, 0.0)


def _scores(correct: list[int], losses: list[float]) -> HeldOut:
    c, l = torch.tensor(correct, dtype=torch.bool), torch.tensor(losses)
    return HeldOut(float(c.float().mean()), float(l.mean()), 1.0, c, l)


def test_k_is_the_smallest_candidate_within_one_standard_error_of_the_best_loss():
    torch.manual_seed(0)
    n = 200
    base = torch.rand(n) * 0.6  # per-image losses of the best candidate
    noise = torch.randn(n) * 0.1
    noise -= noise.mean()
    right = [1] * 180 + [0] * 20
    dense = _scores(right, (base - 0.05).tolist())
    tried = {8: _scores(right, base.tolist()),                  # the best
             5: _scores(right, (base + 0.003 + noise).tolist()),  # 0.003 worse: far inside one standard error
             3: _scores(right, (base + 0.05 + noise).tolist())}   # 0.05 worse: about 7 standard errors
    sel = choose_k(tried, dense, SparseOptions())
    assert sel.channels_per_class == 5 and sel.images == n and sel.loss_se == 1.0
    assert sel.loss_gap["8"] == 0 and sel.loss_gap["3"] > 5 * sel.loss_gap_se["3"]
    assert abs(sel.loss_gap["5"]) < sel.loss_gap_se["5"]
    assert sel.loss == {str(k): pytest.approx(tried[k].loss) for k in (3, 5, 8)}
    assert sel.lost == 0 and sel.within_tolerance and "within the 0.5-point budget" in budget(sel)
    # a band of 10 standard errors cannot tell K=3 from the best: the smallest is taken
    assert choose_k(tried, dense, SparseOptions(loss_se=10)).channels_per_class == 3
    # with no band at all, the best
    assert choose_k(tried, dense, SparseOptions(loss_se=0)).channels_per_class == 8


def test_a_measured_loss_beyond_the_budget_is_said_loudly():
    dense = _scores([1] * 540 + [0] * 60, [0.3] * 600)
    worse = _scores([1] * 510 + [0] * 90, [0.4] * 600)  # 30 images lost of 600: 5 points, well resolved
    sel = choose_k({8: worse}, dense, SparseOptions())
    assert not sel.within_tolerance and sel.lost == pytest.approx(0.05) and sel.noise < 0.05
    assert budget(sel).startswith("WARNING") and "OUTSIDE the 0.5-point budget" in budget(sel)
    # the same loss on 20 images cannot be told from noise: within budget, and the noise is stated
    few = choose_k({8: _scores([1] * 17 + [0] * 3, [0.4] * 20)}, _scores([1] * 18 + [0] * 2, [0.3] * 20),
                   SparseOptions())
    assert few.within_tolerance and few.noise > 0.05


def test_going_up_records_every_k_tried_and_the_fallback():
    dense = _scores([1] * 540 + [0] * 60, [0.3] * 600)
    worse = _scores([1] * 510 + [0] * 90, [0.4] * 600)  # 5 points lost: outside
    sel = choose_k({8: worse}, dense, SparseOptions())
    assert not sel.within_tolerance and sel.rule_k is None and sel.escalated == [] and not sel.fallback
    near = _scores([1] * 537 + [0] * 63, [0.31] * 600)  # half a point lost: within
    lost, noise, within = budget_check(dense, near, 0.005)
    assert lost == pytest.approx(0.005) and within and noise > 0
    up = escalated(sel, {16: worse, 32: near}, 32, lost, noise)
    assert (up.channels_per_class, up.rule_k, up.escalated, up.fallback, up.within_tolerance) == (32, 8, [16, 32], False, True)
    assert up.top1 == {"8": worse.top1, "16": worse.top1, "32": near.top1} and up.lost == lost
    assert "K=8 loses 5.0 points (the loss rule's choice), outside the 0.5-point budget" in budget(up)
    assert "going up (K=16, K=32), K=32 loses 0.5 points" in budget(up) and not budget(up).startswith("WARNING")
    down = escalated(sel, {16: worse, 32: worse}, None, 0.0, 0.0)
    assert down.fallback and down.channels_per_class is None and not down.within_tolerance and down.lost == sel.lost
    assert budget(down).startswith("WARNING: no compact head within the 0.5-point budget")
    assert "K=8 loses 5.0 points, K=16 loses 5.0 points, K=32 loses 5.0 points; the dense head is shown" in budget(down)
