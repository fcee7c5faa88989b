"""Helpers for notebooks: one set-up line (with a static copy of every plotly figure, :func:`figure_png`, for
GitHub and nbviewer), and checks of trained numbers within stated tolerances.

Trained numbers differ between machines in their last bits (another CPU's kernels, another GPU), and
training carries those differences on; a notebook whose test compares them as strings passes only where
it was written. The tutorials therefore show trained numbers in cells whose output nbval does not
compare (tagged ``nbval-ignore-output``) and check them in the next cell by what they mean:

    >>> check("compact top-1", run.metrics.infodisent.top1, 0.78, within=0.03)
    ✓ compact top-1 within 0.03 of 0.78

The printed line says what was checked, never a measured value, so it is the same on every machine (nbval
compares it) and never contradicts the table above it; a value outside its tolerance raises
:class:`CheckFailed`, naming the value, so the cell fails. Exact identities get ``within`` at the
arithmetic's precision (``check("sum - logit", err, 0, within=1e-5)``); counts and names get none, and a
condition is checked against True (``check("W ≥ 0", bool((W >= 0).all()), True)`` prints ``✓ W ≥ 0``).
"""

from __future__ import annotations

import math
from typing import Any

from plotly.io.base_renderers import MimetypeRenderer

from ..errors import InfodisentError


class CheckFailed(InfodisentError, AssertionError):
    """A notebook number outside its stated tolerance."""


def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def check(what: str, value: Any, expected: Any, within: float = 0.0) -> None:
    """Check a notebook's number and print what was checked, not the number.

    Args:
        what: what the value is, as the printed line names it.
        value: the measured value.
        expected: the value it must have: a number, or anything compared with ``==`` (``True`` for a
            condition).
        within: the tolerance for numbers, ``|value - expected| <= within``. Default 0 (exact).

    Prints ``✓ what within W of E`` for a number within a tolerance, ``✓ what = E`` for an exact value
    and ``✓ what`` for a condition that holds; otherwise raises :class:`CheckFailed`, naming the value.
    """
    if isinstance(value, (int, float)) and isinstance(expected, (int, float)) and not isinstance(value, bool):
        ok = math.isfinite(value) and abs(value - expected) <= within + 1e-12
    else:
        ok = value == expected
    stated = f"within {_fmt(within)} of {_fmt(expected)}" if within else _fmt(expected)
    if not ok:
        raise CheckFailed(f"{what} is {_fmt(value)}, expected {stated}")
    if expected is True:
        print(f"✓ {what}")
    else:
        print(f"✓ {what} {stated}" if within else f"✓ {what} = {stated}")


def setup(threads: int | None = 2) -> None:
    """What every tutorial starts with: torch on ``threads`` threads (the 2-core machines they are tested
    on; None leaves torch's choice), pandas tables at 3 decimals, PIL images as JPEG only, and plotly figures
    as data (JupyterLab, VS Code; in Colab set ``plotly.io.renderers.default = "colab"``) with a static PNG of
    each beside it (:func:`figure_png`), which GitHub, nbviewer and HTML exports show where plotly's
    JavaScript does not run.

    Args:
        threads: torch's thread count; None leaves torch's choice. Default 2."""
    import pandas as pd
    import plotly.io as pio
    import torch
    from PIL import Image

    if threads is not None:
        torch.set_num_threads(threads)
    pd.set_option("display.precision", 3)
    pio.renderers[STATIC_RENDERER] = _StaticRenderer()
    pio.renderers.default = f"plotly_mimetype+{STATIC_RENDERER}"
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with every notebook kernel
        return
    shell = get_ipython()
    if shell is not None:  # pictures as JPEG only: smaller notebook files
        shell.display_formatter.formatters["image/png"].for_type(Image.Image, lambda img: None)


# ---------------------------------------------------------------------------------------------- static figures

STATIC_RENDERER = "infodisent_png"  # the plotly renderer setup() adds: a PNG beside the interactive figure


class _StaticRenderer(MimetypeRenderer):
    """A plotly renderer that adds ``image/png`` (from :func:`figure_png`) to a figure's output; a figure it
    cannot draw gets no PNG, never an error."""

    def to_mimebundle(self, fig_dict):
        import base64

        try:
            png = figure_png(fig_dict)
        except Exception:  # noqa: BLE001 - a static copy is a convenience; the interactive figure is the output
            return {}
        return {"image/png": base64.b64encode(png).decode()} if png else {}


def _values(v: Any):
    """A plotly data array (a list, or plotly's base64 typed array ``{"dtype", "bdata", "shape"}``) as numpy."""
    import base64

    import numpy as np

    if v is None:
        return None
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        return a.reshape([int(x) for x in str(shape).split(",")]) if shape else a
    a = np.asarray(v, dtype=object)
    try:
        return a.astype(np.float64)
    except (TypeError, ValueError):  # categories (bar labels)
        return a


def _plain(text: Any) -> str:
    """Plotly's HTML-ish text as plain lines."""
    import html
    import re

    if not text:
        return ""
    text = re.sub(r"<br\s*/?>", "\n", str(text))
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _color(c: Any, default: str = "#1565c0"):
    """A plotly colour (``#rrggbb``, a CSS name or ``rgb(r, g, b)``) in matplotlib's terms."""
    import re

    if c is None:
        return default
    if isinstance(c, str) and c.startswith("rgb"):
        parts = [float(x) for x in re.findall(r"[\d.]+", c)]
        return tuple(x / 255 for x in parts[:3]) + ((parts[3],) if len(parts) > 3 else ())
    return c


_SYMBOLS = {"triangle-up": "^", "triangle-down": "v", "square": "s", "diamond": "D", "x": "x", "cross": "P"}


def figure_png(fig: Any, dpi: int = 80) -> bytes | None:
    """A static PNG of a plotly figure (a ``go.Figure`` or its dict), drawn with matplotlib (a dependency of
    torchcam, so always there; no browser, no kaleido). It draws what the toolkit's figures use (bars,
    waterfalls, lines and markers, histograms; subplots side by side; titles, axis titles, reversed axes) and
    returns None for a figure with nothing it can draw.

    Args:
        fig: a plotly ``go.Figure`` or its dict.
        dpi: the resolution; the figure's size in pixels is its plotly width and height times ``dpi / 100``.
            Default 80."""
    import io

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    d = fig if isinstance(fig, dict) else fig.to_dict()
    layout, traces = d.get("layout", {}), d.get("data", [])
    drawable = [t for t in traces if t.get("type", "scatter") in ("bar", "waterfall", "scatter", "histogram")]
    if not drawable:
        return None
    # subplots: the axes the traces use, placed by their domains (one figure may have a grid of them)
    pairs = sorted({(t.get("xaxis", "x"), t.get("yaxis", "y")) for t in drawable},
                   key=lambda p: (int(p[0][1:] or 1), int(p[1][1:] or 1)))

    def domain(axis_id: str) -> tuple[float, float]:
        dom = layout.get(axis_id[0] + "axis" + axis_id[1:], {}).get("domain", [0, 1])
        return float(dom[0]), float(dom[1])

    cols = sorted({domain(x) for x, _ in pairs})
    rows = sorted({domain(y) for _, y in pairs}, reverse=True)
    width, height = float(layout.get("width") or 760), float(layout.get("height") or 420)
    title = _plain((layout.get("title") or {}).get("text"))
    out = Figure(figsize=(width / 100, (height + 14 * title.count("\n")) / 100), dpi=dpi, layout="constrained")
    grid = out.subplots(len(rows), len(cols), squeeze=False)
    axes = {p: grid[rows.index(domain(p[1]))][cols.index(domain(p[0]))] for p in pairs}
    for ax in grid.ravel():
        ax.set_visible(any(ax is a for a in axes.values()))
    legend = [t for t in drawable if t.get("name") and t.get("showlegend", True) is not False]
    show_legend = layout.get("showlegend", len(legend) > 1) and len(legend) > 1
    for t in drawable:
        ax = axes[(t.get("xaxis", "x"), t.get("yaxis", "y"))]
        kind = t.get("type", "scatter")
        x, y = _values(t.get("x")), _values(t.get("y"))
        label = t.get("name") if t in legend else None
        if kind in ("bar", "waterfall"):
            horizontal = t.get("orientation") == "h"
            cats, vals = (y, x) if horizontal else (x, y)
            cats = [str(c) for c in (cats if cats is not None else range(len(vals)))]
            vals = np.asarray(vals, np.float64)
            pos = np.arange(len(cats))
            if kind == "bar":
                marker = (t.get("marker") or {}).get("color")
                colors = [_color(c) for c in marker] if isinstance(marker, (list, tuple)) else _color(marker)
                start = np.zeros(len(vals))
            else:  # a waterfall: relative steps from the running sum, totals from zero
                measure = t.get("measure") or ["relative"] * len(vals)
                start, colors, total = np.zeros(len(vals)), [], 0.0
                pick = {k: _color(((t.get(k) or {}).get("marker") or {}).get("color"), default)
                        for k, default in (("increasing", "#2e7d32"), ("decreasing", "#c62828"),
                                           ("totals", "#455a64"))}
                for j, (m, v) in enumerate(zip(measure, vals)):
                    if m == "total":
                        start[j], vals[j] = 0.0, total
                        colors.append(pick["totals"])
                    else:
                        start[j] = total
                        total += v
                        colors.append(pick["increasing" if v >= 0 else "decreasing"])
            bars = (ax.barh if horizontal else ax.bar)(pos, vals, 0.7, start, color=colors, label=label)
            text = t.get("text")
            if isinstance(text, (list, tuple)) and len(text) == len(vals):
                ax.bar_label(bars, labels=[_plain(s) for s in text], fontsize=7, padding=2)
                ax.margins(**{"x" if horizontal else "y": 0.25})  # room for the labels beyond the bars
            (ax.set_yticks if horizontal else ax.set_xticks)(pos, cats, fontsize=8)
            (ax.axvline if horizontal else ax.axhline)(0, color="#9e9e9e", lw=0.8)
        elif kind == "histogram":
            ax.hist(np.asarray(x, np.float64), bins=int(t.get("nbinsx") or 30),
                    color=_color((t.get("marker") or {}).get("color"), "#90a4ae"), label=label)
        else:  # scatter
            mode = t.get("mode") or "lines+markers"
            marker = t.get("marker") or {}
            color = _color((t.get("line") or {}).get("color") or marker.get("color"))
            xs = np.arange(len(y)) if x is None else x
            ax.plot(xs, y, ("-" if "lines" in mode else "") + (_SYMBOLS.get(marker.get("symbol"), "o")
                                                              if "markers" in mode else ""),
                    color=color, ms=min(float(marker.get("size") or 5), 9), lw=1.5, label=label,
                    clip_on=False)
    for (xid, yid), ax in axes.items():
        xa = layout.get("xaxis" + xid[1:], {})
        ya = layout.get("yaxis" + yid[1:], {})
        ax.set_xlabel(_plain((xa.get("title") or {}).get("text")), fontsize=8)
        ax.set_ylabel(_plain((ya.get("title") or {}).get("text")), fontsize=8)
        ax.tick_params(labelsize=8)
        if ya.get("autorange") == "reversed":
            ax.invert_yaxis()
        if xa.get("autorange") == "reversed":
            ax.invert_xaxis()
        ax.grid(alpha=0.3)
    for note in layout.get("annotations") or []:  # make_subplots' titles: over the subplot below them
        if note.get("xref") == "paper" and note.get("yref") == "paper" and note.get("text"):
            for (xid, yid), ax in axes.items():
                x0, x1 = domain(xid)
                if x0 <= float(note.get("x", -1)) <= x1 and abs(domain(yid)[1] - float(note.get("y", -1))) < 0.05:
                    ax.set_title(_plain(note["text"]), fontsize=9)
    if title:
        out.suptitle(title, fontsize=9, x=0.01, ha="left")
    if show_legend:
        out.legend(loc="outside lower center", ncols=min(len(legend), 4), fontsize=8, frameon=False)
    buf = io.BytesIO()
    FigureCanvasAgg(out).print_png(buf)
    # 64 colours: a chart needs no more, and the notebook file stays small
    small = io.BytesIO()
    Image.open(buf).convert("RGB").quantize(64, method=Image.Quantize.MEDIANCUT).save(small, "PNG", optimize=True)
    return small.getvalue()


__all__ = ["CheckFailed", "check", "figure_png", "setup"]
