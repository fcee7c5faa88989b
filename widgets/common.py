"""What the three widgets share: image encoding, a message line, guarded callbacks, figure refresh, static views.

Nothing here computes or draws an explanation: numbers come from
:mod:`infodisent.explain.explanation` (and friends), pictures from :mod:`infodisent.viz.plots`.
"""

from __future__ import annotations

import functools
import html
import io
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import ipywidgets as W
import plotly.graph_objects as go
from PIL import Image
from plotly.graph_objs import FigureWidget  # noqa: F401 - imported here, once, not when a widget opens

from infodisent.viz.plots import NEGATIVE, POSITIVE
from infodisent.viz.sentences import budget

# one style for every widget: readable at 1280x800, positive evidence green, negative red (as in plots/report)
CSS = f"""
<style>
.idw-title {{ font-size: 15px; font-weight: 600; margin: 2px 0 4px 0; }}
.idw-note {{ font-size: 12px; color: #455a64; line-height: 1.35; }}
.idw-pos {{ color: {POSITIVE}; font-weight: 600; }}
.idw-neg {{ color: {NEGATIVE}; font-weight: 600; }}
.idw-msg-error {{ background: #ffebee; border-left: 4px solid {NEGATIVE}; padding: 4px 8px; font-size: 13px; }}
.idw-msg-info {{ background: #e3f2fd; border-left: 4px solid #1565c0; padding: 4px 8px; font-size: 13px; }}
.idw-table {{ border-collapse: collapse; font-size: 12px; }}
.idw-table td, .idw-table th {{ padding: 1px 6px; text-align: right; border-bottom: 1px solid #eceff1; }}
.idw-table th {{ color: #455a64; font-weight: 600; }}
.idw-table td:first-child, .idw-table th:first-child {{ text-align: left; }}
</style>
"""


def encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    """A PIL image as bytes for an ``ipywidgets.Image`` (JPEG for photos: fast and small).

    Args:
        img: the picture; converted to RGB for JPEG.
        fmt: the PIL format it is encoded in. Default ``"JPEG"`` (quality 90)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=fmt, quality=90) if fmt == "JPEG" else img.save(buf, format=fmt)
    return buf.getvalue()


def image(width: int, height: int | None = None) -> W.Image:
    """An empty image widget of a fixed size (so nothing jumps while pictures load).

    Args:
        width: its width in pixels.
        height: its height in pixels. Default None: ``width`` (a square)."""
    return W.Image(format="jpeg", layout=W.Layout(width=f"{width}px", height=f"{height or width}px",
                                                   object_fit="contain"))


def esc(x: Any) -> str:
    """``str(x)`` with HTML's special characters escaped.

    Args:
        x: any value."""
    return html.escape(str(x))


def table_html(rows: list[list[Any]], header: list[str]) -> str:
    """A small HTML table: the header escaped, the cells inserted as the HTML they are (e.g. :func:`signed`).

    Args:
        rows: the table's rows, each a list of cells.
        header: the column titles."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='idw-table'><tr>{head}</tr>{body}</table>"


def signed(x: float, digits: int = 3) -> str:
    """A contribution, coloured by its sign, as an HTML ``span``.

    Args:
        x: the contribution.
        digits: decimals shown, with the sign always written. Default 3."""
    cls = "idw-pos" if x > 0 else "idw-neg" if x < 0 else ""
    return f"<span class='{cls}'>{x:+.{digits}f}</span>"


def budget_banner(run) -> str:
    """A red line when the run's compact head missed its accuracy budget or none kept it (the dense head is
    shown instead); nothing otherwise, or when the run has no metrics to say.

    Args:
        run: an opened run."""
    try:
        sparse = run.metrics.sparse
    except Exception:  # noqa: BLE001 - a run without readable metrics: nothing to say
        return ""
    sel = sparse.selection if sparse is not None else None
    if sel is None or sel.within_tolerance:
        return ""
    return f"<div class='idw-msg-error'>{esc(budget(sel))}</div>"


def k_selector(run) -> W.Dropdown:
    """A dropdown over the heads a run keeps (its accuracy-readability frontier, :meth:`Run.with_k`), set to the
    head ``run`` shows; hidden when the run keeps no other head.

    Args:
        run: an opened run."""
    try:
        points = run.metrics.frontier
    except Exception:  # noqa: BLE001 - a run without readable metrics keeps no frontier we can offer
        points = []
    options = [(f"K={p.key}: top-1 {p.test.top1:.3f}, {p.local_size:.3g} channels per decision"
                + (" (shown)" if p.shown else ""), p.key) for p in points]
    current = run.head_key
    return W.Dropdown(options=options, value=current if any(v == current for _, v in options) else None,
                      description="head", tooltip="another head the run keeps: fewer channels per class read easier",
                      layout=W.Layout(width="470px", display=None if len(options) > 1 else "none"))


class Messages(W.HTML):
    """One line under a widget for errors and notes; a new message replaces the old one."""

    def __init__(self) -> None:
        super().__init__(value="")
        self.last: str = ""

    def error(self, text: str) -> None:
        """Show ``text`` as an error, replacing the message before it.

        Args:
            text: the message, plain text (escaped)."""
        self.last = text
        self.value = f"<div class='idw-msg-error'>{esc(text)}</div>"

    def info(self, text: str) -> None:
        """Show ``text`` as a note, replacing the message before it.

        Args:
            text: the message, plain text (escaped)."""
        self.last = text
        self.value = f"<div class='idw-msg-info'>{esc(text)}</div>"

    def clear(self) -> None:
        self.last, self.value = "", ""


def guarded(method: Callable) -> Callable:
    """Run a widget callback; an exception becomes a message in the widget (``self.messages``), which
    stays usable, instead of a traceback in the log where nobody sees it.

    Args:
        method: a method of a widget that has ``messages`` (a :class:`Messages`); the traceback of a failure
            is kept in its ``last_traceback``."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - shown to the user, the widget goes on
            self.messages.error(f"{type(e).__name__}: {e}")
            self.last_traceback = traceback.format_exc()
            return None

    return wrapper


def refresh(fw: go.FigureWidget, fig: go.Figure) -> None:
    """Show ``fig`` in the figure widget ``fw`` (one batched message; traces updated in place when they fit).

    Args:
        fw: the figure widget shown.
        fig: the figure whose traces and layout it takes."""
    with fw.batch_update():
        same = len(fw.data) == len(fig.data) and all(a.type == b.type for a, b in zip(fw.data, fig.data))
        if same:
            for a, b in zip(fw.data, fig.data):
                props = b.to_plotly_json()
                props.pop("type", None)
                a.update(props, overwrite=True)
        layout = fig.layout.to_plotly_json()
        layout.pop("template", None)  # the default template: validating it again costs more than the rest
        fw.layout.update(layout, overwrite=True)
    if not same:
        fw.data = ()
        fw.add_traces(list(fig.data))


def figure_widget(height: int = 300, width: int | None = None) -> go.FigureWidget:
    """An empty figure widget; a fixed ``width`` keeps it inside a column (plotly does not shrink to one).

    Args:
        height: its height in pixels. Default 300.
        width: its width in pixels. Default None: plotly's own."""
    layout = {"height": height, "margin": {"l": 40, "r": 10, "t": 30, "b": 30}}
    if width is not None:
        layout["width"] = width
    return go.FigureWidget(layout=layout)


@dataclass
class StaticView:
    """A widget's state as plain pictures (PIL images) and plotly figures, for places without a widget
    manager (a static HTML export, GitHub, nbviewer): ``display(view)`` shows them one after another.

    Args:
        title: the view's heading.
        images: pictures by caption. Default empty.
        figures: plotly figures by name. Default empty.
        notes: lines of text under the title. Default empty."""

    title: str
    images: dict[str, Image.Image] = field(default_factory=dict)
    figures: dict[str, go.Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def _ipython_display_(self) -> None:
        from IPython.display import HTML, display

        display(HTML(f"<h4>{esc(self.title)}</h4>" + "".join(f"<p>{esc(n)}</p>" for n in self.notes)))
        for name, img in self.images.items():
            display(HTML(f"<b>{esc(name)}</b>"))
            display(img)
        for fig in self.figures.values():
            display(fig)

    def to_html(self) -> str:
        """One self-contained HTML page (plotly.js loaded once, images inline)."""
        from infodisent.viz.plots import to_data_uri

        parts = [f"<h3>{esc(self.title)}</h3>", *(f"<p>{esc(n)}</p>" for n in self.notes)]
        parts += [f"<h4>{esc(k)}</h4><img src='{to_data_uri(v)}'>" for k, v in self.images.items()]
        for j, fig in enumerate(self.figures.values()):
            parts.append(fig.to_html(full_html=False, include_plotlyjs=(j == 0)))
        return "<html><body>" + "".join(parts) + "</body></html>"


__all__ = ["CSS", "Messages", "StaticView", "encode", "esc", "figure_widget", "guarded", "image", "refresh",
           "signed", "table_html"]
