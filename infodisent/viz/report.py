"""A self-contained HTML report of a run (``infodisent report RUN_DIR``).

Metrics, per-class prototype galleries and sample explanations of test
images, in one file: images are embedded as data URIs and plotly.js inline,
so the report opens in any browser, offline, without Jupyter.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ..core.model import InfoDisent
from ..data.datasets import ImageDataset
from ..explain.explanation import Explanation, explain_class
from ..explain.prototypes import PrototypeIndex, StaleIndexError
from ..explain.render import Renderer
from ..io import atomic_write_text
from ..records.results import RunMetrics, frontier_table, head_key
from ..records.run import RunRecord
from . import plots, sentences


class RunView(Protocol):
    """What the report reads of a run: :class:`infodisent.run.Run` is one (``open_run(path)``)."""

    path: Path
    config: RunRecord
    model: InfoDisent
    metrics: RunMetrics

    @property
    def files(self) -> Any: ...  # the run directory's file names (RunFiles)

    @property
    def head_files(self) -> Any: ...  # those of the head shown (a kept head's own folder)

    def renderer(self, split: str = "train") -> Renderer: ...

    def index(self, split: str = "train") -> PrototypeIndex: ...

    def mine(self, split: str = "train", **kwargs: Any) -> PrototypeIndex: ...

    def dataset(self, split: str = "test") -> ImageDataset: ...

    def explain(self, images: Any) -> list[Explanation]: ...

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#212121}
h1{margin-bottom:4px} h2{border-bottom:2px solid #e0e0e0;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;font-size:14px} td,th{border:1px solid #e0e0e0;padding:4px 8px;text-align:right}
th{background:#fafafa} .muted{color:#757575;font-size:13px} .warning{color:#b71c1c;font-weight:600} .card{margin:14px 0;padding:10px;border:1px solid #eee;border-radius:6px}
img{max-width:100%} .row{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start} code{background:#f5f5f5;padding:1px 4px}
"""


def _img(img, alt: str) -> str:
    return f'<img src="{plots.to_data_uri(img)}" alt="{html.escape(alt)}">'


class _Figures:
    """plotly divs; plotly.js is inlined with the first one only."""

    def __init__(self) -> None:
        self.first = True

    def __call__(self, fig) -> str:
        out = fig.to_html(full_html=False, include_plotlyjs=self.first, config={"displaylogo": False})
        self.first = False
        return out


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):  # None (not measured) is left out
            out[key] = v
    return out


def _metrics_section(metrics: RunMetrics, fig: _Figures) -> str:
    parts = [f"<h2>Metrics</h2><p class='muted'>{metrics.dataset} test split, backbone "
             f"<code>{html.escape(metrics.backbone)}</code> ({html.escape(str(metrics.weights))})</p>",
             metrics.table().to_html(float_format=lambda v: f"{v:.4f}", na_rep="–")]
    sel = metrics.sparse.selection if metrics.sparse is not None else None
    if metrics.sparse is not None:
        parts.append(f"<p>{html.escape(sentences.compactness_cost(metrics.sparse, metrics.infodisent))}.</p>")
    if sel is not None and sel.loss:  # how K was chosen, and, loudly, a missed accuracy budget or the fallback
        style = "" if sel.within_tolerance else " class='warning'"
        parts.append(f"<p{style}>{html.escape(sentences.budget(sel))}.</p>")
    if metrics.frontier:
        parts.append(_frontier_section(metrics, fig))
    if metrics.agreement is not None:
        parts.append(f"<p>{html.escape(sentences.agreement(metrics.agreement))}.</p>")
    if metrics.sanity is not None:
        parts.extend(f"<p>{html.escape(line)}.</p>" for line in sentences.sanity(metrics.sanity).split("\n"))
    ex = metrics.explanations
    if ex:
        d = ex.to_dict()
        flat = {k: v for k, v in _flat({k: v for k, v in d.items() if k != "faithfulness"}).items()
                if not isinstance(v, str)}
        flat["faithfulness.area_logit"] = ex.faithfulness.area_logit
        flat["faithfulness.area_accuracy"] = ex.faithfulness.area_accuracy
        table = pd.DataFrame({"value": list(flat.values())}, index=list(flat.keys()))
        parts.append("<h3>Explanation metrics</h3>" + table.to_html(float_format=lambda v: f"{v:.4g}"))
        parts.append(fig(plots.faithfulness_figure(ex.faithfulness)))
    else:
        parts.append("<p class='muted'>No explanation metrics yet: run <code>infodisent evaluate RUN_DIR "
                     "--explanations</code> and rebuild the report.</p>")
    return "\n".join(parts)


def _frontier_section(metrics: RunMetrics, fig: _Figures) -> str:
    """Every kept head: what each K costs in accuracy and buys in readability, and how to show another."""
    sel = metrics.sparse.selection if metrics.sparse is not None else None
    chosen = metrics.selected.chosen if metrics.selected is not None else (sel.channels_per_class if sel else None)
    rule = sel.rule_choice if sel is not None else chosen
    steps = sentences.frontier_steps(metrics.frontier)
    shown = next((p for p in metrics.frontier if p.shown), None)
    note = (f"<p class='warning'>Shown: K={shown.key}, selected after training (the rule chose "
            f"K={head_key(chosen)}).</p>" if metrics.selected is not None and shown else "")
    missing = "" if any(p.purity is not None for p in metrics.frontier) else (
        "<p class='muted'>Purity and consistency appear here once <code>infodisent evaluate RUN_DIR "
        "--explanations</code> has scored the heads.</p>")
    said = f"<p>{html.escape(steps)}.</p>" if steps else ""
    return (f"<h3>Accuracy and readability: every head the run keeps</h3>{note}{said}"
            + fig(plots.frontier_figure(metrics.frontier, metrics.linear_probe, rule))
            + frontier_table(metrics.frontier).to_html(float_format=lambda v: f"{v:.3f}", na_rep="–")
            + missing + "<p class='muted'>Show another: <code>infodisent select RUN_DIR --k K</code> "
            "(<code>run.with_k(K)</code> in Python).</p>")


def _class_section(run: RunView, classes: list[int], channels: int, prototypes: int) -> str:
    parts = ["<h2>Classes and their prototypes</h2><p class='muted'>For each class, its heaviest channels "
             "(weight W[c,d], share of the class's total weight), each shown by its top training patches "
             "(box = grid cell of the strongest response).</p>"]
    renderer = run.renderer("train")
    for c in classes:
        ce = explain_class(run.model, c, run.index("train"))
        rows = []
        shown = ce.channels.head(channels)
        for _, r in shown.iterrows():
            d = int(r["channel"])
            patches = renderer.prototypes(d, "pos", prototypes)
            pics = plots.strip([plots.patch_image(p, "box", 112) for p in patches]) if patches else None
            rows.append(f"<div><b>channel {d}</b> <span class='muted'>W={r['weight']:.3f}, "
                        f"{100 * r['share']:.1f}% of the class's weight</span><br>"
                        + (_img(pics, f"prototypes of channel {d}") if pics else "") + "</div>")
        summary = (f"{len(ce.channels)} channels with W &gt; 1e-3; the {len(shown)} shown carry "
                   f"{100 * shown['share'].sum():.1f}% of the class's weight")
        parts.append(f"<div class='card'><h3>{html.escape(ce.name)}</h3>"
                     f"<p class='muted'>{summary}</p>{''.join(rows)}</div>")
    return "\n".join(parts)


def _samples_section(run: RunView, n: int, fig: _Figures, seed: int) -> str:
    ds = run.dataset("test")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(ds), size=min(n, len(ds)), replace=False).tolist())
    parts = ["<h2>Sample explanations (test images)</h2><p class='muted'>Each decision as the sum of channel "
             "contributions; the strongest channels with their heatmap on the image and their prototypes.</p>"]
    renderer = run.renderer("train")
    explained = run.explain(chosen)
    rows = min(5, run.model.channels_per_class or 3)  # a compact head's whole decision, when it fits
    for j, i in enumerate(chosen):
        e = explained[j]
        truth = ds.classes[int(ds.labels[i])]
        verdict = "correct" if e.predicted == int(ds.labels[i]) else f"wrong (true class: {html.escape(truth)})"
        shown = [d.channel for d in e.evidence(rows) if d.contribution > 0]  # the rows of the evidence image
        parts.append(
            f"<div class='card'><h3>test image {i}: predicted {html.escape(e.predicted_name)} — {verdict}</h3>"
            f"<p><b>{html.escape(e.coverage(shown).sentence())}</b></p>"
            f"<div class='row'><div>{_img(plots.evidence_image(e, renderer, n=rows, size=128, prototypes=4), 'evidence')}"
            f"</div><div style='flex:1;min-width:380px'>{fig(plots.contributions_figure(e))}</div></div></div>"
        )
    return "\n".join(parts)


def write_report(
    run: RunView,
    out: str | Path | None = None,
    *,
    classes: list[int] | None = None,
    max_classes: int = 20,
    channels: int = 3,
    prototypes: int = 5,
    samples: int = 6,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write the report; mines the training split first if needed.

    Args:
        run: an opened run (``infodisent.open_run(path)``).
        out: the HTML file. Default None: ``report.html`` in the run directory (a kept head's own folder).
        classes: the classes whose prototypes are shown. Default None: the first ``max_classes``.
        max_classes: how many classes by default. Default 20.
        channels: heaviest channels shown per class. Default 3.
        prototypes: training patches shown per channel. Default 5.
        samples: test images explained. Default 6 (0: none).
        seed: draws the test images. Default 0.
        progress: show the mining's progress bar. Default True.
    Returns:
        The path written."""
    try:
        run.index("train")
    except (FileNotFoundError, StaleIndexError):
        run.mine("train", progress=progress)
    metrics = run.metrics if run.files.metrics.is_file() else None
    fig = _Figures()
    num_classes = run.config.model.num_classes
    classes = classes if classes is not None else list(range(min(max_classes, num_classes)))
    body = [
        f"<h1>InfoDisent report</h1><p class='muted'>{html.escape(str(run.path))} · "
        f"{num_classes} classes · {run.config.model.backbone.num_features} channels · "
        f"head <code>{html.escape(json.dumps(run.config.model.head.to_dict()))}</code></p>",
        _metrics_section(metrics, fig) if metrics else "<p>No metrics.json in this run.</p>",
        _samples_section(run, samples, fig, seed) if samples else "",
        _class_section(run, classes, channels, prototypes),
    ]
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>InfoDisent report: {html.escape(run.path.name)}"
           f"</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
    out = Path(out) if out is not None else run.head_files.report
    atomic_write_text(out, doc)
    return out


__all__ = ["write_report"]
