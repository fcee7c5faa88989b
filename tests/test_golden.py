"""Golden arrays: a fixed head on fixed feature maps gives fixed ``v``, positions, logits and contributions.

The inputs (F, U, W, bias) and the outputs were written once to ``tests/golden/head.npz``;
a change of pooling, rotation or classifier arithmetic shows up here as a changed number.
Regenerate (only after a deliberate change) with ``INFODISENT_REGEN_GOLDEN=1 pytest tests/test_golden.py``.
"""

import os
from pathlib import Path

import numpy as np
import torch

from infodisent.core.head import InfoDisentHead
from infodisent.records.model import HeadConfig

GOLDEN = Path(__file__).parent / "golden" / "head.npz"


def _inputs() -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(1234)
    F_ = torch.randn(3, 6, 3, 4, generator=g)  # B=3, D=6, a 3x4 map
    U, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    W = torch.rand(4, 6, generator=g)
    W[W < 0.3] = 0.0  # some classes ignore some channels
    bias = torch.tensor([0.1, -0.2, 0.0, 0.3])
    return {"F": F_.numpy(), "U": U.float().numpy(), "W": W.numpy(), "bias": bias.numpy()}


def _head(inputs) -> InfoDisentHead:
    head = InfoDisentHead(HeadConfig(6, 4, bias=True))
    with torch.no_grad():
        head.rotation.linear.weight = torch.from_numpy(inputs["U"])  # through the orthogonal parametrization
        head.classifier.weight = torch.from_numpy(inputs["W"])
        head.classifier.bias.copy_(torch.from_numpy(inputs["bias"]))
    return head.eval()


def _outputs(head: InfoDisentHead, F_: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad(), head.frozen_parameters():
        out = head.forward_details(torch.from_numpy(F_))
        contrib = head.contributions(out.v)
    return {"v": out.v.numpy(), "pos_index": out.pool.pos_index.numpy(), "neg_index": out.pool.neg_index.numpy(),
            "logits": out.logits.numpy(), "contributions": contrib.numpy()}


def test_fixed_head_on_fixed_features_gives_fixed_numbers():
    if os.environ.get("INFODISENT_REGEN_GOLDEN") == "1":
        inputs = _inputs()
        GOLDEN.parent.mkdir(exist_ok=True)
        np.savez(GOLDEN, **inputs, **_outputs(_head(inputs), inputs["F"]))
    golden = dict(np.load(GOLDEN))
    head = _head(golden)
    np.testing.assert_allclose(head.U.detach().numpy(), golden["U"], atol=1e-5)
    got = _outputs(head, golden["F"])
    np.testing.assert_array_equal(got["pos_index"], golden["pos_index"])
    np.testing.assert_array_equal(got["neg_index"], golden["neg_index"])
    for key in ("v", "logits", "contributions"):
        np.testing.assert_allclose(got[key], golden[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_the_golden_numbers_follow_the_definition():
    """The stored outputs are what the method defines, computed here with numpy alone."""
    g = dict(np.load(GOLDEN))
    J = np.einsum("ed,bdhw->behw", g["U"].astype(np.float64), g["F"].astype(np.float64)).reshape(3, 6, -1)
    v = np.maximum(J.max(2), 0) - np.maximum(-J.min(2), 0)
    np.testing.assert_allclose(g["v"], v, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(g["pos_index"], J.argmax(2))
    np.testing.assert_array_equal(g["neg_index"], J.argmin(2))
    contrib = v[:, None, :] * g["W"][None]
    np.testing.assert_allclose(g["contributions"], contrib, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["logits"], contrib.sum(2) + g["bias"], rtol=1e-5, atol=1e-6)
    assert (g["W"] == 0).any() and (v < 0).any() and (v > 0).any()  # both signs and pruned weights are covered
