"""A self-contained HTML report of a run (``infodisent report RUN_DIR``).

Metrics, per-class prototype galleries and sample explanations of test
images, in one file: images are embedded as data URIs and plotly.js inline,
so the report opens in any browser, offline, without Jupyter.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import plots
from .explain import explain, explain_class
from .io import atomic_write_text, read_json
from .model import InfoDisent, load
from .prototypes import PrototypeIndex, StaleIndexError
from .runs import METRICS, mine_run, run_dataset

REPORT = "report.html"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#212121}
h1{margin-bottom:4px} h2{border-bottom:2px solid #e0e0e0;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;font-size:14px} td,th{border:1px solid #e0e0e0;padding:4px 8px;text-align:right}
th{background:#fafafa} .muted{color:#757575;font-size:13px} .card{margin:14px 0;padding:10px;border:1px solid #eee;border-radius:6px}
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
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def _metrics_section(metrics: dict[str, Any], fig: _Figures) -> str:
    acc, top5 = metrics["accuracy"], metrics["top5"]
    head = pd.DataFrame(
        {"top-1": [acc["infodisent"], acc.get("linear_probe")], "top-5": [top5["infodisent"], top5.get("linear_probe")]},
        index=["InfoDisent", "linear probe (black box)"],
    )
    parts = [f"<h2>Metrics</h2><p class='muted'>{metrics['dataset']} test split, backbone "
             f"<code>{html.escape(metrics['backbone'])}</code> ({html.escape(str(metrics['weights']))})</p>",
             head.to_html(float_format=lambda v: f"{v:.4f}", na_rep="–")]
    ex = metrics.get("explanations")
    if ex:
        flat = {k: v for k, v in _flat({k: v for k, v in ex.items() if k != "faithfulness"}).items()
                if not isinstance(v, str)}
        flat["faithfulness.area_logit"] = ex["faithfulness"]["area_logit"]
        flat["faithfulness.area_accuracy"] = ex["faithfulness"]["area_accuracy"]
        table = pd.DataFrame({"value": list(flat.values())}, index=list(flat.keys()))
        parts.append("<h3>Explanation metrics</h3>" + table.to_html(float_format=lambda v: f"{v:.4g}"))
        parts.append(fig(plots.faithfulness_figure(ex["faithfulness"])))
    else:
        parts.append("<p class='muted'>No explanation metrics yet: run <code>infodisent evaluate RUN_DIR "
                     "--explanations</code> and rebuild the report.</p>")
    return "\n".join(parts)


def _class_section(model: InfoDisent, index: PrototypeIndex, classes: list[int], channels: int, prototypes: int) -> str:
    parts = ["<h2>Classes and their prototypes</h2><p class='muted'>For each class, its heaviest channels "
             "(weight W[c,d], share of the class's total weight), each shown by its top training patches "
             "(box = grid cell of the strongest response).</p>"]
    for c in classes:
        ce = explain_class(model, c, index, top=channels, prototypes=prototypes)
        rows = []
        for _, r in ce.channels.head(channels).iterrows():
            patches = ce.prototypes.get(int(r["channel"]), ())
            pics = plots.strip([plots.patch_image(p, "box", 112) for p in patches]) if patches else None
            rows.append(f"<div><b>channel {int(r['channel'])}</b> <span class='muted'>W={r['weight']:.3f}, "
                        f"{100 * r['share']:.1f}% of the class's weight</span><br>"
                        + (_img(pics, f"prototypes of channel {int(r['channel'])}") if pics else "") + "</div>")
        parts.append(f"<div class='card'><h3>{html.escape(ce.name)}</h3>"
                     f"<p class='muted'>{len(ce.channels)} channels with W &gt; 1e-3</p>{''.join(rows)}</div>")
    return "\n".join(parts)


def _samples_section(model, index, run_dir: Path, n: int, fig: _Figures, seed: int) -> str:
    ds = run_dataset(run_dir, split="test")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(ds), size=min(n, len(ds)), replace=False).tolist())
    parts = ["<h2>Sample explanations (test images)</h2><p class='muted'>Each decision as the sum of channel "
             "contributions; the strongest channels with their heatmap on the image and their prototypes.</p>"]
    for i in chosen:
        e = explain(model, ds.load_image(i), index=index, top=4, prototypes=4)
        truth = ds.classes[int(ds.labels[i])]
        verdict = "correct" if e.predicted == int(ds.labels[i]) else f"wrong (true class: {html.escape(truth)})"
        parts.append(
            f"<div class='card'><h3>test image {i}: predicted {html.escape(e.predicted_name)} — {verdict}</h3>"
            f"<div class='row'><div>{_img(plots.evidence_image(e, n=3, size=128), 'evidence')}</div>"
            f"<div style='flex:1;min-width:380px'>{fig(plots.contributions_figure(e))}</div></div></div>"
        )
    return "\n".join(parts)


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    classes: list[int] | None = None,
    max_classes: int = 20,
    channels: int = 3,
    prototypes: int = 5,
    samples: int = 6,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Write the report (default ``<run_dir>/report.html``); mines the training split first if needed."""
    run_dir = Path(run_dir)
    model = load(run_dir, device=device)
    try:
        index = PrototypeIndex.load(run_dir, "train")
    except (FileNotFoundError, StaleIndexError):
        index = mine_run(run_dir, split="train", device=device, progress=progress, model=model)
    metrics = read_json(run_dir / METRICS) if (run_dir / METRICS).is_file() else None
    config = read_json(run_dir / "config.json")
    fig = _Figures()
    classes = classes if classes is not None else list(range(min(max_classes, model.head.config.num_classes)))
    body = [
        f"<h1>InfoDisent report</h1><p class='muted'>{html.escape(str(run_dir))} · "
        f"{model.head.config.num_classes} classes · {model.head.config.num_features} channels · "
        f"head <code>{html.escape(json.dumps(config['head']))}</code></p>",
        _metrics_section(metrics, fig) if metrics else "<p>No metrics.json in this run.</p>",
        _samples_section(model, index, run_dir, samples, fig, seed) if samples else "",
        _class_section(model, index, classes, channels, prototypes),
    ]
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>InfoDisent report: {html.escape(run_dir.name)}"
           f"</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
    out = Path(out) if out is not None else run_dir / REPORT
    atomic_write_text(out, doc)
    return out


__all__ = ["REPORT", "write_report"]
