"""The InfoDisent head: orthogonal rotation, two-sided max pooling, non-negative linear layer.

``J = U F`` per position (U orthogonal, identity at start, kept orthogonal by
``torch.nn.utils.parametrizations.orthogonal``), ``v_d = max ReLU(J_d) - max
ReLU(-J_d)`` over positions, ``logits = W v (+ b)`` with ``W >= 0``. The logit
of class ``c`` is exactly ``sum_d W[c, d] v_d (+ b_c)``: per-channel contributions.

Example:
    >>> head = InfoDisentHead(HeadConfig(num_features=1280, num_classes=200))
    >>> out = head.forward_details(feature_maps)       # (B, 1280, 7, 7)
    >>> out.logits, out.v, out.J
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal

from ..errors import InputError
from ..records.model import HeadConfig, OrthogonalMap


@dataclass(frozen=True)
class PoolResult:
    """Two-sided max pooling: pooled values and where each side was found (flat ``h*W+w``).

    For an average-pooling head (an ablation) ``values`` are still the two-sided max: the
    head's ``v`` is the average, and the positions say where each side of a channel peaks."""

    values: torch.Tensor  # (B, D)
    pos_index: torch.Tensor  # (B, D) position of max ReLU(J)
    neg_index: torch.Tensor  # (B, D) position of max ReLU(-J)
    pos_values: torch.Tensor  # (B, D) max ReLU(J) >= 0
    neg_values: torch.Tensor  # (B, D) max ReLU(-J) >= 0


@dataclass(frozen=True)
class HeadOutput:
    """Everything the head computes for a batch."""

    logits: torch.Tensor  # (B, C)
    v: torch.Tensor  # (B, D) pooled channel values
    J: torch.Tensor  # (B, D, H, W) rotated channel maps
    pool: PoolResult | None  # where each channel's two sides peak; None only in Gumbel training


def two_sided_max(J: torch.Tensor) -> PoolResult:
    """``v_d = max_{r,s} ReLU(J_d) - max_{r,s} ReLU(-J_d)`` with the argmax of each side.

    Args:
        J: rotated channel maps ``(B, D, H, W)``."""
    flat = J.flatten(2)
    hi, hi_idx = flat.max(dim=2)
    lo, lo_idx = flat.min(dim=2)
    pos, neg = hi.clamp_min(0), (-lo).clamp_min(0)
    return PoolResult(pos - neg, hi_idx, lo_idx, pos, neg)


def gumbel_two_sided(J: torch.Tensor, tau: float) -> torch.Tensor:
    """Training relaxation of :func:`two_sided_max`: a Gumbel-softmax choice of position per side.

    The selection weights are sampled with ``F.gumbel_softmax(hard=True)`` (a
    straight-through estimator over spatial positions, scaled by ``tau``), so the
    forward value is one sampled response per side, close to the max for small
    ``tau``, and the gradient reaches every position.

    Args:
        J: rotated channel maps ``(B, D, H, W)``.
        tau: the temperature, relative to each channel's largest ``|J|`` (``HeadConfig.gumbel_tau``).
    Returns:
        The pooled values ``(B, D)``.
    """
    flat = J.flatten(2)
    pos, neg = flat.clamp_min(0), (-flat).clamp_min(0)
    scale = flat.detach().abs().amax(dim=2, keepdim=True).clamp_min(1e-6)
    w_pos = F.gumbel_softmax(pos / scale / tau, tau=1.0, hard=True, dim=2)
    w_neg = F.gumbel_softmax(neg / scale / tau, tau=1.0, hard=True, dim=2)
    return (w_pos * pos).sum(2) - (w_neg * neg).sum(2)


def parametrizations_cached() -> bool:
    """Whether ``torch.nn.utils.parametrize.cached()`` is in force: then U is torch's cached tensor and the
    Cayley shortcuts must not form their own. torch exposes this only as a private flag; it is read here
    alone, and a test fails loudly if torch renames or drops it."""
    return bool(parametrize._cache_enabled)


def softmax_two_sided(J: torch.Tensor, tau: float) -> PoolResult:
    """:func:`two_sided_max` whose gradient is spread over the positions near each side's peak.

    The forward values are the exact two-sided max. The backward pass is that of a softmax-weighted
    mean over positions (weights ``softmax(±J / s)``, ``s = tau * max |J_d|``, both detached): a
    straight-through estimator. The exact max's gradient jumps when two positions swap places, which
    makes training chaotic: a change in the features' last bits (another CPU's kernels) moves U far.
    The spread gradient damps that divergence, though not to zero: heads trained on two CPUs still
    part in their last digits, so results are compared within tolerances (see
    :mod:`infodisent.train.selection`; the measurements are in ``docs/results/portability.md``).

    Args:
        J: rotated channel maps ``(B, D, H, W)``.
        tau: the temperature, relative to each channel's largest ``|J|`` (``HeadConfig.softmax_tau``).
    """
    res = two_sided_max(J)
    flat = J.flatten(2)
    with torch.no_grad():
        scale = flat.abs().amax(dim=2, keepdim=True).clamp_min(1e-12) * tau
        w_hi, w_lo = torch.softmax(flat / scale, dim=2), torch.softmax(-flat / scale, dim=2)
        on_hi, on_lo = (res.pos_values > 0).to(J.dtype), (res.neg_values > 0).to(J.dtype)
    soft_hi, soft_lo = (w_hi * flat).sum(2), (w_lo * flat).sum(2)  # the gradient's paths: about max J, min J
    soft = on_hi * soft_hi + on_lo * soft_lo
    v = res.values.detach() + (soft - soft.detach())  # the max's value, the softmax's gradient
    return PoolResult(v, res.pos_index, res.neg_index, res.pos_values, res.neg_values)


class _NonNegative(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.relu(w)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return w.clamp_min(0)


class OrthogonalRotation(nn.Module):
    """``J = U F`` with U orthogonal (torch's orthogonal parametrization), identity at start.

    Args:
        dim: the number of channels D (U is D x D).
        orthogonal_map: torch's map from parameters to U (``"cayley"``, ``"householder"`` or
            ``"matrix_exp"``). Default ``"cayley"``.
        enabled: rotate; when False, U stays the identity and is not trained. Default True."""

    def __init__(self, dim: int, orthogonal_map: OrthogonalMap = "cayley", enabled: bool = True):
        super().__init__()
        self.dim = dim
        self.enabled = enabled
        self.linear = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(dim))
        if enabled:
            orthogonal(self.linear, "weight", orthogonal_map=orthogonal_map, use_trivialization=True)
        else:
            self.linear.weight.requires_grad_(False)

    def matrix(self) -> torch.Tensor:
        """U, computed once per call (once per optimizer step in training). Do not weight-decay the rotation's
        parameters: torch's Householder map reads signs from their diagonal, and decay erases them.

        Under the Cayley map with the trivialization's base B the identity (every head until a U is
        assigned to it), U is ``(I - A/2)^-1 (I + A/2)`` itself: torch's ``B @`` that product, a D x D
        matrix product forward and two backward, is skipped (the same bits: a product with I is exact;
        what it saves is in ``docs/results/implementation.md``)."""
        cayley = self._cayley()
        if cayley is not None:
            base, half = cayley
            eye = torch.eye(self.dim, dtype=half.dtype, device=half.device)
            if torch.equal(base, eye):
                return torch.linalg.solve(eye - half, eye + half)
        return self.linear.weight

    def _cayley(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(B, A/2)`` when U is torch's Cayley map of a base B, not cached; else None (take
        ``self.linear.weight``)."""
        weight = getattr(getattr(self.linear, "parametrizations", None), "weight", None)
        orth = weight[0] if weight is not None else None
        if (orth is None or getattr(getattr(orth, "orthogonal_map", None), "name", None) != "cayley"
                or getattr(orth, "base", None) is None or parametrizations_cached()):
            return None
        X = weight.original.tril()
        return orth.base, 0.5 * (X - X.mT)  # A / 2, A formed as torch forms it

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` of U, (K, D), with autograd. Under the Cayley map (torch's ``U = B (I - A/2)^-1
        (I + A/2)``, B the trivialization's base, A skew) few rows need not form all of U: since
        ``(I - A/2)^T = I + A/2``, ``B[index] (I - A/2)^-1 = solve(I + A/2, B[index]^T)^T``, a solve with K
        right-hand sides instead of D, and no D x D product with B. A pruned head's fine-tuning keeps
        a few dozen of its channels, so each step's rotation costs much less, forward and backward
        (``docs/results/implementation.md``). The same rows as ``matrix()[index]`` up to rounding; every
        other case (many rows, another map, U cached by ``parametrize.cached()``) takes those.

        Args:
            index: the row indices K, a 1-D integer tensor."""
        cayley = self._cayley() if 2 * len(index) <= self.dim else None
        if cayley is None:
            return self.matrix()[index]
        base, half = cayley
        plus = torch.eye(self.dim, dtype=half.dtype, device=half.device) + half  # I + A/2 = (I - A/2)^T
        return torch.linalg.solve(plus, base[index].mT).mT @ plus

    def forward(self, F_: torch.Tensor, U: torch.Tensor | None = None) -> torch.Tensor:
        """The rotated maps ``J = U F`` per position (``F_`` itself when the rotation is disabled).

        Args:
            F_: feature maps ``(B, D, H, W)``.
            U: the rotation to apply, ``(D, D)``, or some of its rows ``(D', D)``, which give ``D'`` maps.
                Default None: :meth:`matrix`.
        Returns:
            ``J``, ``(B, D, H, W)`` or ``(B, D', H, W)``."""
        if not self.enabled:
            return F_
        U = self.matrix() if U is None else U
        b, d, h, w = F_.shape
        # one (B*H*W x D) @ (D x D) product, not B small (D x D) @ (D x H*W) ones: a 7x7 map gives each of
        # those only 49 columns, far too few to keep a GPU's matrix units (or a CPU's BLAS) busy
        # U may be some of the rows of the rotation (a pruned head's channels): (D', D) gives D' maps
        rows = F_.reshape(b, d, h * w).transpose(1, 2)  # (B, H*W, D)
        return torch.matmul(rows, U.T).transpose(1, 2).reshape(b, U.shape[0], h, w)


class InfoDisentHead(nn.Module):
    """Rotation, pooling and non-negative classifier composed; see the module docstring.

    Args:
        config: the head's configuration; ``num_features`` and ``num_classes`` must be set."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        if config.num_features is None or config.num_classes is None:
            raise InputError("InfoDisentHead needs HeadConfig.num_features and num_classes")
        self.config = config
        d, c = config.num_features, config.num_classes
        self.rotation = OrthogonalRotation(d, config.orthogonal_map, enabled=config.rotation)
        self.classifier = nn.Linear(d, c, bias=config.bias)
        with torch.no_grad():
            self.classifier.weight.uniform_(0.0, 1.0 / d**0.5)
            if config.bias:
                self.classifier.bias.zero_()
        if config.nonnegative:
            parametrize.register_parametrization(self.classifier, "weight", _NonNegative())
        if config.pruned:
            self.register_buffer("weight_mask", torch.ones(c, d))
        self._inference: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    def reset_parameters(self) -> None:
        """Draw the weights afresh: U a random orthogonal matrix (Haar-distributed; the identity stays where
        the rotation is disabled), W uniform in ``[0, 1/sqrt(D))`` as at construction, the bias zero; a pruned
        head keeps its mask. ``nn.Linear``'s own ``reset_parameters`` cannot reach weights held by torch's
        parametrizations (it would change a computed copy), and model-randomisation tests (Quantus's MPRT,
        Adebayo et al. 2018) reset every module that has this method."""
        d, c = self.config.num_features, self.config.num_classes
        device = self.classifier.bias.device if self.classifier.bias is not None else self.W.device
        with torch.no_grad():
            if self.config.rotation:
                q, r = torch.linalg.qr(torch.randn(d, d, device=device, dtype=torch.float64))
                q = (q * torch.sign(torch.diagonal(r))).to(self.rotation.linear.parametrizations.weight.original.dtype)
                self.rotation.linear.weight = q  # the parametrization's right inverse stores it
            w = torch.empty(c, d, device=device).uniform_(0.0, 1.0 / d**0.5)
            if parametrize.is_parametrized(self.classifier, "weight"):
                self.classifier.weight = w
            else:
                self.classifier.weight.copy_(w)
            if self.classifier.bias is not None:
                self.classifier.bias.zero_()
        self._inference = None

    @property
    def W(self) -> torch.Tensor:
        """The classifier weights (non-negative when ``nonnegative``, masked when ``pruned``), shape (C, D)."""
        w = self.classifier.weight
        return w * self.weight_mask if self.config.pruned else w

    def set_mask(self, mask: torch.Tensor) -> None:
        """Keep only the weights where ``mask`` is true (needs ``HeadConfig(pruned=True)``).

        Args:
            mask: a ``(C, D)`` tensor, true (or 1) where a weight is kept."""
        if not self.config.pruned:
            raise InputError("set_mask needs a head built with HeadConfig(pruned=True)")
        if mask.shape != self.weight_mask.shape:
            raise InputError(f"mask shape {tuple(mask.shape)} != W's {tuple(self.weight_mask.shape)}")
        self.weight_mask.copy_(mask.to(self.weight_mask))

    @property
    def bias(self) -> torch.Tensor | None:
        return self.classifier.bias

    @property
    def U(self) -> torch.Tensor:
        """The orthogonal matrix (identity when the rotation is disabled), (D, D). In eval mode without
        autograd, the one :meth:`inference_weights` keeps (formed once per head state)."""
        if not self.training and not torch.is_grad_enabled():
            return self.inference_weights()[0]
        return self._rotation_matrix()

    def _rotation_matrix(self) -> torch.Tensor:
        """U formed from its parameters now (the identity when the rotation is disabled)."""
        if not self.config.rotation:
            return torch.eye(self.config.num_features, device=self.W.device)
        return self.rotation.matrix()

    @contextmanager
    def frozen_parameters(self) -> Iterator[None]:
        """Compute U and W once for everything inside (evaluation, mining)."""
        with parametrize.cached():
            yield

    def _state_key(self) -> tuple:
        return tuple((id(t), t._version) for t in (*self.parameters(), *self.buffers()))

    def inference_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``U`` and ``W`` for inference, computed once and reused until a parameter changes (an optimizer
        step, ``load_state_dict`` or ``.to()`` all change the key): the Cayley map solves a D x D system,
        which would otherwise cost more than the head itself on every call."""
        key = self._state_key()
        if self._inference is None or self._inference[0] != key:
            with torch.no_grad():
                self._inference = (key, self._rotation_matrix().detach().clone(), self.W.detach().clone())
        return self._inference[1], self._inference[2]

    def pool(self, J: torch.Tensor) -> tuple[torch.Tensor, PoolResult | None]:
        """``v`` and the two-sided max with its positions (``None`` only for Gumbel sampling in training).

        Args:
            J: rotated channel maps ``(B, D, H, W)``.
        Returns:
            ``(v, pool)``: the pooled values ``(B, D)`` as the configured pooling and relaxation give them, and
            the two-sided max with its positions (None in training with Gumbel sampling or average pooling)."""
        if self.training and self.config.relaxation == "gumbel" and self.config.pooling == "max":
            return gumbel_two_sided(J, self.config.gumbel_tau), None
        if self.training and self.config.relaxation == "softmax" and self.config.pooling == "max":
            res = softmax_two_sided(J, self.config.softmax_tau)
            return res.values, res
        if self.training and self.config.pooling == "avg":
            return J.mean(dim=(2, 3)), None
        res = two_sided_max(J)
        return (J.mean(dim=(2, 3)) if self.config.pooling == "avg" else res.values), res

    def forward_details(self, features: torch.Tensor) -> HeadOutput:
        """Everything the head computes. In eval mode without autograd, U and W come from
        :meth:`inference_weights` (computed once, not on every call).

        Args:
            features: backbone feature maps ``(B, D, H, W)``."""
        if not self.training and not torch.is_grad_enabled():
            U, W = self.inference_weights()
            J = self.rotation(features, U.to(features.dtype))
        else:
            J, W = self.rotation(features), self.W
        v, pool = self.pool(J)
        return HeadOutput(F.linear(v, W.to(v.dtype), None if self.bias is None else self.bias.to(v.dtype)), v, J, pool)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The logits. A pruned head computes only the channels some class keeps (the others have no weight):
        the same logits as :meth:`forward_details`, in a fraction of the time at small K.

        Args:
            features: backbone feature maps ``(B, D, H, W)``.
        Returns:
            The logits ``(B, C)``."""
        if not self.config.pruned:
            return self.forward_details(features).logits
        kept = self.weight_mask.any(0).nonzero().squeeze(1)
        if not self.training and not torch.is_grad_enabled():
            U, W = self.inference_weights()
            rows = U[kept]
        else:
            W = self.W
            rows = self.rotation.rows(kept) if self.config.rotation else None
        if self.config.rotation:
            J = self.rotation(features, rows.to(features.dtype))
        else:
            J = features[:, kept]
        v, _ = self.pool(J)
        return F.linear(v, W[:, kept].to(v.dtype), None if self.bias is None else self.bias.to(v.dtype))

    def contributions(self, v: torch.Tensor, target: torch.Tensor | int | None = None) -> torch.Tensor:
        """``W[c, d] * v_d``: (B, C, D) for all classes, or (B, D) for one class per image.

        Args:
            v: pooled channel values ``(B, D)``.
            target: the class per image, as a ``(B,)`` tensor, or one class for every image. Default None:
                all classes."""
        W = self.W
        if target is None:
            return v[:, None, :] * W[None]
        if isinstance(target, int):
            target = torch.full((v.shape[0],), target, dtype=torch.long, device=v.device)
        return v * W[target]


def check_channels(channels: Sequence[int], num_features: int) -> list[int]:
    """``channels`` as a sorted list of distinct ints, or an error naming the first out of range.

    Args:
        channels: channel indices (at least one).
        num_features: the number of channels D; each index must lie in ``0..D-1``."""
    out = []
    for d in channels:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= int(d) < num_features:
            raise InputError(f"channel {d!r} is outside 0..{num_features - 1}")
        out.append(int(d))
    if not out:
        raise InputError("name at least one channel to switch off")
    return sorted(set(out))


def switch_off(head: InfoDisentHead, channels: Sequence[int]) -> InfoDisentHead:
    """A copy of ``head`` whose classes no longer use ``channels`` (their columns of ``W`` masked to 0;
    a dense head becomes a pruned one, its other weights unchanged).

    Args:
        head: the head; it is left unchanged.
        channels: the channels switched off, for every class.
    Returns:
        The new head, in eval mode, on ``head``'s device."""
    d = head.config.num_features
    channels = check_channels(channels, d)
    if head.config.pruned:
        out = copy.deepcopy(head)
    else:
        out = InfoDisentHead(replace(head.config, pruned=True)).to(head.W.device)
        out.load_state_dict({**head.state_dict(), "weight_mask": out.weight_mask})
    mask = out.weight_mask.clone()
    mask[:, channels] = 0
    out.set_mask(mask)
    return out.eval()


