"""Local and global explanations, as numbers: frozen dataclasses of arrays and DataFrames.

- :func:`explain` takes decisions apart, for a batch of images at once: the
  logit of class ``c`` is ``sum_d W[c, d] * v_d (+ b_c)``, and every term is a
  channel's contribution, positive or negative evidence. It runs the model
  once and keeps what the head computed (``v``, the maps ``J`` and where each
  channel's two sides peak); it renders nothing. Heatmaps, boxes and
  prototype patches come from :class:`~infodisent.explain.render.Renderer` on request.
- :meth:`Explanation.versus` answers "why class A and not class B".
- :func:`explain_class` and :func:`explain_channel` are the global view: a
  class's channels by weight, and a channel's classes.

Pictures are built from these by :mod:`infodisent.viz.plots`.

Example:
    >>> e = explain(model, ["a.jpg", "b.jpg"])     # a batch; e[1] is the second image
    >>> e[0].positive.head()                       # DataFrame of the strongest evidence
    >>> e[0].versus(17)                            # channel-by-channel difference to class 17
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..core.geometry import Box, ViewGeometry, cell_at, cell_box
from ..core.head import check_channels
from ..core.model import InfoDisent
from ..data.inputs import ImageLike, prepare_inputs
from ..errors import InputError
from ..records.options import WEIGHT_THRESHOLD
from .prototypes import PrototypeIndex, Side


def class_index(value: object, num_classes: int, what: str = "target") -> int:
    """``value`` as a class index in ``0..num_classes-1``; a clear error for anything else (bools, floats, strings).

    Args:
        value: the class index to check.
        num_classes: how many classes there are.
        what: the argument's name in the error message. Default ``"target"``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an integer class index, not {type(value).__name__} {value!r}")
    if not 0 <= int(value) < num_classes:
        raise InputError(f"{what} {value} is not a class of this model (0..{num_classes - 1})")
    return int(value)


@dataclass(frozen=True)
class ChannelEvidence:
    """One channel's part in one decision (numbers only)."""

    channel: int
    contribution: float  # W[c, d] * v_d
    weight: float  # W[c, d]
    value: float  # v_d
    side: Side  # "pos" when v_d >= 0 (its strongest positive response won), else "neg"
    position: int  # flat map position of that response
    box: Box  # its grid cell, view pixels


@dataclass(frozen=True)
class Coverage:
    """How much of one decision a set of channels shows: ``logit = shown + rest + bias`` exactly.

    ``share``: their part of all the evidence, ``sum |contribution|`` over the shown channels
    divided by that sum over every channel (1.0: nothing else contributes); a number in [0, 1]
    even where positive and negative contributions cancel."""

    target_name: str
    channels: tuple[int, ...]
    shown: float  # sum of their contributions
    rest: float  # sum of every other channel's contribution
    bias: float
    logit: float
    share: float
    others: int  # channels outside ``channels`` with a non-zero contribution

    def sentence(self) -> str:
        """E.g. "these 3 channels carry 97.1% of the evidence for 'cat': +18.90 of logit 19.40; 12 other channels:
        +0.50"."""
        n = len(self.channels)
        what = "this channel carries" if n == 1 else f"these {n} channels carry"
        others = "1 other channel" if self.others == 1 else f"{self.others} other channels"
        tail = f"; {others}: {self.rest:+.2f}" if self.others else "; no other channel contributes"
        bias = f", bias {self.bias:+.2f}" if self.bias else ""
        return (f"{what} {100 * self.share:.1f}% of the evidence for {self.target_name!r}: "
                f"{self.shown:+.2f} of logit {self.logit:.2f}{tail}{bias}")


@dataclass(frozen=True)
class Explanation:
    """Decisions on a batch of images, split into per-channel contributions.

    Arrays have the batch first. ``e[i]`` is the explanation of image ``i``
    alone; the one-image accessors (``target``, ``logit``, ``table()``,
    ``positive``, ``versus()``, ...) need a batch of one and say so otherwise.
    """

    class_names: tuple[str, ...]
    targets: np.ndarray  # (B,) the explained class of each image
    logits: np.ndarray  # (B, C) float64
    v: np.ndarray  # (B, D) pooled channel values, float64
    positions: np.ndarray  # (B, 2, D) flat position of each channel's pos / neg peak
    J: np.ndarray  # (B, D, H, W) rotated channel maps, float32
    W: np.ndarray  # (C, D) float64
    bias: np.ndarray | None  # (C,) or None
    views: tuple[Image.Image, ...]  # the model's view of each input (S x S RGB)
    sources: tuple[int | str | None, ...]  # dataset index, file path, or None for each image
    labels: np.ndarray | None = None  # (B,) true classes when known (dataset images), -1 where unknown

    # ------------------------------------------------------------------ batch

    def __repr__(self) -> str:
        d, (h, w) = self.v.shape[1], self.grid
        if len(self) == 1:
            truth = f", true {self.class_names[self.label]!r}" if self.label is not None else ""
            what = (f"predicted {self.predicted_name!r} (p={self.probabilities[0, self.predicted]:.3f}){truth}, "
                    f"explaining {self.target_name!r}: logit {self.logit:.3f}")
        else:
            what = f"{len(self)} images"
        return f"Explanation({what}; {d} channels on a {h}x{w} grid)"

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> "Explanation":
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index an explanation with an integer, not {type(i).__name__}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"image {i} of an explanation of {len(self)}")
        s = slice(int(i), int(i) + 1 if i != -1 else None)
        return replace(self, targets=self.targets[s], logits=self.logits[s], v=self.v[s],
                       positions=self.positions[s], J=self.J[s], views=self.views[s], sources=self.sources[s],
                       labels=None if self.labels is None else self.labels[s])

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.J.shape[-2:])  # type: ignore[return-value]

    def without(self, channels: Sequence[int]) -> "Explanation":
        """The same decisions with ``channels`` switched off: their weights set to 0 for every class (what
        :func:`~infodisent.core.head.switch_off` and :func:`infodisent.studies.shortcuts.edit` do to the
        head), logits recomputed; the explained classes stay. ``e.without([d]).predicted`` says at once
        whether the decision rests on channel ``d``.

        Args:
            channels: the channels switched off."""
        channels = check_channels(channels, self.W.shape[1])
        W = self.W.copy()
        logits = self.logits - self.v[:, channels] @ W[:, channels].T  # minus what those channels gave each class
        W[:, channels] = 0.0
        return replace(self, W=W, logits=logits)

    @property
    def correct(self) -> np.ndarray | None:
        """(B,) whether each prediction is right (None when the true classes are not known)."""
        return None if self.labels is None else self.predictions == self.labels

    @property
    def label(self) -> int | None:
        """The true class of a one-image explanation, when known."""
        self._one()
        return None if self.labels is None or self.labels[0] < 0 else int(self.labels[0])

    @property
    def predictions(self) -> np.ndarray:
        """(B,) the predicted class of each image."""
        return self.logits.argmax(1)

    @property
    def probabilities(self) -> np.ndarray:
        """(B, C) softmax of the logits."""
        p = np.exp(self.logits - self.logits.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)

    @property
    def contributions(self) -> np.ndarray:
        """(B, D) ``W[target, d] * v_d`` of each image."""
        return self.W[self.targets] * self.v

    @property
    def bias_terms(self) -> np.ndarray:
        """(B,) the bias of each image's target class (zeros without a bias)."""
        return np.zeros(len(self)) if self.bias is None else self.bias[self.targets]

    @property
    def reconstruction_error(self) -> float:
        """Largest ``|sum(contributions) + bias - logit| / max(|logit|, 1e-12)`` over the batch: 0 up to rounding."""
        total = self.contributions.astype(np.float64).sum(1) + self.bias_terms
        logit = self.logits[np.arange(len(self)), self.targets]
        return float((np.abs(total - logit) / np.maximum(np.abs(logit), 1e-12)).max(initial=0.0))

    def with_target(self, target: int | Sequence[int]) -> "Explanation":
        """The same decisions explained for another class (one for all images, or one each).

        Args:
            target: a class index for every image, a sequence of one per image, or None for each image's
                predicted class."""
        return replace(self, targets=_targets(target, len(self), self.logits))

    # ------------------------------------------------------------------ one image

    def _one(self) -> None:
        if len(self) != 1:
            raise InputError(f"this explanation holds {len(self)} images; pick one with e[i]")

    @property
    def target(self) -> int:
        self._one()
        return int(self.targets[0])

    @property
    def target_name(self) -> str:
        return self.class_names[self.target]

    @property
    def predicted(self) -> int:
        self._one()
        return int(self.predictions[0])

    @property
    def predicted_name(self) -> str:
        return self.class_names[self.predicted]

    @property
    def logit(self) -> float:
        """The explained class's logit."""
        return float(self.logits[0, self.target])

    @property
    def target_bias(self) -> float:
        """The explained class's bias (0 without one): ``logit = contributions.sum() + target_bias``."""
        self._one()
        return float(self.bias_terms[0])

    @property
    def view(self) -> Image.Image:
        self._one()
        return self.views[0]

    @property
    def top5(self) -> pd.DataFrame:
        """The five highest logits: columns ``class``, ``name``, ``logit``, ``probability`` (softmax)."""
        self._one()
        logits = self.logits[0]
        k = min(5, len(logits))
        order = np.argsort(-logits, kind="stable")[:k]
        p = self.probabilities[0]
        return pd.DataFrame({"class": order, "name": [self.class_names[i] for i in order],
                             "logit": logits[order], "probability": p[order]})

    def table(self, target: int | None = None) -> pd.DataFrame:
        """Every channel's contribution to ``target`` (default: the explained class), largest first.

        Columns: ``channel``, ``value`` (``v_d``), ``weight`` (``W[c, d]``), ``contribution``
        (``W[c, d] * v_d``) and ``share``: the contribution's part of all the evidence on its side
        (a positive contribution over the sum of the positive ones, a negative one over the sum of
        the negative ones; each side's shares add up to 1).

        Args:
            target: the class the contributions go to. Default None: the explained class.
        """
        self._one()
        c = self.target if target is None else class_index(target, len(self.class_names))
        v = self.v[0]
        contrib = self.W[c] * v + 0.0  # + 0.0: no "-0.000" where W = 0 and v < 0
        pos_total, neg_total = contrib[contrib > 0].sum(), contrib[contrib < 0].sum()
        share = np.zeros_like(contrib)
        if pos_total > 0:
            share = np.where(contrib > 0, contrib / pos_total, share)
        if neg_total < 0:
            share = np.where(contrib < 0, contrib / neg_total, share)
        df = pd.DataFrame({"channel": np.arange(len(v)), "value": v, "weight": self.W[c], "contribution": contrib,
                           "share": share})
        return df.sort_values("contribution", ascending=False, kind="stable").reset_index(drop=True)

    @property
    def positive(self) -> pd.DataFrame:
        """Channels that argue for the class (contribution > 0), strongest first (columns: :meth:`table`)."""
        t = self.table()
        return t[t["contribution"] > 0].reset_index(drop=True)

    @property
    def negative(self) -> pd.DataFrame:
        """Channels that argue against it (contribution < 0), strongest first (columns: :meth:`table`)."""
        t = self.table()
        return t[t["contribution"] < 0].sort_values("contribution", kind="stable").reset_index(drop=True)

    def versus(self, other: int) -> pd.DataFrame:
        """Why ``target`` and not ``other``: per channel, ``W[a,d] v_d - W[b,d] v_d``, largest first.

        Columns ``channel, value, contribution_target, contribution_other, difference``; the
        differences plus the bias difference sum to ``logit[a] - logit[b]``.

        Args:
            other: the class compared with, by index.
        """
        self._one()
        a, b = self.target, class_index(other, len(self.class_names), "other")
        v = self.v[0]
        ca, cb = self.W[a] * v + 0.0, self.W[b] * v + 0.0
        df = pd.DataFrame({"channel": np.arange(len(v)), "value": v, "contribution_target": ca,
                           "contribution_other": cb, "difference": ca - cb})
        return df.sort_values("difference", ascending=False, kind="stable").reset_index(drop=True)

    def channel(self, channel: int) -> ChannelEvidence:
        """One channel's evidence for the explained class: contribution, value, winning side and its box.

        Args:
            channel: the channel, in ``0..D-1``."""
        self._one()
        d = int(channel)
        if isinstance(channel, (bool, np.bool_)) or not 0 <= d < self.v.shape[1]:
            raise InputError(f"channel {channel!r} is outside 0..{self.v.shape[1] - 1}")
        value = float(self.v[0, d])
        side: Side = "pos" if value >= 0 else "neg"
        p = int(self.positions[0, 0 if side == "pos" else 1, d])
        w = float(self.W[self.target, d])
        return ChannelEvidence(d, w * value, w, value, side, p, cell_box(p, self.grid, self.views[0].size))

    def coverage(self, channels: Sequence[int] | int | None = None) -> Coverage:
        """How much of the decision ``channels`` carry (an int ``n``: the ``n`` largest contributions by
        size; default: the channels :meth:`evidence` shows).

        Args:
            channels: the channels, or an int ``n`` for the ``n`` largest contributions by size. Default None:
                the channels of :meth:`evidence` with its default ``n``."""
        self._one()
        contrib = self.contributions[0].astype(np.float64)
        if channels is None:
            channels = [e.channel for e in self.evidence()]
        elif isinstance(channels, (int, np.integer)) and not isinstance(channels, bool):
            channels = np.argsort(-np.abs(contrib), kind="stable")[: int(channels)].tolist()
        chosen = np.zeros(len(contrib), bool)
        chosen[[int(d) for d in channels]] = True
        total = np.abs(contrib).sum()
        return Coverage(
            self.target_name, tuple(int(d) for d in channels), float(contrib[chosen].sum()),
            float(contrib[~chosen].sum()), self.target_bias, self.logit,
            float(np.abs(contrib[chosen]).sum() / total) if total > 0 else 1.0,
            int(np.count_nonzero(contrib[~chosen])),
        )

    def at(self, x: float, y: float) -> pd.DataFrame:
        """Point and ask: the channels whose winning response (the side ``v_d`` took) lies in the grid cell
        under view point ``(x, y)``, with their contribution to the explained class, largest in size first.

        Columns ``channel, side, value, weight, contribution, position``; channels the class does not
        weigh are listed too, with contribution 0 (after the others).

        Args:
            x: the point's horizontal coordinate, in view pixels.
            y: its vertical coordinate, in view pixels."""
        self._one()
        position = cell_at(x, y, self.grid, self.views[0].size)
        v = self.v[0]
        winning = np.where(v >= 0, self.positions[0, 0], self.positions[0, 1])
        here = np.flatnonzero(winning == position)
        w = self.W[self.target, here]
        df = pd.DataFrame({"channel": here, "side": np.where(v[here] >= 0, "pos", "neg"), "value": v[here],
                           "weight": w, "contribution": w * v[here] + 0.0, "position": position})
        order = np.lexsort((df["channel"].to_numpy(), -np.abs(df["contribution"].to_numpy())))
        return df.iloc[order].reset_index(drop=True)

    def evidence(self, n: int = 5) -> tuple[ChannelEvidence, ...]:
        """The ``n`` strongest positive, then the ``n`` strongest negative channels.

        Args:
            n: at most this many channels of each sign. Default 5."""
        t = self.table()
        contrib = t["contribution"].to_numpy()
        chosen = list(t["channel"][contrib > 0][:n]) + list(t["channel"][contrib < 0][::-1][:n])
        return tuple(self.channel(int(d)) for d in chosen)


def _targets(target, n: int, logits: np.ndarray) -> np.ndarray:
    c = logits.shape[1]
    if target is None:
        return logits.argmax(1)
    if isinstance(target, (list, tuple, np.ndarray)):
        if len(target) != n:
            raise InputError(f"{len(target)} targets for {n} images")
        return np.array([class_index(t, c) for t in np.asarray(target).tolist()], dtype=np.int64)
    return np.full(n, class_index(target, c), dtype=np.int64)


@torch.no_grad()
def explain(
    model: InfoDisent,
    images: ImageLike | Sequence[ImageLike],
    target: int | Sequence[int] | None = None,
    *,
    sources: Sequence[int | str | None] | None = None,
) -> Explanation:
    """Explain the decisions of ``model`` on one image or a batch (PIL images, paths or normalised tensors).

    ``target`` defaults to each image's predicted class; an int explains that class for every
    image, a sequence gives one per image. ``sources`` records where the images came from
    (dataset indices), for the renderer and the widgets. One forward pass; nothing is rendered.

    Args:
        model: the InfoDisent model.
        images: one image or a sequence: PIL images, file paths or normalised tensors.
        target: the class explained: an int for every image, a sequence of one per image. Default None: each
            image's predicted class.
        sources: where each image came from (a dataset index, a path or None). Default None: the paths of
            images given as paths, else None.
    """
    x, views, found = prepare_inputs(model, images)
    return _explain_tensor(model, x, views, target, sources if sources is not None else found)


def explain_views(model: InfoDisent, views: Sequence[Image.Image], target: int | Sequence[int] | None = None,
                  sources: Sequence[int | str | None] | None = None,
                  labels: Sequence[int] | None = None) -> Explanation:
    """:func:`explain` for images already brought to the model's view (as :meth:`Renderer.view` gives them).

    Args:
        model: the InfoDisent model.
        views: the images, each of the model's input size.
        target: the class explained: an int for every image, a sequence of one per image. Default None: each
            image's predicted class.
        sources: where each image came from (a dataset index, a path or None). Default None: unknown.
        labels: the true class of each image. Default None: unknown."""
    size = tuple(model.backbone.data_config["input_size"][:0:-1])
    if not views or any(v.size != size for v in views):
        raise InputError(f"explain_views takes views of the model's input size {size}")
    geo = ViewGeometry.from_transform(model.transform, views[0].size)
    x = torch.stack([geo.to_tensor(v) for v in views])
    e = _explain_tensor(model, x, list(views), target, sources if sources is not None else [None] * len(views))
    if labels is not None:
        if len(labels) != len(views):
            raise InputError(f"{len(labels)} labels for {len(views)} images")
        e = replace(e, labels=np.asarray(labels, dtype=np.int64))
    return e


def _explain_tensor(model, x, views, target, sources) -> Explanation:
    out = model.outputs(x.to(model.device))
    logits = out.logits.double().cpu().numpy()
    targets = _targets(target, len(logits), logits)
    if len(sources) != len(views):
        raise InputError(f"{len(sources)} sources for {len(views)} images")
    pool = out.pool
    return Explanation(
        class_names=tuple(model.class_names),
        targets=targets,
        logits=logits,
        v=out.v.double().cpu().numpy(),
        positions=torch.stack([pool.pos_index, pool.neg_index], 1).cpu().numpy(),
        J=out.J.float().cpu().numpy(),
        W=model.W.double().cpu().numpy(),
        bias=None if model.bias is None else model.bias.double().cpu().numpy(),
        views=tuple(views),
        sources=tuple(sources),
    )


@dataclass(frozen=True)
class ClassExplanation:
    """A class's channels, by weight (with an index: their mean value and contribution on the class)."""

    class_index: int
    name: str
    channels: pd.DataFrame  # channel, weight, share, (with an index) mean_value, mean_contribution


@dataclass(frozen=True)
class ChannelExplanation:
    """A channel's classes, by weight, and its rows of the prototype index."""

    channel: int
    classes: pd.DataFrame  # class, name, weight, share
    prototypes: pd.DataFrame | None  # its rows of the prototype index (both sides)


def explain_class(model: InfoDisent, target: int, index: PrototypeIndex | None = None, *,
                  threshold: float = WEIGHT_THRESHOLD) -> ClassExplanation:
    """Class ``target``'s channels with ``W > threshold``, heaviest first.

    Args:
        model: the InfoDisent model.
        target: the class, by index.
        index: a prototype index; with one, each channel's mean value and contribution on the class's images
            are added. Default None.
        threshold: the weight above which a channel counts. Default
            :data:`~infodisent.records.options.WEIGHT_THRESHOLD`."""
    W = model.W.double().cpu().numpy()
    c = class_index(target, W.shape[0])
    w = W[c]
    keep = np.flatnonzero(w > threshold)
    keep = keep[np.argsort(-w[keep], kind="stable")]
    df = pd.DataFrame({"channel": keep, "weight": w[keep], "share": w[keep] / max(w[w > 0].sum(), 1e-12)})
    if index is not None:
        mask = (index.labels == c) & index.valid
        vals = np.asarray(index.v[mask])[:, keep] if mask.any() else np.full((1, len(keep)), np.nan)
        df["mean_value"] = vals.mean(0)
        df["mean_contribution"] = df["mean_value"] * df["weight"]
    return ClassExplanation(c, model.class_names[c], df.reset_index(drop=True))


def explain_channel(model: InfoDisent, channel: int, index: PrototypeIndex | None = None, *,
                    threshold: float = WEIGHT_THRESHOLD) -> ChannelExplanation:
    """The classes that use ``channel`` (``W > threshold``), heaviest first, and its prototype rows.

    Args:
        model: the InfoDisent model.
        channel: the channel, in ``0..D-1``.
        index: a prototype index, for the channel's prototype rows (both sides). Default None: no rows.
        threshold: the weight above which a class counts. Default
            :data:`~infodisent.records.options.WEIGHT_THRESHOLD`."""
    W = model.W.double().cpu().numpy()
    if isinstance(channel, (bool, np.bool_)) or not isinstance(channel, (int, np.integer)) \
            or not 0 <= channel < W.shape[1]:
        raise InputError(f"channel {channel!r} is outside 0..{W.shape[1] - 1}")
    w = W[:, channel]
    keep = np.flatnonzero(w > threshold)
    keep = keep[np.argsort(-w[keep], kind="stable")]
    df = pd.DataFrame({"class": keep, "name": [model.class_names[c] for c in keep], "weight": w[keep],
                       "share": w[keep] / max(w[w > 0].sum(), 1e-12)})
    table = None
    if index is not None:
        table = pd.concat([index.prototypes(channel, "pos"), index.prototypes(channel, "neg")], ignore_index=True)
    return ChannelExplanation(int(channel), df, table)


def channel_overview(model: InfoDisent, index: PrototypeIndex | None = None, *,
                     threshold: float = WEIGHT_THRESHOLD) -> pd.DataFrame:
    """One row per channel, to rank and pick channels by: ``classes`` (how many weigh it above ``threshold``),
    ``top_class`` (-1 if none), ``top_weight``, ``total_weight``; with an index also ``class_purity`` (the
    share of its top-k positive patches that come from their most common class; NaN where it never fires)
    and ``fires`` (the share of the split's images whose pooled value ``v_d`` is > 0).

    Args:
        model: the InfoDisent model.
        index: a prototype index, for ``class_purity`` and ``fires``. Default None: without them.
        threshold: the weight above which a class counts as weighing a channel. Default
            :data:`~infodisent.records.options.WEIGHT_THRESHOLD`."""
    W = model.W.double().cpu().numpy()
    used = W > threshold
    df = pd.DataFrame({"channel": np.arange(W.shape[1]), "classes": used.sum(0),
                       "top_class": np.where(used.any(0), W.argmax(0), -1), "top_weight": W.max(0),
                       "total_weight": W.sum(0)})
    if index is not None:
        pos = index.table[index.table["side"] == "pos"]
        purity = pos.groupby("channel")["label"].agg(lambda s: s.value_counts().iloc[0] / len(s))
        df["class_purity"] = purity.reindex(df["channel"]).to_numpy()
        v = np.asarray(index.v)[index.valid]
        df["fires"] = (v > 0).mean(0) if len(v) else np.nan
    return df


__all__ = [
    "ChannelEvidence", "ChannelExplanation", "ClassExplanation", "Coverage", "Explanation", "channel_overview",
    "class_index", "explain", "explain_channel", "explain_class", "explain_views",
]
