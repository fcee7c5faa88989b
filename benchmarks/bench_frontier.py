"""Switching heads after training: how long ``run.with_k(K)``, ``infodisent select`` and the widgets' head menu
take on a run that kept its frontier (default: runs/demo). Run: ``python benchmarks/bench_frontier.py [RUN_DIR]``.

Each kept head's prototype index is mined first (outside the timings): the goal, at most 2 s per switch when no
mining is needed, is about the switch itself. The times are also given as ratios to one forward of the backbone
on one image, measured in the same run, so that they compare across machines. ``select`` is timed on a copy of
the run (it rewrites the run's files), there and back.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_widgets import backbone_forward

import infodisent
from infodisent.widgets import ChannelBrowser, DecisionExplorer


def median_time(fn, repeat: int = 3) -> float:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return float(np.median(out))


def main(path: str = "runs/demo") -> None:
    run = infodisent.open_run(path)
    keys = [p.key for p in run.metrics.frontier if not p.shown]
    if not keys:
        sys.exit(f"{path} keeps no other head: train it again (runs keep their frontier since this version)")
    for k in keys:  # mining is what a first visit costs; the switch is timed without it
        other = run.with_k(k)
        if not other.has_index("train"):
            other.mine("train", progress=False)
    unit = backbone_forward(run)
    rows = {}

    def fresh_with_k() -> None:  # a new handle each time: the head file read and the model built
        r = infodisent.open_run(path)
        r.model  # noqa: B018 - the backbone, loaded as a user's session has it
        t = time.perf_counter()
        r.with_k(keys[0]).explain(0)
        rows.setdefault("run.with_k(K).explain(0), first time", []).append(time.perf_counter() - t)

    for _ in range(3):
        fresh_with_k()
    browser, explorer = ChannelBrowser(run), DecisionExplorer(run, 0)
    shown = browser.k.value
    for widget, name in ((browser, "ChannelBrowser head menu"), (explorer, "DecisionExplorer head menu")):
        for key in (keys[0], shown):  # both ways, the handles already made (what a second visit costs)
            t = time.perf_counter()
            widget.k.value = key
            rows.setdefault(name, []).append(time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(path, copy)
        chosen = run.channels_per_class
        t = time.perf_counter()
        infodisent.open_run(copy).select(int(keys[0]) if keys[0] != "dense" else None)
        infodisent.open_run(copy).select(chosen)
        rows["select there and back (two calls)"] = [time.perf_counter() - t]
    print(f"run {path}: {len(run.metrics.frontier)} kept heads; one backbone forward {1000 * unit:.0f} ms\n")
    print(f"{'what':45s} {'median s':>9s} {'x forward':>10s}")
    for name, times in rows.items():
        m = float(np.median(times))
        print(f"{name:45s} {m:9.3f} {m / unit:10.1f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
