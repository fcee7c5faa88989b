"""The speed of the API that widgets and notebooks call, as ratios within one run (issue 7).

On a trained run (default ``runs/demo``, written by ``make demo``):

1. ``run.explain(image)`` of one image against one backbone forward of that image (goal: <= 1.2x).
2. Rendering one channel's top-10 prototype patches of either side against that forward:
   - *warm*: the images were decoded and their maps loaded before (goal: <= 0.2x);
   - *repeat*: the same patches asked for again (the patch cache);
   - *cold*: a fresh renderer, against just reading and cropping those 10 images (bounded by the reads).
3. ``open_run`` plus ``run.index("train")``: its time (that it reads no image and runs no backbone
   forward is a test: ``tests/test_pipeline.py::test_opening_a_run_and_its_index_reads_no_image``).

Usage: python benchmarks/bench_api.py [RUN_DIR] [--device cpu] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import infodisent
from infodisent.explain.render import Renderer


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir", nargs="?", default="runs/demo")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--channels", type=int, default=8, help="channels rendered (each: its top-10 of one side)")
    a = p.parse_args()

    t = time.perf_counter()
    run = infodisent.open_run(a.run_dir, device=a.device)
    index = run.index("train")
    t_open = time.perf_counter() - t
    print(f"{run}; device {a.device}, torch threads {torch.get_num_threads()}")
    print(f"open_run + run.index('train'): {1000 * t_open:.1f} ms (no image read, no backbone forward: "
          "tests/test_pipeline.py counts them)")

    model = run.model
    ds = run.dataset("test")
    x = model.transform(ds.load_image(0))[None].to(a.device)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with torch.no_grad():
        model.backbone(x)  # warm-up
    run.explain(0)
    forwards, explains = [], []
    for _ in range(a.repeats):  # interleaved, so that both see the same machine state
        with torch.no_grad():
            forwards.append(median_time(lambda: (model.backbone(x), sync()), 1))
        explains.append(median_time(lambda: run.explain(0), 1))
    t_forward, t_explain = statistics.median(forwards), statistics.median(explains)
    print(f"\none backbone forward          {1000 * t_forward:8.2f} ms")
    print(f"run.explain(one test image)   {1000 * t_explain:8.2f} ms   ratio {t_explain / t_forward:.2f}  (goal <= 1.2)")

    firing = index.table.groupby(["channel", "side"]).size()
    keys = [k for k, n in firing.items() if n >= 10][: a.channels]
    cold, warm, repeat, reads_only = [], [], [], []
    for channel, side in keys:
        r = Renderer(model, run.dataset("train"), index, run.cache("train"))
        images = index.prototypes(channel, side)["image"].tolist()
        t = time.perf_counter()
        r.prototypes(channel, side, 10)
        cold.append(time.perf_counter() - t)
        repeat.append(median_time(lambda: r.prototypes(channel, side, 10), 5))
        r2 = Renderer(model, run.dataset("train"), index, run.cache("train"))
        for i in images:
            r2.view(i)
        r2.feature_maps(images)
        t = time.perf_counter()
        r2.prototypes(channel, side, 10)
        warm.append(time.perf_counter() - t)
        t = time.perf_counter()
        fresh = Renderer(model, run.dataset("train"))
        for i in images:
            fresh.view(i)
        reads_only.append(time.perf_counter() - t)
    med = statistics.median
    print(f"\nrender one channel's top-10 ({len(keys)} channels, median):")
    print(f"  warm (images decoded, maps loaded)  {1000 * med(warm):8.2f} ms   ratio to a forward "
          f"{med(warm) / t_forward:.3f}  (goal <= 0.2)")
    print(f"  repeat (patch cache)                {1000 * med(repeat):8.3f} ms   ratio {med(repeat) / t_forward:.4f}")
    print(f"  cold (fresh renderer)               {1000 * med(cold):8.2f} ms   "
          f"vs reading + cropping the 10 images {1000 * med(reads_only):.2f} ms: ratio {med(cold) / med(reads_only):.2f}")


if __name__ == "__main__":
    main()
