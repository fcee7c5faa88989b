"""InfoDisent beside its peers, on the same model and images. Run:
``python benchmarks/peers.py --run RUN [--ks 3 5 8] [--images 200] [--probes 20] [--out DIR]``, or
``python benchmarks/peers.py --dataset cub --root FOLDER [--work DIR]``, which first trains the default run
on that dataset (``infodisent train``, resumable, as long as that takes: docs/results/cub100.md) and
scores its heads' explanations (``infodisent evaluate --explanations``).

Two sides, each against the run's frontier (``metrics.json["frontier"]``: a compact head per K, and the
dense reference):

- **Attribution maps, judged by Quantus** (:mod:`infodisent.eval.field`): the shown head's decisions on
  ``--images`` test images (an equal share of every class, in class order) explained by InfoDisent's own
  map, Grad-CAM, Grad-CAM++ (torchcam), Saliency and Integrated Gradients (Captum); the same for the dense
  head, without Integrated Gradients (its 10 backward passes an image are the benchmark's largest cost).
  Localisation uses the CUB bounding boxes, or on ``parts`` the union of the two part masks.
- **The sparse-layer peer:** glm-saga's elastic-net path (Wong, Santurkar and Madry, ICML 2021;
  :mod:`infodisent.train.glm`) on the run's globally average-pooled training features, with the settings of
  the paper's code. For each K the peer's point is the densest one on its path with at most K non-zero
  weights per class on average, so it reads no more of the backbone than the compact head does (exactly K
  channels per class). glm-saga's method ends there; the table adds that point's support refit without
  the elastic net's shrinkage (:func:`~infodisent.train.glm.refit_support`, at the linear probe's L2
  penalty), the analogue of the compact head's last fine-tune. Where the dataset has part ground truth,
  the channels each peer layer keeps (the backbone's own, U = I) are scored with the compact heads' part
  metrics (purity, and on CUB consistency), beside the compact heads' own scores.

Writes to DIR (default ``RUN/peers``): ``peers.md`` (the page: settings, both tables, the prototype peers'
published numbers), ``peers-attribution.json``, ``peers-sparse.json``, ``frontier-peers.html`` and, where
Chromium is installed, ``frontier-peers.png``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import infodisent
from infodisent.core.head import InfoDisentHead
from infodisent.core.model import InfoDisent
from infodisent.data.sources import CachedSource
from infodisent.eval.field import FieldSettings, metric_table, object_masks, ranks, score_methods, spread_over_classes
from infodisent.eval.part_metrics import cub_part_metrics, has_parts, parts_purity
from infodisent.explain.interop import IG_STEPS, explain_methods
from infodisent.explain.prototypes import mine_prototypes
from infodisent.io import atomic_path
from infodisent.pipeline import pooled_features
from infodisent.records.model import HeadConfig
from infodisent.train.glm import elastic_net_path, refit_support, sparse_layer_at
from infodisent.viz.plots import frontier_figure


def pooled(run, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's cached ``split`` features, globally average-pooled (the first, unaugmented view)."""
    return pooled_features(CachedSource(run.features(split, progress=True), 512, view=0))


def backbone_channels_index(run, progress: bool = True):
    """The test split's prototypes of the backbone's own channels (U = I, the channels a sparse layer on
    pooled features reads), mined from the run's feature cache. Which channels a layer keeps does not
    change them, so one index serves every point of the path."""
    d, c = run.config.model.backbone.num_features, run.config.model.num_classes
    identity = InfoDisent(run.model.backbone, InfoDisentHead(HeadConfig(d, c, rotation=False)), list(run.class_names))
    return mine_prototypes(identity, run.dataset("test"), features=run.features("test"), progress=progress)


def kept_channels_readability(run, index, weight: torch.Tensor) -> tuple[float, float | None]:
    """Purity and consistency (CUB; None on ``parts``) of the channels a sparse layer keeps (any non-zero
    weight), with the compact heads' own part metrics; a class relies on a channel by the size of its
    weight, either sign."""
    ds = run.dataset("test")
    if getattr(ds, "part_locs", None) is not None:
        scores = cub_part_metrics(index, ds, weight.abs().numpy(), run.model.transform, threshold=0.0)
        return scores.purity, scores.consistency
    used = np.flatnonzero(weight.abs().amax(0).numpy() > 0)
    pur = parts_purity(index, ds, run.model.transform, channels=used)
    return float(pur["purity"].mean()) if len(pur) else float("nan"), None


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
    path = elastic_net_path(xtr, ytr, run.config.model.num_classes, max_per_class=max(ks), progress=progress)
    seconds = time.perf_counter() - start
    kept = {p.channels_per_class: p for p in run.metrics.frontier}
    parts = has_parts(run.dataset("test"))
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

# ----------------------------------------------------------------------------- attribution maps

METHODS = ["InfoDisent", "Grad-CAM", "Grad-CAM++", "Saliency", "Integrated Gradients"]
DENSE_METHODS = ["InfoDisent", "Grad-CAM", "Grad-CAM++", "Saliency"]


def cached_maps(model, x: torch.Tensor, y: torch.Tensor, idx: np.ndarray, methods: list[str], file: Path | None,
                fingerprint: str) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """:func:`~infodisent.explain.interop.explain_methods`, kept in ``file`` (``.npz``) and read back when it
    holds the same head and method settings (``fingerprint``), images, decisions and methods (scoring again
    then costs no explanation)."""
    if file is not None and file.is_file():
        with np.load(file, allow_pickle=False) as z:
            if (str(z["fingerprint"]) == fingerprint and np.array_equal(z["images"], idx)
                    and np.array_equal(z["targets"], y.cpu().numpy()) and all(f"map:{m}" in z for m in methods)):
                return ({m: z[f"map:{m}"] for m in methods}, {m: float(z[f"seconds:{m}"]) for m in methods})
    maps, seconds = explain_methods(model, x, y, methods)
    if file is not None:
        with atomic_path(file) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, fingerprint=np.array(fingerprint), images=idx, targets=y.cpu().numpy(),
                         **{f"map:{m}": a for m, a in maps.items()},
                         **{f"seconds:{m}": np.float64(v) for m, v in seconds.items()})
    return maps, seconds


def attribution_peer(run, images: int = 200, settings: FieldSettings | None = None, progress: bool = True,
                     metrics: list[str] | None = None, cache: Path | None = None) -> tuple[pd.DataFrame, dict]:
    """Quantus's scores of every method's maps of the shown head's decisions and, where the run kept it,
    the dense head's.

    Args:
        run: a trained run.
        images: test images explained (default 200).
        settings: the metrics' settings (default :class:`~infodisent.eval.field.FieldSettings`'s).
        progress: a line per metric and method (default True).
        metrics: the metrics scored (default: all of :func:`~infodisent.eval.field.metric_table`'s).
        cache: a folder where each head's maps are kept (``maps-<head>.npz``), or None.

    Returns:
        The rows of :func:`~infodisent.eval.field.score_methods` with ``head``, ``seconds_per_explanation``
        and each head's top-1 on the images; and what was explained (``images``, ``masks``, ``heads``).
    """
    settings = settings or FieldSettings()
    ds = run.dataset("test")
    idx = spread_over_classes(np.asarray(ds.labels), images)
    transform = run.model.transform
    x = torch.stack([transform(ds.load_image(int(i))) for i in idx])
    labels = torch.as_tensor(np.asarray(ds.labels)[idx])
    masks = object_masks(ds, transform, idx)
    heads = [(run.head_key, run, METHODS)]
    dense_kept = any(p.channels_per_class is None for p in run.metrics.frontier)
    if run.head_key != "dense" and dense_kept:
        heads.append(("dense", run.with_k("dense"), DENSE_METHODS))
    tables, info = [], {"images": len(idx), "masks": None if masks is None else float(masks.mean()), "heads": {}}
    for key, r, methods in heads:
        model = r.model.eval()
        with torch.no_grad():
            y = torch.cat([model(x[i:i + 64].to(model.device)).argmax(1).cpu() for i in range(0, len(x), 64)])
        top1 = float((y == labels).float().mean())
        if progress:
            print(f"head {key}: top-1 {top1:.3f} on the {len(x)} images; explaining with {', '.join(methods)}",
                  flush=True)
        maps, seconds = cached_maps(model, x, y, idx, methods, None if cache is None else cache / f"maps-{key}.npz",
                                    fingerprint=f"{r.head_sha256()} integrated-gradients-steps={IG_STEPS}")
        table = score_methods(model, x, y, masks, maps, settings, metrics=metrics, progress=progress)
        table.insert(0, "head", key)
        table["seconds_per_explanation"] = table["method"].map(seconds)
        tables.append(table)
        info["heads"][key] = {"top1": top1, "seconds_per_explanation": seconds}
    return pd.concat(tables, ignore_index=True), info


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


# ----------------------------------------------------------------------------- the page

# Published CUB-200-2011 top-1 of prototype models that train the backbone (out of reach on 2 CPU cores):
# (model, backbone, top-1 %, where, what differs). Transcribed from the papers' tables; the page says which
# were checked against a second source.
PUBLISHED = [
    ("ProtoPNet (Chen et al., NeurIPS 2019)", "VGG-19, ImageNet", "78.0 ± 0.2", "Table 1; also quoted in "
     "cfchen-duke/ProtoPNet issue 28", "birds cropped by their boxes; 10 prototypes per class"),
    ("ProtoPNet", "ResNet-34, ImageNet", "79.2 ± 0.1", "Table 1", "as above"),
    ("ProtoPNet", "DenseNet-121, ImageNet", "80.2 ± 0.2", "Table 1", "as above"),
    ("ProtoTree (Nauta et al., CVPR 2021)", "ResNet-50, iNaturalist 2017", "82.2 ± 0.7", "results table",
     "full test images; one tree of depth 9; iNaturalist weights"),
    ("ProtoPool (Rymarczyk et al., ECCV 2022)", "ResNet-50, iNaturalist 2017", "85.5 ± 0.1", "results table",
     "cropped birds; 202 prototypes shared by the classes; iNaturalist weights"),
    ("PIP-Net (Nauta et al., CVPR 2023)", "ResNet-50, ImageNet", "82.0 ± 0.3", "results table",
     "cropped birds; self-supervised pretraining of the prototypes"),
    ("PIP-Net", "ConvNeXt-tiny, ImageNet", "84.3 ± 0.2", "results table", "as above"),
]


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def attribution_markdown(table: pd.DataFrame, head: str) -> str:
    """One head's methods × metrics, mean ± standard error, the best of each metric in bold."""
    part = table[table["head"] == head]
    best = ranks(part)
    metrics = list(dict.fromkeys(part["metric"]))
    arrow = {m: ("↑" if part[part["metric"] == m]["better"].iloc[0] == "higher" else "↓") for m in metrics}
    lines = ["| method | seconds per explanation | " + " | ".join(f"{m} {arrow[m]}" for m in metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for method, rows in part.groupby("method", sort=False):
        cells = []
        for m in metrics:
            r = rows[rows["metric"] == m].iloc[0]
            cell = f"{_fmt(r['mean'])} ± {_fmt(r['sem'])}"
            cells.append(f"**{cell}**" if best.loc[method, m] == 1 else cell)
        lines.append(f"| {method} | {rows['seconds_per_explanation'].iloc[0]:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def page(run, attribution: dict | None, sparse: dict | None, command: str) -> str:
    """The results page: what was run, the attribution table per head, the sparse-layer table, the settings
    and the prototype peers' published numbers."""
    out = [f"# InfoDisent beside its peers: {run.config.run.dataset if run.config.run else 'dataset'}, "
           f"{run.config.model.num_classes} classes, {run.config.model.backbone.name}", "",
           f"Written by `{command}`.", ""]
    if attribution is not None:
        table = pd.DataFrame(attribution["rows"])
        s = attribution["settings"]
        out += ["## Attribution maps, judged by Quantus", "",
                f"Every method explains the same decision: the head's predicted class (its logit, no softmax) on "
                f"{attribution['images']} test images, taken class by class (each class's first image, then each "
                f"class's second, ...). Metrics that read the maps only score all of them; those that call the "
                f"model per image score the first {s['probes']} in that order. Mean ± standard error over "
                f"images; the best of each metric in bold (↑ higher is better, ↓ lower).", ""]
        if attribution["masks"] is not None:
            out += [f"Localisation masks cover {100 * attribution['masks']:.0f}% of the view on average.", ""]
        for head, info in attribution["heads"].items():
            out += [f"### Head {'K = ' + head if head != 'dense' else 'dense'} (top-1 on these images "
                    f"{info['top1']:.3f})", "", attribution_markdown(table, head), ""]
        out += ["### Settings", "", "| metric | family | better | images | Quantus class and settings |",
                "|---|---|---|---|---|"]
        scored = set(table["metric"])
        for r in metric_table(FieldSettings(**s)).itertuples():
            if r.metric not in scored:
                continue
            scope = str(attribution["images"]) if r.images == "images" else str(s["probes"])
            out.append(f"| {r.metric} | {r.family} | {r.better} | {scope} | {r.settings} |")
        out += ["", "Methods: InfoDisent's map is exact (it sums to the logit minus the bias); Grad-CAM and "
                "Grad-CAM++ are torchcam's at the backbone's last map, upsampled bilinearly; Saliency and "
                "Integrated Gradients are Captum's as Quantus's own `explain` calls them (|gradient|; 10 "
                "trapezoid steps from a zero baseline). Maps are summed over the colour channels. Seconds per "
                "explanation: wall time in batches of 32 on this machine. The head's weights are torch "
                "parametrizations; `InfoDisentHead.reset_parameters` draws them afresh, so MPRT randomises the "
                "head too.", ""]
    if sparse is not None:
        rows = sparse["rows"]
        read = any(r["glm_saga_purity"] is not None for r in rows)
        out += ["## The sparse-layer peer: glm-saga", "",
                f"glm-saga's elastic-net path ({sparse['path_points']} penalties, {sparse['path_seconds']:.0f} s) "
                f"on the globally pooled frozen features, against the compact head with the same number of "
                f"channels per class. Dense head {_fmt(sparse['dense_top1'])}, linear probe "
                f"{_fmt(sparse['probe_top1'])} (test top-1).", "",
                "| K | InfoDisent top-1 | glm-saga top-1 | glm-saga weights per class | glm-saga support refit |"
                + (" InfoDisent purity | glm-saga purity | InfoDisent consistency | glm-saga consistency |"
                   if read else ""),
                "|---|---|---|---|---|" + ("---|---|---|---|" if read else "")]
        for r in rows:
            line = (f"| {r['K']} | {_fmt(r['infodisent_top1'])} | {_fmt(r['glm_saga_top1'])} | "
                    f"{_fmt(r['glm_saga_weights_per_class'], 2)} | {_fmt(r['glm_saga_refit_top1'])} |")
            if read:
                line += (f" {_fmt(r['infodisent_purity'])} | {_fmt(r['glm_saga_purity'])} | "
                         f"{_fmt(r['infodisent_consistency'])} | {_fmt(r['glm_saga_consistency'])} |")
            out.append(line)
        out.append("")
    if PUBLISHED:
        out += ["## Prototype models that train the backbone (published numbers)", "",
                "All train their backbone on 200 classes at 224 px.", "",
                "| model | backbone | CUB-200 top-1 (%) | where | what else differs |", "|---|---|---|---|---|"]
        out += [f"| {m} | {b} | {a} | {src} | {d} |" for m, b, a, src, d in PUBLISHED]
        out += ["", f"This run: {run.config.model.num_classes} classes, full (uncropped) images, a frozen "
                f"{run.config.model.backbone.name}; the head shown reaches {_fmt(run.metrics.infodisent.top1)} "
                "test top-1. The numbers above are on 200 classes with trained backbones, so they place the "
                "field, they do not rank it against this run. They were transcribed from the papers without "
                "network access to check them again; only ProtoPNet's VGG-19 figure was found quoted in a second "
                "place. Check them against the papers before citing this table.", ""]
    return "\n".join(out)


def train_default(dataset: str, root: str, work: Path) -> Path:
    """The default run on ``dataset`` in ``work/<dataset>`` (resumed where it stopped), its heads' explanations
    scored; returns the run directory."""
    from infodisent.cli import main as cli

    run_dir = work / dataset
    if not (run_dir / "metrics.json").is_file():
        args = ["train", "--dataset", dataset, "--out", str(run_dir)] + (["--root", root] if root else [])
        if (run_dir / "config.json").is_file() or (run_dir / "checkpoint.pt").is_file():
            args.append("--resume")
        if cli(args) != 0:
            raise SystemExit(f"training the default run in {run_dir} failed (see above)")
    run = infodisent.open_run(run_dir)
    if any(p.purity is None for p in run.metrics.frontier) and has_parts(run.dataset("test")):
        from infodisent.pipeline import evaluate_run

        evaluate_run(run, "test", explanations=True, stability=False)
    return run_dir


def main() -> None:
    from infodisent.data.datasets import DATASETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a trained run directory that kept its frontier")
    src.add_argument("--dataset", choices=list(DATASETS), help="train the default run on this dataset first")
    ap.add_argument("--root", default=None, help="with --dataset: its folder (any CUB layout for cub)")
    ap.add_argument("--work", default="runs/peers", help="with --dataset: where the run goes (default runs/peers)")
    ap.add_argument("--side", choices=["all", "attribution", "sparse"], default="all", help="what to run (default all)")
    ap.add_argument("--ks", type=int, nargs="+", default=None,
                    help="channels per class compared with glm-saga (default: the run's kept K)")
    ap.add_argument("--images", type=int, default=200, help="test images explained (default 200)")
    ap.add_argument("--probes", type=int, default=FieldSettings.probes,
                    help="of those, the ones scored by the metrics that call the model "
                         f"(default {FieldSettings.probes})")
    ap.add_argument("--metrics", nargs="+", default=None,
                    help="score only these metrics again, keeping the others' rows from OUT (default: all)")
    ap.add_argument("--out", default=None, help="where the page, tables and figure go (default RUN/peers)")
    ap.add_argument("--redraw", action="store_true", help="draw the figure and page again from OUT's json files")
    a = ap.parse_args()
    if a.dataset is not None and a.dataset != "parts" and a.root is None:
        ap.error(f"--dataset {a.dataset} needs --root (the dataset's folder)")
    run_dir = Path(a.run) if a.run else train_default(a.dataset, a.root, Path(a.work))
    run = infodisent.open_run(run_dir)
    out = Path(a.out) if a.out else run_dir / "peers"
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/peers.py " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    att_file, sparse_file = out / "peers-attribution.json", out / "peers-sparse.json"
    # the side not run keeps its page section from an earlier run in OUT (both sides, when redrawing)
    read_attribution, read_sparse = a.redraw or a.side == "sparse", a.redraw or a.side == "attribution"
    attribution = json.loads(att_file.read_text()) if read_attribution and att_file.is_file() else None
    sparse = json.loads(sparse_file.read_text()) if read_sparse and sparse_file.is_file() else None
    if a.redraw and attribution is None and sparse is None:
        raise SystemExit(f"--redraw: {out} holds neither {att_file.name} nor {sparse_file.name}")
    if not a.redraw and a.side in ("all", "attribution"):
        settings = FieldSettings(probes=a.probes)
        start = time.perf_counter()
        table, info = attribution_peer(run, a.images, settings, metrics=a.metrics, cache=out)
        rows, seconds = table.to_dict(orient="records"), time.perf_counter() - start
        if a.metrics and att_file.is_file():  # the other metrics' rows as they were
            before = json.loads(att_file.read_text())
            if before["settings"] != asdict(settings) or before["images"] != info["images"]:
                raise SystemExit(f"--metrics: {att_file} was scored with other settings or images "
                                 f"({before['settings']}, {before['images']} images); run every metric again")
            kept = [r for r in before["rows"] if r["metric"] not in set(a.metrics) and r["head"] in info["heads"]]
            order = list(metric_table().metric)
            rows = sorted(kept + rows, key=lambda r: (list(info["heads"]).index(r["head"]), order.index(r["metric"])))
            seconds = before["seconds"]  # the whole benchmark's time, as first measured
        attribution = {**info, "settings": asdict(settings), "seconds": seconds, "rows": rows}
        with atomic_path(att_file) as tmp:
            tmp.write_text(json.dumps(attribution, indent=1))
        print(f"attribution maps: {attribution['seconds']:.0f} s")
    if not a.redraw and a.side in ("all", "sparse"):
        ks = a.ks or sorted(p.channels_per_class for p in run.metrics.frontier if p.channels_per_class is not None)
        if not ks:
            raise SystemExit(f"{run_dir} keeps no compact head: give --ks, or train it with pruning")
        table, curves = sparse_layer_peer(run, ks)
        sparse = {"run": str(run_dir), "backbone": run.config.model.backbone.name,
                  "classes": run.config.model.num_classes,
                  "path_seconds": table.attrs["path_seconds"], "path_points": table.attrs["path_points"],
                  "refit_l2": table.attrs["refit_l2"],
                  "dense_top1": next((p.test.top1 for p in run.metrics.frontier if p.channels_per_class is None), None),
                  "probe_top1": run.metrics.linear_probe.top1 if run.metrics.linear_probe else None,
                  "rows": table.to_dict(orient="records"), "curves": curves}
        with atomic_path(sparse_file) as tmp:
            tmp.write_text(json.dumps(sparse, indent=1))
        print(f"glm-saga path: {sparse['path_points']} penalties in {sparse['path_seconds']:.0f} s")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    written = []
    if sparse is not None:
        written += draw(run, sparse, out)
    with atomic_path(out / "peers.md") as tmp:
        tmp.write_text(page(run, attribution, sparse, command))
    print("written:", ", ".join(map(str, [out / "peers.md", *written])))


if __name__ == "__main__":
    main()
