import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from infodisent.core.head import (
    InfoDisentHead,
    OrthogonalRotation,
    gumbel_two_sided,
    parametrizations_cached,
    softmax_two_sided,
    two_sided_max,
)
from infodisent.records.model import HeadConfig


def _train_a_bit(head, steps=5):
    opt = torch.optim.AdamW(head.parameters(), lr=5e-2, weight_decay=0.0)  # never decay U (householder keeps signs on its diagonal)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, head.config.num_features, 3, 3, generator=g)
    y = torch.randint(0, head.config.num_classes, (16,), generator=g)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(head(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return x


@pytest.mark.parametrize("omap", ["cayley", "householder", "matrix_exp"])
def test_rotation_starts_at_identity_and_stays_orthogonal(omap):
    head = InfoDisentHead(HeadConfig(24, 5, orthogonal_map=omap))
    torch.testing.assert_close(head.U, torch.eye(24))
    _train_a_bit(head)
    U = head.U.detach()
    assert (U - torch.eye(24)).abs().max() > 1e-3  # it moved
    torch.testing.assert_close(U.T @ U, torch.eye(24), atol=1e-4, rtol=0)


def test_w_stays_nonnegative_under_training():
    head = InfoDisentHead(HeadConfig(24, 5))
    _train_a_bit(head, 20)
    assert head.W.min() >= 0
    unconstrained = InfoDisentHead(HeadConfig(24, 5, nonnegative=False))
    _train_a_bit(unconstrained, 20)
    assert unconstrained.W.min() < 0


@pytest.mark.parametrize("config", [HeadConfig(24, 5), HeadConfig(24, 5, bias=True, pruned=True),
                                    HeadConfig(24, 5, rotation=False), HeadConfig(24, 5, nonnegative=False)])
def test_reset_parameters_draws_a_new_head_of_the_same_kind(config):
    """Model-randomisation tests (Quantus's MPRT) reset every module with reset_parameters: the head's must
    reach the weights its parametrizations hold, and what eval mode caches."""
    head = InfoDisentHead(config)
    x = _train_a_bit(head)
    if config.pruned:
        head.set_mask(torch.rand(5, 24) > 0.5)
    head.eval()
    with torch.no_grad():
        before, U0, W0 = head(x), head.U.clone(), head.W.clone()
    torch.manual_seed(1)
    head.reset_parameters()
    with torch.no_grad():
        after, U, W = head(x), head.U, head.W
    assert not torch.allclose(after, before)
    assert not torch.equal(W, W0) and W.shape == W0.shape
    if config.rotation:
        assert (U - U0).abs().max() > 0.1
        torch.testing.assert_close(U.T @ U, torch.eye(24), atol=1e-5, rtol=0)
    else:
        assert torch.equal(U, torch.eye(24))
    if config.nonnegative:
        assert (W >= 0).all()
    if config.pruned:
        assert torch.equal(W != 0, head.weight_mask.bool())  # the mask is kept
    if config.bias:
        assert torch.equal(head.bias, torch.zeros(5))
    torch.manual_seed(1)
    head.reset_parameters()
    assert torch.equal(head.W, W)  # drawn from torch's generator


def test_two_sided_max_by_hand():
    J = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]], [[-1.0, -4.0], [-0.5, -0.1]], [[0.2, 0.1], [0.3, 0.0]]]])
    res = two_sided_max(J)
    # channel 0: max ReLU = 3, max ReLU(-J) = 2 -> 1; channel 1: 0 - 4; channel 2: 0.3 - 0
    torch.testing.assert_close(res.values, torch.tensor([[1.0, -4.0, 0.3]]))
    assert res.pos_index.tolist() == [[3, 3, 2]]  # channel 1: argmax of J even though its ReLU is 0
    assert res.neg_index[0, :2].tolist() == [1, 1]
    torch.testing.assert_close(res.neg_values, torch.tensor([[2.0, 4.0, 0.0]]))


def test_contributions_sum_to_logits():
    head = InfoDisentHead(HeadConfig(32, 7, bias=True))
    x = _train_a_bit(head)
    head.eval()
    out = head.forward_details(x)
    contrib = head.contributions(out.v)  # (B, C, D)
    recon = contrib.sum(-1) + head.bias
    assert torch.allclose(recon, out.logits, rtol=1e-4, atol=1e-5)
    target = out.logits.argmax(1)
    torch.testing.assert_close(head.contributions(out.v, target).sum(-1) + head.bias[target], out.logits.gather(1, target[:, None])[:, 0], rtol=1e-4, atol=1e-5)


def test_rotation_is_per_position_channel_mixing():
    rot = OrthogonalRotation(8)
    with torch.no_grad():
        rot.linear.parametrizations.weight.original.normal_()
    F_ = torch.randn(2, 8, 3, 4)
    J = rot(F_)
    U = rot.matrix().detach()
    torch.testing.assert_close(J[1, :, 2, 3], U @ F_[1, :, 2, 3], rtol=1e-5, atol=1e-5)
    # norms per position are preserved (no information lost)
    torch.testing.assert_close(J.norm(dim=1), F_.norm(dim=1), rtol=1e-4, atol=1e-5)


def test_gumbel_only_in_training_and_exact_max_in_eval():
    head = InfoDisentHead(HeadConfig(6, 3, relaxation="gumbel", gumbel_tau=0.1))
    x = torch.randn(4, 6, 3, 3)
    head.eval()
    torch.testing.assert_close(head.forward_details(x).v, two_sided_max(x).values)
    torch.manual_seed(0)
    soft = gumbel_two_sided(x, tau=0.1)
    # every value is a real response of the map on each side, bounded by the exact sides
    ex = two_sided_max(x)
    assert (soft <= ex.pos_values + 1e-6).all() and (soft >= -ex.neg_values - 1e-6).all()
    x.requires_grad_(True)
    gumbel_two_sided(x, 0.5).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_softmax_relaxation_is_the_exact_max_forward_with_a_spread_gradient():
    x = torch.randn(4, 6, 3, 3)
    res = softmax_two_sided(x, tau=0.05)
    ex = two_sided_max(x)
    torch.testing.assert_close(res.values, ex.values)  # forward: the exact two-sided max
    assert torch.equal(res.pos_index, ex.pos_index) and torch.equal(res.neg_index, ex.neg_index)
    x.requires_grad_(True)
    softmax_two_sided(x, 0.05).values.sum().backward()
    g = x.grad.flatten(2)
    hi, lo = ex.pos_values > 0, ex.neg_values > 0
    # v = max + min where each side is present, and each side's gradient is a softmax summing to 1
    torch.testing.assert_close(g.sum(2), hi.float() + lo.float(), atol=1e-5, rtol=0)
    assert ((g > 0).sum(2) > 2).all()  # spread over several positions, not only the peaks
    # a tiny temperature gives the exact max's gradient: all of it on the peak positions
    y = x.detach().clone().requires_grad_(True)
    softmax_two_sided(y, 1e-4).values.sum().backward()
    z = x.detach().clone().requires_grad_(True)
    two_sided_max(z).values.sum().backward()
    torch.testing.assert_close(y.grad, z.grad, atol=1e-4, rtol=0)
    # the head's default: training and evaluation give the same values (only the gradient differs)
    head = InfoDisentHead(HeadConfig(6, 3))
    assert head.config.relaxation == "softmax"
    v_train = head.train().forward_details(x.detach()).v
    torch.testing.assert_close(v_train, head.eval().forward_details(x.detach()).v)


def test_average_pooling_ablation():
    head = InfoDisentHead(HeadConfig(6, 3, pooling="avg"))
    x = torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(head.forward_details(x).v, x.mean(dim=(2, 3)))


def test_u_is_computed_once_in_frozen_mode():
    head = InfoDisentHead(HeadConfig(16, 3))
    head.eval()
    calls = []
    handle = head.rotation.linear.parametrizations.weight.register_forward_hook(lambda *a: calls.append(1))
    with head.frozen_parameters():
        for _ in range(3):
            head(torch.randn(2, 16, 2, 2))
    handle.remove()
    assert len(calls) == 1


def test_inference_reuses_u_and_w_until_a_parameter_changes():
    torch.manual_seed(0)
    head = InfoDisentHead(HeadConfig(8, 3)).eval()
    with torch.no_grad():
        head.rotation.linear.parametrizations.weight.original.normal_(0, 0.1)
    x = torch.randn(2, 8, 3, 3)
    with torch.no_grad():
        first = head.forward_details(x)
        U1, _ = head.inference_weights()
        assert head.inference_weights()[0] is U1  # computed once
        torch.testing.assert_close(U1, head.U)
        head.rotation.linear.parametrizations.weight.original.add_(0.05)  # as an optimizer step would
        U2, _ = head.inference_weights()
        assert U2 is not U1 and not torch.allclose(U1, U2)
        torch.testing.assert_close(U2, head.U)
        head.classifier.parametrizations.weight.original.mul_(2.0)
        second = head.forward_details(x)
    torch.testing.assert_close(second.logits, F.linear(second.v, head.W))
    assert not torch.allclose(first.logits, second.logits)


@pytest.mark.parametrize("rotation,relaxation", [(True, "softmax"), (True, "none"), (False, "softmax")])
def test_pruned_forward_computes_only_kept_channels_with_the_same_logits_and_gradients(rotation, relaxation):
    cfg = HeadConfig(24, 5, pruned=True, bias=True, rotation=rotation, relaxation=relaxation)
    head = InfoDisentHead(cfg)
    x = _train_a_bit(head, 3)
    mask = torch.zeros(5, 24)
    mask[:, :3] = 1
    mask[2, 10] = 1  # channels 3..23 but 10 are kept by no class
    head.set_mask(mask)
    for train in (True, False):
        head.train(train)
        fast = head(x)
        full = head.forward_details(x).logits
        torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
        grads = []
        for logits in (fast, full):
            head.zero_grad()
            logits.pow(2).sum().backward(retain_graph=True)
            grads.append([p.grad.clone() for p in head.parameters() if p.grad is not None])
        assert len(grads[0]) == len(grads[1]) > 0
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    head.eval()
    with torch.no_grad():  # the cached inference weights
        torch.testing.assert_close(head(x), head.forward_details(x).logits, rtol=1e-5, atol=1e-5)


def test_rotation_rows_match_the_full_cayley_matrix_in_value_and_gradient():
    """A pruned head's few rows of U (a solve with K right-hand sides under the Cayley map, any base) equal
    the full matrix's rows in value and gradient; many rows, or U cached, are the full matrix's rows.
    What the solve saves is measured in benchmarks/bench_training.py."""
    torch.manual_seed(0)
    rot = OrthogonalRotation(32)
    par = rot.linear.parametrizations.weight
    with torch.no_grad():
        par.original.normal_(0, 0.2)  # a rotation far from the identity
        par[0].base.copy_(torch.linalg.qr(torch.randn(32, 32))[0])  # and a base that is not
    index = torch.tensor([3, 7, 8, 30])
    fast, full = rot.rows(index), rot.matrix()[index]
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast @ fast.T, torch.eye(4), rtol=0, atol=1e-6)  # orthonormal rows
    probe = torch.randn(4, 32)
    g_fast = torch.autograd.grad((fast * probe).sum(), par.original)[0]
    g_full = torch.autograd.grad((full * probe).sum(), par.original)[0]
    assert g_fast.abs().max() > 0.1
    torch.testing.assert_close(g_fast, g_full, rtol=0, atol=1e-5)
    many = torch.arange(20)  # more than half the rows: taken from the full matrix, the same values
    torch.testing.assert_close(rot.rows(many), rot.matrix()[many], rtol=0, atol=0)
    with parametrize.cached():  # U cached by torch: its rows are the cached tensor's, bit for bit
        assert torch.equal(rot.rows(index), rot.linear.weight[index])


def test_the_parametrization_cache_flag_that_the_cayley_shortcuts_read_still_exists():
    """torch keeps ``parametrize.cached()``'s state in a private flag; if a torch release renames or drops
    it, this fails here rather than the shortcuts silently forming their own U inside a cache."""
    assert parametrizations_cached() is False
    with parametrize.cached():
        assert parametrizations_cached() is True
    assert parametrizations_cached() is False


def test_rotation_matrix_under_an_identity_base_has_torchs_bits_and_follows_any_other_base():
    torch.manual_seed(1)
    rot = OrthogonalRotation(16)
    par = rot.linear.parametrizations.weight
    with torch.no_grad():
        par.original.normal_(0, 0.3)
    probe = torch.randn(16, 16)
    mine, torchs = rot.matrix(), rot.linear.weight  # base I: the product with it is skipped, exactly
    assert torch.equal(mine, torchs) and not torch.equal(mine, torch.eye(16))
    g_mine = torch.autograd.grad((mine * probe).sum(), par.original)[0]
    g_torch = torch.autograd.grad((torchs * probe).sum(), par.original)[0]
    assert torch.equal(g_mine, g_torch) and g_mine.abs().max() > 0.1
    with torch.no_grad():
        par[0].base.copy_(torch.linalg.qr(torch.randn(16, 16))[0])  # a base that is not I: torch's map
    torch.testing.assert_close(rot.matrix(), rot.linear.weight, rtol=0, atol=0)
    assert not torch.equal(rot.matrix(), mine)
