"""Local and global explanations, as data: dataclasses of arrays and DataFrames.

- :func:`explain` takes one decision apart: the logit of the chosen class is
  ``sum_d W[c, d] * v_d (+ b_c)``, and every term is a channel's
  contribution, positive or negative evidence. For the strongest channels it
  adds their heatmap on this image, the box of their response and (given a
  :class:`~infodisent.prototypes.PrototypeIndex`) their prototype patches.
  :meth:`Explanation.versus` answers "why class A and not class B".
- :func:`explain_class` and :func:`explain_channel` are the global view: a
  class's channels by weight, and a channel's classes.

Pictures are built from these by :mod:`infodisent.plots`.

Example:
    >>> e = explain(model, "bird.jpg", index=PrototypeIndex.load("runs/cub"))
    >>> e.predicted_name, e.positive.head()        # DataFrame of the strongest evidence
    >>> e.versus(17)                               # channel-by-channel difference to class 17
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .datasets.base import read_image, to_rgb
from .geometry import Box, ViewGeometry, cell_box, upsample_map
from .head import two_sided_max
from .model import InfoDisent
from .prototypes import PrototypeIndex, PrototypePatch, render_prototypes

ImageLike = Image.Image | str | Path | torch.Tensor


@dataclass(frozen=True)
class ChannelEvidence:
    """One channel's part in a decision."""

    channel: int
    contribution: float  # W[c, d] * v_d
    weight: float  # W[c, d]
    value: float  # v_d
    side: str  # "pos" when v_d >= 0 (its strongest positive response won), else "neg"
    position: int  # flat map position of that response
    box: Box  # its grid cell, view pixels
    heatmap: np.ndarray  # (S_h, S_w) the channel's map on this image (negated for the neg side)
    prototypes: tuple[PrototypePatch, ...] = ()


@dataclass(frozen=True)
class Explanation:
    """A decision, split into per-channel contributions (see the module docstring)."""

    image: Image.Image  # the model's view of the input
    class_names: tuple[str, ...]
    target: int
    logits: np.ndarray  # (C,)
    v: np.ndarray  # (D,)
    W: np.ndarray  # (C, D)
    bias: np.ndarray | None  # (C,) or None
    J: np.ndarray  # (D, H, W) rotated channel maps of this image
    positions: np.ndarray  # (2, D) argmax of each channel's pos / neg side
    evidence: tuple[ChannelEvidence, ...]  # strongest positive, then strongest negative channels

    @property
    def predicted(self) -> int:
        return int(self.logits.argmax())

    @property
    def predicted_name(self) -> str:
        return self.class_names[self.predicted]

    @property
    def target_name(self) -> str:
        return self.class_names[self.target]

    @property
    def top5(self) -> pd.DataFrame:
        """The five highest logits with their classes and softmax probabilities."""
        k = min(5, len(self.logits))
        order = np.argsort(-self.logits, kind="stable")[:k]
        p = np.exp(self.logits - self.logits.max())
        p /= p.sum()
        return pd.DataFrame({"class": order, "name": [self.class_names[i] for i in order],
                             "logit": self.logits[order], "probability": p[order]})

    @property
    def logit(self) -> float:
        return float(self.logits[self.target])

    @property
    def bias_term(self) -> float:
        return 0.0 if self.bias is None else float(self.bias[self.target])

    @property
    def contributions(self) -> np.ndarray:
        """``W[target, d] * v_d`` for every channel, (D,)."""
        return self.W[self.target] * self.v

    def table(self, target: int | None = None) -> pd.DataFrame:
        """Every channel's contribution to ``target`` (default: the explained class), largest first."""
        c = self.target if target is None else target
        contrib = self.W[c] * self.v
        pos_total = contrib[contrib > 0].sum()
        df = pd.DataFrame({
            "channel": np.arange(len(self.v)), "value": self.v, "weight": self.W[c], "contribution": contrib,
            "share_of_positive": np.where(contrib > 0, contrib / pos_total if pos_total > 0 else 0.0, 0.0),
        })
        return df.sort_values("contribution", ascending=False, kind="stable").reset_index(drop=True)

    @property
    def positive(self) -> pd.DataFrame:
        """Channels that argue for the class (contribution > 0), strongest first."""
        t = self.table()
        return t[t["contribution"] > 0].reset_index(drop=True)

    @property
    def negative(self) -> pd.DataFrame:
        """Channels that argue against it (contribution < 0), strongest first."""
        t = self.table()
        return t[t["contribution"] < 0].sort_values("contribution", kind="stable").reset_index(drop=True)

    @property
    def reconstruction_error(self) -> float:
        """``|sum(contributions) + bias - logit| / max(|logit|, 1e-12)``: 0 up to rounding."""
        total = float(self.contributions.astype(np.float64).sum()) + self.bias_term
        return abs(total - self.logit) / max(abs(self.logit), 1e-12)

    def versus(self, other: int) -> pd.DataFrame:
        """Why ``target`` and not ``other``: per channel, ``W[a,d] v_d - W[b,d] v_d``, largest first.

        The differences plus the bias difference sum to ``logit[a] - logit[b]``.
        """
        a, b = self.target, int(other)
        ca, cb = self.W[a] * self.v, self.W[b] * self.v
        df = pd.DataFrame({"channel": np.arange(len(self.v)), "value": self.v, f"contribution_{a}": ca,
                           f"contribution_{b}": cb, "difference": ca - cb})
        return df.sort_values("difference", ascending=False, kind="stable").reset_index(drop=True)

    def heatmap(self, channel: int) -> np.ndarray:
        """Channel ``channel``'s map on this image, upsampled to the view (signed, as computed)."""
        return upsample_map(self.J[channel], self.image.size)


def _as_input(model: InfoDisent, image: ImageLike) -> tuple[torch.Tensor, Image.Image]:
    if isinstance(image, (str, Path)):
        image = read_image(image)
    if isinstance(image, Image.Image):
        image = to_rgb(image)
        view = ViewGeometry.from_transform(model.transform, image.size).view_image(image)
        return model.transform(image)[None], view
    if isinstance(image, torch.Tensor):
        x = image[None] if image.ndim == 3 else image
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ValueError(f"explain takes one image: a (3, H, W) tensor, got shape {tuple(image.shape)}")
        mean, std = model.backbone.normalization()
        pixels = ((x[0].cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        return x, Image.fromarray(pixels, "RGB")
    raise TypeError(f"explain takes a PIL image, a path or a normalised (3, H, W) tensor, not {type(image).__name__}")


@torch.no_grad()
def explain(
    model: InfoDisent,
    image: ImageLike,
    target: int | None = None,
    *,
    index: PrototypeIndex | None = None,
    top: int = 5,
    prototypes: int = 5,
) -> Explanation:
    """Explain one decision of ``model`` on ``image`` (a PIL image, a path or a normalised tensor).

    ``target`` defaults to the predicted class. ``evidence`` holds the ``top``
    strongest positive and ``top`` strongest negative channels, each with its
    heatmap and box, and (with ``index``) its first ``prototypes`` patches.
    """
    x, view = _as_input(model, image)
    device = next(model.head.parameters()).device
    out = model.outputs(x.to(device))
    pool = two_sided_max(out.J)
    logits = out.logits[0].double().cpu().numpy()
    v = out.v[0].double().cpu().numpy()
    W = model.W.double().cpu().numpy()
    bias = None if model.b is None else model.b.double().cpu().numpy()
    if target is None:
        target = int(logits.argmax())
    if not 0 <= int(target) < len(logits):
        raise ValueError(f"target {target} is not a class of this model (0..{len(logits) - 1})")
    J = out.J[0].float().cpu().numpy()
    positions = torch.stack([pool.pos_index[0], pool.neg_index[0]]).cpu().numpy()
    contrib = W[target] * v
    order = np.argsort(-contrib, kind="stable")
    chosen = [int(d) for d in order[:top] if contrib[d] > 0] + [int(d) for d in order[::-1][:top] if contrib[d] < 0]
    grid = J.shape[1:]
    evidence = []
    for d in chosen:
        side = "pos" if v[d] >= 0 else "neg"
        p = int(positions[0 if side == "pos" else 1, d])
        patches = tuple(render_prototypes(model, index, d, side, prototypes)) if index is not None and prototypes else ()
        sign = 1.0 if side == "pos" else -1.0
        evidence.append(ChannelEvidence(
            d, float(contrib[d]), float(W[target, d]), float(v[d]), side, p,
            cell_box(p, grid, view.size), upsample_map(sign * J[d], view.size), patches,
        ))
    return Explanation(view, tuple(model.class_names), int(target), logits, v, W, bias, J, positions, tuple(evidence))


@dataclass(frozen=True)
class ClassExplanation:
    """A class's channels, by weight, with their prototypes."""

    class_index: int
    name: str
    channels: pd.DataFrame  # channel, weight, share, (with an index) mean_value, mean_contribution on the class
    prototypes: dict[int, tuple[PrototypePatch, ...]]


@dataclass(frozen=True)
class ChannelExplanation:
    """A channel's classes, by weight, with its prototypes on both sides."""

    channel: int
    classes: pd.DataFrame  # class, name, weight, share
    prototypes: dict[str, tuple[PrototypePatch, ...]]  # "pos" / "neg"
    table: pd.DataFrame | None  # its rows of the prototype index


def explain_class(
    model: InfoDisent,
    class_index: int,
    index: PrototypeIndex | None = None,
    *,
    threshold: float = 1e-3,
    top: int | None = 10,
    prototypes: int = 5,
) -> ClassExplanation:
    """Class ``class_index``'s channels with ``W > threshold``, heaviest first (the first ``top`` of them rendered)."""
    W = model.W.double().cpu().numpy()
    if not 0 <= class_index < W.shape[0]:
        raise ValueError(f"class {class_index} is not a class of this model (0..{W.shape[0] - 1})")
    w = W[class_index]
    keep = np.flatnonzero(w > threshold)
    keep = keep[np.argsort(-w[keep], kind="stable")]
    df = pd.DataFrame({"channel": keep, "weight": w[keep], "share": w[keep] / max(w[w > 0].sum(), 1e-12)})
    if index is not None:
        mask = (index.labels == class_index) & index.valid
        vals = np.asarray(index.v[mask])[:, keep] if mask.any() else np.full((1, len(keep)), np.nan)
        df["mean_value"] = vals.mean(0)
        df["mean_contribution"] = df["mean_value"] * df["weight"]
    patches = {}
    if index is not None and prototypes:
        for d in df["channel"].head(top):
            patches[int(d)] = tuple(render_prototypes(model, index, int(d), "pos", prototypes))
    return ClassExplanation(class_index, model.class_names[class_index], df.reset_index(drop=True), patches)


def explain_channel(
    model: InfoDisent,
    channel: int,
    index: PrototypeIndex | None = None,
    *,
    threshold: float = 1e-3,
    prototypes: int = 5,
) -> ChannelExplanation:
    """The classes that use ``channel`` (``W > threshold``), heaviest first, and its prototypes."""
    W = model.W.double().cpu().numpy()
    if not 0 <= channel < W.shape[1]:
        raise ValueError(f"channel {channel} is outside 0..{W.shape[1] - 1}")
    w = W[:, channel]
    keep = np.flatnonzero(w > threshold)
    keep = keep[np.argsort(-w[keep], kind="stable")]
    df = pd.DataFrame({"class": keep, "name": [model.class_names[c] for c in keep], "weight": w[keep],
                       "share": w[keep] / max(w[w > 0].sum(), 1e-12)})
    patches: dict[str, tuple[PrototypePatch, ...]] = {}
    table = None
    if index is not None:
        table = index.table[index.table["channel"] == channel].reset_index(drop=True)
        if prototypes:
            patches = {s: tuple(render_prototypes(model, index, channel, s, prototypes)) for s in ("pos", "neg")}
    return ChannelExplanation(channel, df, patches, table)


__all__ = [
    "ChannelEvidence", "ChannelExplanation", "ClassExplanation", "Explanation",
    "explain", "explain_channel", "explain_class",
]
