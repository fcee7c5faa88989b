"""Widget latency: how long each interaction's Python callback takes to re-render, and how long a widget
takes to open, on a run (default: runs/demo). Run: ``python benchmarks/bench_widgets.py [RUN_DIR]``.

Each interaction is first made once for every value used (so the images it shows were read once),
then timed over those values again; the table gives the median and the 95th percentile. What the
browser adds (sending the new images and figures over the comm, drawing them) is not in these numbers.
The goal: median <= 100 ms, p95 <= 300 ms per interaction; each explorer open on a run just opened
(``ChannelBrowser(open_run(path))``: the model built, the index read) within 1 s. Opening is also given as a
ratio to one forward of the backbone on one image, measured in the same run, so that it compares across machines.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import infodisent
from infodisent.widgets import ChannelBrowser, DecisionExplorer


def timed(fn, values, repeat: int = 2) -> list[float]:
    for v in values:  # warm: read every image once
        fn(v)
    out = []
    for _ in range(repeat):
        for v in values:
            t = time.perf_counter()
            fn(v)
            out.append(time.perf_counter() - t)
    return out


def cold_open(path: str, widget, repeat: int = 3) -> float:
    """The median time of ``widget(open_run(path))``: what a user waits for in a new notebook."""
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        widget(infodisent.open_run(path))
        out.append(time.perf_counter() - t)
    return float(np.median(out))


def backbone_forward(run, repeat: int = 5) -> float:
    """The median time of one forward of the run's backbone on one image (the unit of the ratios)."""
    import torch

    x = torch.zeros(1, *run.config.model.data["input_size"])
    out = []
    with torch.no_grad():
        for _ in range(repeat):
            t = time.perf_counter()
            run.model.backbone(x)
            out.append(time.perf_counter() - t)
    return float(np.median(out))


def main(path: str = "runs/demo") -> None:
    cold = {"ChannelBrowser(open_run(path))": cold_open(path, ChannelBrowser),
            "DecisionExplorer(open_run(path), 0)": cold_open(path, lambda r: DecisionExplorer(r, 0))}
    run = infodisent.open_run(path)
    t = time.perf_counter()
    run.model, run.index("train")
    load = time.perf_counter() - t
    opens = {}
    t = time.perf_counter()
    b = ChannelBrowser(run)
    opens["ChannelBrowser (model loaded)"] = time.perf_counter() - t
    t = time.perf_counter()
    e = DecisionExplorer(run, 0)
    opens["DecisionExplorer (model loaded)"] = time.perf_counter() - t

    rng = np.random.default_rng(0)
    channels = [int(c) for c in rng.choice(b.used_channels, 15, replace=False)]
    classes = list(range(min(10, len(run.class_names))))
    rows = {}

    def set_(control, attr="value"):
        return lambda v: setattr(control, attr, v)

    rows["browser: change channel"] = timed(set_(b.channel), channels)
    rows["browser: patches as heatmaps"] = timed(set_(b.mode), ["heatmap", "crop", "box"] * 3)
    rows["browser: list a class's channels"] = timed(set_(b.pick_class), classes)
    rows["explorer: change class"] = timed(set_(e.target), classes)
    rows["explorer: change second class"] = timed(set_(e.other), classes[::-1])
    rows["explorer: select channel"] = timed(set_(e.channel), [v for _, v in e.channel.options])
    rows["explorer: heatmap opacity"] = timed(set_(e.opacity), [0.2, 0.4, 0.6, 0.8, 1.0])
    rows["explorer: click on the image"] = timed(lambda xy: e._on_click({"dataX": xy[0], "dataY": xy[1]}),
                                                 [(x, y) for x in (20, 120, 220, 320) for y in (30, 170, 300)])
    rows["explorer: next test image"] = timed(set_(e.image_index), list(range(1, 11)), repeat=1)

    print(f"run {path}: {run.config.model.backbone.name}, {run.model.head.config.num_features} channels, "
          f"{len(run.class_names)} classes; model and index loaded in {load:.2f} s")
    print("\n| interaction | n | median ms | p95 ms |\n|---|---|---|---|")
    for name, ts in rows.items():
        ms = np.array(ts) * 1e3
        print(f"| {name} | {len(ms)} | {np.median(ms):.1f} | {np.percentile(ms, 95):.1f} |")
    unit = backbone_forward(run)
    print(f"\none backbone forward on one image: {unit * 1e3:.0f} ms")
    print("\n| opening | s | x one backbone forward |\n|---|---|---|")
    for name, s in {**cold, **opens}.items():
        print(f"| {name} | {s:.2f} | {s / unit:.0f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
