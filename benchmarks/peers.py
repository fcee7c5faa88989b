"""InfoDisent beside its peers, on the same frozen features. Run:
``python benchmarks/peers.py --run RUN [--ks 3 5 8 16] [--out DIR]``.

The sparse-layer peer: glm-saga's elastic-net path (Wong, Santurkar and Madry, ICML 2021;
:mod:`infodisent.train.glm`) on the run's globally average-pooled training features, with the settings of
the paper's code, against the run's frontier (``metrics.json["frontier"]``: a compact head per K, each
refit on every training image). For each K the peer's point is the densest one on its path with at most K
non-zero weights per class on average, so it reads no more of the backbone than the compact head does
(which keeps exactly K channels per class). glm-saga's method ends there; the table adds that point's
support refit without the elastic net's shrinkage (:func:`~infodisent.train.glm.refit_support`, at the
linear probe's chosen L2 penalty), the analogue of the compact head's last fine-tune. All are scored on
the run's test split. Where the dataset has CUB keypoints, the channels each peer layer keeps (the
backbone's own, U = I) are scored with the compact heads' part metrics (purity and consistency on the
test split's prototypes), beside the compact heads' own scores once ``evaluate --explanations`` ran.

Writes ``DIR/peers-sparse.json`` (the table, and the peer's path from one weight per class up),
``DIR/frontier-peers.html`` (the frontier figure with the peer's curves) and, where Chromium is
installed, ``DIR/frontier-peers.png`` (that figure, drawn by Playwright). DIR defaults to ``RUN/peers``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

import infodisent
from infodisent.core.head import HeadConfig, InfoDisentHead
from infodisent.core.model import InfoDisent
from infodisent.data.sources import CachedSource
from infodisent.eval.part_metrics import cub_part_metrics
from infodisent.explain.prototypes import mine_prototypes
from infodisent.io import atomic_path
from infodisent.pipeline import pooled_features
from infodisent.train.glm import elastic_net_path, refit_support, sparse_layer_at
from infodisent.viz.plots import frontier_figure


def pooled(run, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's cached ``split`` features, globally average-pooled (the first, unaugmented view)."""
    return pooled_features(CachedSource(run.features(split, progress=True), 512, view=0))


def backbone_channels_index(run, progress: bool = True):
    """The test split's prototypes of the backbone's own channels (U = I, the channels a sparse layer on
    pooled features reads), mined from the run's feature cache. Which channels a layer keeps does not
    change them, so one index serves every point of the path."""
    d, c = run.config.backbone.num_features, run.config.num_classes
    identity = InfoDisent(run.model.backbone, InfoDisentHead(HeadConfig(d, c, rotation=False)), list(run.class_names))
    return mine_prototypes(identity, run.dataset("test"), features=run.features("test"), progress=progress)


def kept_channels_readability(run, index, weight: torch.Tensor) -> tuple[float, float]:
    """Purity and consistency of the channels a sparse layer keeps (any non-zero weight), with the compact
    heads' own part metrics; a class relies on a channel by the size of its weight, either sign."""
    scores = cub_part_metrics(index, run.dataset("test"), weight.abs().numpy(), run.model.transform, threshold=0.0)
    return scores.purity, scores.consistency


def sparse_layer_peer(run, ks: list[int], progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """glm-saga's path on ``run``'s pooled features, against its compact heads at each of ``ks``.

    Args:
        run: a trained run whose frontier was kept.
        ks: the numbers of channels (weights) per class compared.
        progress: progress bars (default True).
    """
    (xtr, ytr), (xte, yte) = pooled(run, "train"), pooled(run, "test")
    l2 = run.metrics.probe.l2 if run.metrics.probe is not None else 1e-4

    def top1(layer) -> float:
        return float((layer.logits(xte).argmax(1) == yte).float().mean())

    start = time.perf_counter()
    path = elastic_net_path(xtr, ytr, run.config.num_classes, max_per_class=max(ks), progress=progress)
    seconds = time.perf_counter() - start
    kept = {p.channels_per_class: p for p in run.metrics.frontier}
    parts = getattr(run.dataset("test"), "part_locs", None) is not None  # CUB keypoints
    index = backbone_channels_index(run, progress) if parts else None
    rows = []
    for k in ks:
        layer = sparse_layer_at(path, k)
        refit = refit_support(layer, xtr, ytr, l2=l2) if layer else None
        head = kept.get(k)
        purity, consistency = kept_channels_readability(run, index, layer.weight) if parts and layer else (None, None)
        rows.append({
            "K": k,
            "infodisent_top1": head.test.top1 if head is not None else None,
            "infodisent_local_size": head.local_size if head is not None else None,
            "infodisent_purity": head.purity if head is not None else None,
            "infodisent_consistency": head.consistency if head is not None else None,
            "glm_saga_weights_per_class": layer.per_class if layer else None,
            "glm_saga_top1": top1(layer) if layer else None,
            "glm_saga_refit_top1": top1(refit) if refit else None,
            "glm_saga_train_top1": layer.train_top1 if layer else None,
            "glm_saga_lambda": layer.lam if layer else None,
            "glm_saga_converged": layer.converged if layer else None,
            "glm_saga_purity": purity,
            "glm_saga_consistency": consistency,
        })
    table = pd.DataFrame(rows)
    table.attrs["path_seconds"] = seconds
    table.attrs["path_points"] = len(path)
    table.attrs["refit_l2"] = l2
    curves = {"glm-saga sparse layer": [(p.per_class, top1(p)) for p in path if 1 <= p.per_class <= max(ks)],
              "glm-saga support, refit": [(r["glm_saga_weights_per_class"], r["glm_saga_refit_top1"]) for r in rows
                                          if r["glm_saga_refit_top1"] is not None]}
    return table, curves


def screenshot(html: Path, png: Path) -> bool:
    """Draw ``html`` to ``png`` with Playwright's Chromium (the browser tests' own); False where there is none."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return False
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 900, "height": 380})
        page.goto(html.resolve().as_uri())
        page.wait_for_selector(".main-svg")
        with atomic_path(png) as tmp:
            page.locator(".plotly").first.screenshot(path=str(tmp), type="png")
        browser.close()
    return True


def draw(run, record: dict, out: Path) -> list[Path]:
    """The run's frontier with the peer's curves (``record["curves"]``), as HTML and, where Chromium is
    installed, PNG; returns the files written."""
    sel = run.metrics.sparse.selection if run.metrics.sparse is not None else None
    fig = frontier_figure(run.metrics.frontier, run.metrics.linear_probe, sel.rule_choice if sel else None,
                          peers={name: [tuple(p) for p in curve] for name, curve in record["curves"].items()})
    fig.update_layout(width=880, height=380, margin={"t": 80},
                      title=f"{record['backbone']}, {record['classes']} classes: InfoDisent's compact heads "
                            "beside glm-saga's sparse layer")
    html, png = out / "frontier-peers.html", out / "frontier-peers.png"
    with atomic_path(html) as tmp:
        fig.write_html(str(tmp), include_plotlyjs=True)
    return [html, png] if screenshot(html, png) else [html]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a trained run directory that kept its frontier")
    ap.add_argument("--ks", type=int, nargs="+", default=None,
                    help="channels per class compared (default: the run's kept K)")
    ap.add_argument("--out", default=None, help="where the table and figure go (default RUN/peers)")
    ap.add_argument("--redraw", action="store_true", help="draw the figure again from OUT/peers-sparse.json")
    a = ap.parse_args()
    run = infodisent.open_run(a.run)
    out = Path(a.out) if a.out else Path(a.run) / "peers"
    if a.redraw:
        print("written:", ", ".join(map(str, draw(run, json.loads((out / "peers-sparse.json").read_text()), out))))
        return
    ks = a.ks or sorted(p.channels_per_class for p in run.metrics.frontier if p.channels_per_class is not None)
    if not ks:
        raise SystemExit(f"{a.run} keeps no compact head: give --ks, or train it with pruning")
    out.mkdir(parents=True, exist_ok=True)
    table, curves = sparse_layer_peer(run, ks)
    record = {"run": str(a.run), "backbone": run.config.backbone.name, "classes": run.config.num_classes,
              "path_seconds": table.attrs["path_seconds"], "path_points": table.attrs["path_points"],
              "refit_l2": table.attrs["refit_l2"],
              "dense_top1": next((p.test.top1 for p in run.metrics.frontier if p.channels_per_class is None), None),
              "probe_top1": run.metrics.linear_probe.top1 if run.metrics.linear_probe else None,
              "rows": table.to_dict(orient="records"), "curves": curves}
    with atomic_path(out / "peers-sparse.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    drawn = draw(run, record, out)
    print(f"glm-saga path: {record['path_points']} penalties in {record['path_seconds']:.0f} s")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("written:", ", ".join(map(str, [out / "peers-sparse.json", *drawn])))

if __name__ == "__main__":
    main()
