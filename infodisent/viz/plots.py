"""Pictures built from explanation dataclasses: PIL images and plotly figures.

Shared by notebooks, widgets and the HTML report; nothing here computes an
explanation, it only draws one.

Example:
    >>> run = infodisent.open_run("runs/demo")
    >>> e = run.explain(17)
    >>> evidence_image(e, run.renderer())  # PIL: this image's top channels next to their prototypes
    >>> contributions_figure(e).show()     # plotly: the logit as a sum of channel contributions
"""

from __future__ import annotations

import base64
import io
import itertools
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image, ImageDraw
from plotly.colors import sample_colorscale, unlabel_rgb

from ..core.geometry import Box
from ..errors import InputError
from ..explain.explanation import Explanation
from ..explain.render import Patch, Renderer, evidence
from ..records.results import Accuracy, Faithfulness, FrontierPoint

BOX_COLOR = (0, 230, 118)
POSITIVE, NEGATIVE = "#2e7d32", "#c62828"


@lru_cache(maxsize=8)
def colormap(name: str = "Inferno") -> np.ndarray:
    """A (256, 3) uint8 lookup table sampled from a plotly colour scale.

    Args:
        name: the plotly colour scale's name. Default ``"Inferno"``."""
    colors = sample_colorscale(name, list(np.linspace(0, 1, 256)))
    return np.array([unlabel_rgb(c) for c in colors]).round().clip(0, 255).astype(np.uint8)


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.55, cmap: str = "Inferno") -> Image.Image:
    """``image`` with ``heatmap`` (its positive part, scaled to its maximum) blended on top.

    Args:
        image: the picture underneath; resized to the heatmap's size.
        heatmap: ``(H, W)`` values; negative ones are not drawn.
        alpha: the opacity of the strongest response (weaker ones are fainter). Default 0.55.
        cmap: the plotly colour scale of the heatmap. Default ``"Inferno"``."""
    h = np.clip(np.asarray(heatmap, np.float64), 0, None)
    h = h / h.max() if h.max() > 0 else h
    colored = colormap(cmap)[(h * 255).round().astype(int)]
    base = np.asarray(image.convert("RGB").resize((h.shape[1], h.shape[0])), np.float64)
    a = alpha * h[..., None] ** 0.5  # strong responses opaque, weak ones faint
    return Image.fromarray((base * (1 - a) + colored * a).round().astype(np.uint8))


def draw_box(image: Image.Image, box: Box, color=BOX_COLOR, width: int = 3) -> Image.Image:
    """A copy of ``image`` with ``box`` (x0, y0, x1, y1) outlined.

    Args:
        image: the picture.
        box: ``(x0, y0, x1, y1)`` in the picture's pixels, ``x1`` and ``y1`` exclusive.
        color: the outline's RGB colour. Default ``BOX_COLOR`` (green).
        width: the outline's width in pixels. Default 3."""
    out = image.convert("RGB").copy()
    x0, y0, x1, y1 = box
    ImageDraw.Draw(out).rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=width)
    return out


def patch_image(patch: Patch, mode: str = "crop", size: int = 128) -> Image.Image:
    """One prototype as ``crop`` (the patch around the response), ``box`` (whole view, box drawn)
    or ``heatmap`` (whole view, channel map blended, box drawn); ``size`` px square.

    Args:
        patch: a channel's response on one image (from :meth:`Renderer.prototypes` or :func:`evidence`).
        mode: ``"crop"``, ``"box"`` or ``"heatmap"``. Default ``"crop"``.
        size: the side of the square picture, in pixels. Default 128."""
    if mode == "crop":
        img = patch.crop()
    elif mode == "box":
        img = draw_box(patch.view, patch.box)
    elif mode == "heatmap":
        img = draw_box(overlay(patch.view, patch.heatmap), patch.box)
    else:
        raise InputError(f"mode must be crop, box or heatmap, not {mode!r}")
    return img.resize((size, size), Image.BICUBIC)


def strip(images: Sequence[Image.Image], gap: int = 4, background=(255, 255, 255)) -> Image.Image:
    """Images side by side (same height expected).

    Args:
        images: the pictures, left to right; none gives a 1 x 1 picture.
        gap: pixels between two pictures. Default 4.
        background: the RGB colour of the gaps. Default white."""
    if not images:
        return Image.new("RGB", (1, 1), background)
    h = max(i.height for i in images)
    out = Image.new("RGB", (sum(i.width for i in images) + gap * (len(images) - 1), h), background)
    x = 0
    for img in images:
        out.paste(img, (x, 0))
        x += img.width + gap
    return out


def stack(images: Sequence[Image.Image], gap: int = 6, background=(255, 255, 255)) -> Image.Image:
    """Images one above the other, left-aligned.

    Args:
        images: the pictures, top to bottom; none gives a 1 x 1 picture.
        gap: pixels between two pictures. Default 6.
        background: the RGB colour of the gaps and margins. Default white."""
    if not images:
        return Image.new("RGB", (1, 1), background)
    out = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images) + gap * (len(images) - 1)), background)
    y = 0
    for img in images:
        out.paste(img, (0, y))
        y += img.height + gap
    return out


def caption(img: Image.Image, text: str, height: int = 18) -> Image.Image:
    """``img`` with a line of text above it.

    Args:
        img: the picture.
        text: the caption, one line.
        height: the pixels added above the picture for it. Default 18."""
    out = Image.new("RGB", (max(img.width, 7 * len(text)), img.height + height), (255, 255, 255))
    out.paste(img, (0, height))
    ImageDraw.Draw(out).text((2, 3), text, fill=(0, 0, 0))
    return out


def evidence_image(expl: Explanation, renderer: Renderer, n: int = 4, size: int = 144, prototypes: int = 4,
                   negative: bool = False) -> Image.Image:
    """One row per top channel of a one-image explanation: its heatmap and box on this image, then
    its first ``prototypes`` prototype patches of the same side (from ``renderer``'s index).

    Args:
        expl: a one-image explanation.
        renderer: draws the prototypes from the run's prototype index.
        n: how many channels (rows). Default 4.
        size: the side of each picture, in pixels. Default 144.
        prototypes: prototype patches per row; 0 draws none. Default 4.
        negative: show the channels that count against the class instead of those for it. Default False."""
    chosen = [e for e in expl.evidence(n) if (e.contribution < 0) == negative][:n]
    rows = []
    for e in chosen:
        here = evidence(expl, e.channel)
        pic = draw_box(overlay(here.view, here.heatmap), here.box).resize((size, size), Image.BICUBIC)
        protos = [patch_image(p, "crop", size) for p in renderer.prototypes(e.channel, e.side, prototypes)] \
            if prototypes else []
        rows.append(caption(strip([pic, *protos]), f"channel {e.channel}: {e.contribution:+.3f} "
                                                    f"(W={e.weight:.3f} x v={e.value:+.3f})"))
    truth = f", true class {expl.class_names[expl.label]}" if expl.label is not None else ""
    title = f"{expl.target_name}: logit {expl.logit:.3f}{truth}" + (" (negative evidence)" if negative else "")
    cover = expl.coverage([e.channel for e in chosen]).sentence() if chosen else "no channel on this side"
    return caption(caption(stack([_header(expl, size), *rows]), cover), title)


def _header(expl: Explanation, size: int) -> Image.Image:
    """The input as the model saw it, with the top classes and what the rows below carry written beside it."""
    top = expl.top5
    lines = ["top classes:"] + [f"  {r['name']}: p={r['probability']:.3f}, logit {r['logit']:.2f}"
                                for _, r in top.head(3).iterrows()]
    out = Image.new("RGB", (size + 8 + 7 * max(len(t) for t in lines), size), (255, 255, 255))
    out.paste(expl.view.resize((size, size)), (0, 0))
    draw = ImageDraw.Draw(out)
    for j, text in enumerate(lines):
        draw.text((size + 8, 4 + 14 * j), text, fill=(0, 0, 0))
    return out


def _strongest(expl: Explanation, n: int) -> tuple[pd.DataFrame, pd.DataFrame, set[int], float, int]:
    """The ``n`` strongest positive rows of ``expl.table()`` (strongest first) and ``n`` strongest negative ones
    (weakest first), the channels they hold, and the sum and count of the other non-zero contributions."""
    t = expl.table()
    pos, neg = t[t["contribution"] > 0].head(n), t[t["contribution"] < 0].tail(n)
    shown = set(pos["channel"]) | set(neg["channel"])
    rest = t.loc[~t["channel"].isin(shown), "contribution"]
    return pos, neg, shown, float(rest.sum()), int((rest != 0).sum())


def contributions_figure(expl: Explanation, n: int = 10) -> go.Figure:
    """The logit of the explained class as bars: top positive and negative channels, the rest, the bias.

    Args:
        expl: a one-image explanation.
        n: how many channels of each sign get their own bar. Default 10."""
    pos, neg, shown, rest, others = _strongest(expl, n)
    labels = [f"ch {c}" for c in pos["channel"]] + ([f"{others} others"] if others else []) \
        + [f"ch {c}" for c in neg["channel"]]
    values = list(pos["contribution"]) + ([rest] if others else []) + list(neg["contribution"])
    if expl.bias is not None:
        labels.append("bias")
        values.append(expl.target_bias)
    fig = go.Figure(go.Bar(
        x=values, y=labels, orientation="h",
        marker_color=[POSITIVE if v >= 0 else NEGATIVE for v in values],
        hovertemplate="%{y}: %{x:.4f}<extra></extra>",
    ))
    cover = expl.coverage(sorted(shown))
    fig.update_layout(
        title={"text": f"{expl.target_name}: logit {expl.logit:.3f}"
                       f"<br><sup>the sum of the bars; the {len(shown)} channels shown carry {100 * cover.share:.1f}% "
                       f"of the evidence" + (f"; {cover.others} others: {cover.rest:+.3f}" if cover.others
                                             else "; no other channel") + "</sup>"},
        yaxis={"autorange": "reversed"}, xaxis_title="contribution W[c,d]·v_d", height=max(300, 22 * len(values) + 120),
        margin={"l": 90, "r": 20, "t": 75, "b": 40},
    )
    return fig


def versus_figure(expl: Explanation, other: int, n: int = 10) -> go.Figure:
    """Why the explained class and not ``other``: the largest channel-wise differences both ways, each bar
    labelled with the channel's contribution to either class.

    Args:
        expl: a one-image explanation.
        other: the class compared with, by index.
        n: how many channels each way get a bar. Default 10."""
    t = expl.versus(other)
    top = t[t["difference"] > 0].head(n)  # channels that favour the explained class
    bottom = t[t["difference"] < 0].tail(n)[::-1]  # channels that favour the other
    rows = pd.concat([top, bottom])
    d = rows["difference"].to_numpy()
    labels = [f"ch {c}" for c in top["channel"]] + [f"ch {c} " for c in bottom["channel"]]
    a, b = expl.target_name, expl.class_names[other]
    text = [f"{x + 0.0:+.2f} vs {y + 0.0:+.2f}"  # + 0.0: no "-0.00" for a zero weight times a negative v
            for x, y in zip(rows["contribution_target"], rows["contribution_other"])]
    fig = go.Figure(go.Bar(
        x=d, y=labels, orientation="h", marker_color=[POSITIVE if v >= 0 else NEGATIVE for v in d],
        text=text, textposition="auto", customdata=np.stack([rows["channel"], rows["contribution_target"],
                                                             rows["contribution_other"]], 1) if len(rows) else None,
        hovertemplate=f"channel %{{customdata[0]}}: %{{customdata[1]:+.3f}} for {a}, %{{customdata[2]:+.3f}} "
                      f"for {b}<extra></extra>",
    ))
    shown = set(top["channel"]) | set(bottom["channel"])
    mass = t["difference"].abs()
    share = float(mass[t["channel"].isin(shown)].sum() / mass.sum()) if mass.sum() > 0 else 1.0
    gap = float(expl.logits[0, expl.target] - expl.logits[0, other])
    fig.update_layout(
        title={"text": f"{a} vs {b}: logit gap {gap:+.3f}, channel by channel"
                       f"<br><sup>bars: contribution to {a} minus to {b}; labels: to {a} vs to {b}"
                       f"<br>the {len(shown)} shown carry {100 * share:.1f}% of the difference "
                       f"({int((mass > 0).sum())} channels differ)</sup>"},
        yaxis={"autorange": "reversed"}, height=max(300, 22 * len(d) + 135), margin={"l": 90, "r": 20, "t": 90, "b": 40},
        xaxis_title=f"contribution to {a} - contribution to {b}",
    )
    return fig


def waterfall_figure(expl: Explanation, n: int = 8) -> go.Figure:
    """The explained class's logit built up channel by channel: the ``n`` strongest positive contributions,
    the rest in one step, the ``n`` strongest negative ones and the bias, ending on the logit itself.
    Each channel's step carries its number in ``customdata`` (for clicks).

    Args:
        expl: a one-image explanation.
        n: how many channels of each sign get their own step. Default 8."""
    pos, neg, shown, rest, others = _strongest(expl, n)
    neg = neg[::-1]  # the strongest first
    labels = [f"ch {c}" for c in pos["channel"]] + ([f"{others} others"] if others else []) \
        + [f"ch {c}" for c in neg["channel"]]
    values = list(pos["contribution"]) + ([rest] if others else []) + list(neg["contribution"])
    channels = list(pos["channel"]) + ([-1] if others else []) + list(neg["channel"])
    if expl.bias is not None:
        labels.append("bias")
        values.append(expl.target_bias)
        channels.append(-1)
    labels.append("logit")
    values.append(expl.logit)
    channels.append(-1)
    cover = expl.coverage(sorted(shown))
    fig = go.Figure(go.Waterfall(
        orientation="h", y=labels, x=values, measure=["relative"] * (len(values) - 1) + ["total"],
        customdata=channels, increasing={"marker": {"color": POSITIVE}}, decreasing={"marker": {"color": NEGATIVE}},
        totals={"marker": {"color": "#455a64"}}, connector={"line": {"color": "#b0bec5", "width": 1}},
        hovertemplate="%{y}: %{x:+.4f}<extra></extra>",
    ))
    fig.update_layout(
        title={"text": f"why {expl.target_name}: logit {expl.logit:.3f}"
                       f"<br><sup>{len(shown)} channels carry {100 * cover.share:.1f}% of the evidence"
                       + (f"; {cover.others} others: {cover.rest:+.3f}" if cover.others else "; no other channel")
                       + "</sup>"},
        yaxis={"autorange": "reversed"}, xaxis_title="logit, built up from W[c,d]·v_d",
        height=max(300, 22 * len(values) + 110), margin={"l": 90, "r": 20, "t": 70, "b": 40}, showlegend=False,
    )
    return fig


def classes_figure(classes: pd.DataFrame, channel: int, n: int = 10) -> go.Figure:
    """The classes that weigh a channel (``explain_channel(...).classes``), heaviest first.

    Args:
        classes: the table, with columns ``class``, ``name`` and ``weight``, heaviest first.
        channel: the channel, for the title.
        n: how many classes get a bar. Default 10."""
    top = classes.head(n)
    fig = go.Figure(go.Bar(x=top["weight"], y=[str(x) for x in top["name"]], orientation="h",
                           marker_color=POSITIVE, customdata=top["class"],
                           hovertemplate="%{y} (class %{customdata}): W=%{x:.4f}<extra></extra>"))
    more = f"; {len(classes) - len(top)} more" if len(classes) > len(top) else ""
    fig.update_layout(
        title={"text": f"classes that weigh channel {channel}<br><sup>{len(classes)} use it{more}</sup>"},
        yaxis={"autorange": "reversed"}, xaxis_title="weight W[c,d]",
        height=max(260, 24 * len(top) + 110), margin={"l": 120, "r": 20, "t": 60, "b": 40},
    )
    return fig


def value_histogram(values: np.ndarray, channel: int, marks: dict[str, np.ndarray] | None = None,
                    bins: int = 40) -> go.Figure:
    """The distribution of a channel's pooled value ``v_d`` over a split, with ``marks`` (e.g. the images
    of the shown prototypes: ``{"positive prototypes": values, "negative prototypes": values}``).

    Args:
        values: the channel's pooled value on each image; non-finite ones are left out.
        channel: the channel, for the title.
        marks: values to mark under the histogram, by legend name. Default None: none.
        bins: the histogram's bins. Default 40."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    fig = go.Figure(go.Histogram(x=values, nbinsx=bins, marker_color="#90a4ae", name="all images",
                                 hovertemplate="v in %{x}: %{y} images<extra></extra>"))
    colors = {0: POSITIVE, 1: NEGATIVE}
    for j, (name, xs) in enumerate((marks or {}).items()):
        xs = np.asarray(xs, np.float64)
        fig.add_trace(go.Scatter(x=xs, y=np.zeros(len(xs)), mode="markers", name=name,
                                 marker={"symbol": "triangle-up", "size": 11, "color": colors.get(j, "#1565c0")},
                                 hovertemplate="v=%{x:.3f}<extra>" + name + "</extra>"))
    fig.update_layout(
        title={"text": f"channel {channel}'s pooled value over {len(values)} images"},
        xaxis_title="v_d (its strongest response; negative where the negative side won)", yaxis_title="images",
        height=260, margin={"l": 50, "r": 20, "t": 40, "b": 45}, bargap=0.05,
        legend={"orientation": "h", "y": -0.35},
    )
    return fig


def history_figure(history: pd.DataFrame) -> go.Figure:
    """Loss and top-1 per epoch of a training (``history.csv`` or a monitor's rows).

    Args:
        history: rows with ``epoch`` and any of ``train_loss``, ``test_loss``, ``train_top1``, ``test_top1``."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "top-1"))
    for col, (metric, train_color, test_color) in enumerate((("loss", "#1565c0", "#ef6c00"),
                                                              ("top1", "#1565c0", "#ef6c00")), 1):
        for split, color in (("train", train_color), ("test", test_color)):
            name = f"{split}_{metric}"
            x = history["epoch"].tolist() if name in history else []
            y = history[name].tolist() if name in history else []
            keep = [(a, b) for a, b in zip(x, y) if b == b]  # no NaN (test is evaluated every few epochs)
            fig.add_trace(go.Scatter(x=[a for a, _ in keep], y=[b for _, b in keep], name=split,
                                     mode="lines+markers" if len(keep) <= 30 else "lines", line_color=color,
                                     showlegend=col == 1), 1, col)
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    fig.update_layout(height=300, margin={"l": 50, "r": 20, "t": 40, "b": 45})
    return fig


def faithfulness_figure(faith: Faithfulness) -> go.Figure:
    """Removal curves (``run.metrics.explanations.faithfulness``): top-k vs random channels.

    Args:
        faith: the faithfulness metrics, whose ``curves`` are drawn."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("drop of the predicted logit", "top-1 accuracy"))
    curves = faith.curves
    k = curves["k"].tolist()
    for col, (a, b) in enumerate((("logit_drop_top", "logit_drop_random"), ("accuracy_top", "accuracy_random")), 1):
        fig.add_trace(go.Scatter(x=k, y=curves[a].tolist(), name="remove the k top contributors",
                                 mode="lines+markers", line_color=NEGATIVE, showlegend=col == 1), 1, col)
        fig.add_trace(go.Scatter(x=k, y=curves[b].tolist(), name="remove k random", mode="lines+markers",
                                 line_color="#616161", showlegend=col == 1), 1, col)
        fig.update_xaxes(title_text="channels removed (k)", row=1, col=col)
    fig.update_layout(height=340, margin={"l": 50, "r": 20, "t": 50, "b": 50})
    return fig


def frontier_figure(points: Sequence[FrontierPoint], probe: Accuracy | None = None,
                    chosen: int | None = None,
                    peers: Mapping[str, Sequence[tuple[float, float]]] | None = None) -> go.Figure:
    """The accuracy-readability frontier (``run.metrics.frontier``): test top-1 against K, and, once
    ``evaluate --explanations`` scored the heads, purity and consistency against K.

    Args:
        points: the kept heads; the dense one is drawn as a line across (and a point at the right edge).
        probe: the linear probe's accuracy, drawn as a dotted line. Default None: not drawn.
        chosen: the K the run's rule chose, before any escalation; the head shown is ringed. Default None:
            not marked.
        peers: other sparse layers' test top-1, by name: (weights per class, top-1) pairs drawn beside the
            compact heads, e.g. glm-saga's (``benchmarks/peers.py``). Default None: none.
    """
    from plotly.subplots import make_subplots

    compact = sorted((p for p in points if p.channels_per_class is not None), key=lambda p: p.channels_per_class)
    dense = next((p for p in points if p.channels_per_class is None), None)
    readable = any(p.purity is not None for p in compact)
    fig = make_subplots(rows=1, cols=2 if readable else 1, subplot_titles=(
        "test top-1", "readability: purity and consistency")[:2 if readable else 1])
    ks = [p.channels_per_class for p in compact]
    hover = [f"K={p.channels_per_class}: top-1 {p.test.top1:.3f}, {p.local_size:.1f} channels per decision, "
             f"{p.global_size} in all" for p in compact]
    fig.add_trace(go.Scatter(x=ks, y=[p.test.top1 for p in compact], mode="lines+markers", name="compact heads",
                             line_color="#1565c0", hovertext=hover, hoverinfo="text"), 1, 1)
    for (name, curve), color in zip((peers or {}).items(), itertools.cycle(("#c62828", "#00838f", "#6d4c41"))):
        curve = sorted(curve)
        fig.add_trace(go.Scatter(x=[a for a, _ in curve], y=[b for _, b in curve], mode="lines+markers", name=name,
                                 line={"color": color}, marker={"symbol": "square"},
                                 hovertext=[f"{name}: {a:.1f} weights per class, top-1 {b:.3f}" for a, b in curve],
                                 hoverinfo="text"), 1, 1)
    for y, name, dash in ((dense.test.top1 if dense else None, "dense head", "dash"),
                          (probe.top1 if probe else None, "linear probe", "dot")):
        if y is not None:
            fig.add_trace(go.Scatter(x=[min(ks, default=1), max(ks, default=1)], y=[y, y], mode="lines", name=name,
                                     line={"color": "#616161", "dash": dash}), 1, 1)
    marks = [(p, "the rule's K", "star", 15) for p in compact if p.channels_per_class == chosen]
    marks += [(p, "shown", "circle-open", 20) for p in compact if p.shown]
    for p, name, symbol, size in marks:
        fig.add_trace(go.Scatter(x=[p.channels_per_class], y=[p.test.top1], mode="markers", name=name,
                                 marker={"symbol": symbol, "size": size, "color": "#ef6c00",
                                         "line": {"width": 2, "color": "#ef6c00"}}), 1, 1)
    if readable:
        for attr, color in (("purity", "#2e7d32"), ("consistency", "#6a1b9a")):
            got = [(p.channels_per_class, getattr(p, attr)) for p in compact if getattr(p, attr) is not None]
            if got:
                fig.add_trace(go.Scatter(x=[a for a, _ in got], y=[b for _, b in got], mode="lines+markers",
                                         name=attr, line_color=color), 1, 2)
                ref = getattr(dense, attr) if dense is not None else None
                if ref is not None:
                    fig.add_trace(go.Scatter(x=[min(ks), max(ks)], y=[ref, ref], mode="lines", name=f"{attr}, dense",
                                             line={"color": color, "dash": "dash"}), 1, 2)
    fig.update_xaxes(type="log", title_text="channels per class (K)", tickvals=ks, ticktext=[str(k) for k in ks])
    fig.update_layout(height=340, margin={"l": 50, "r": 20, "t": 50, "b": 50})
    return fig


def to_data_uri(img: Image.Image, fmt: str = "JPEG", quality: int = 88) -> str:
    """A PIL image as a ``data:`` URI (for self-contained HTML).

    Args:
        img: the picture; converted to RGB.
        fmt: the PIL format it is encoded in. Default ``"JPEG"``.
        quality: the JPEG quality, 1 to 95. Default 88."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=fmt, quality=quality)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


__all__ = [
    "caption", "classes_figure", "colormap", "contributions_figure", "draw_box", "evidence_image",
    "faithfulness_figure", "history_figure", "overlay", "patch_image", "stack", "strip", "to_data_uri",
    "value_histogram", "versus_figure", "waterfall_figure",
]
