"""Scale on this CPU, as ratios measured in one run (issue 11).

1. A training epoch streamed through the backbone against one on cached maps (offline EfficientNet-Lite0,
   224 px, the parts dataset).
2. The head's share of a training step at ImageNet scale: ResNet-50 at 224 (random weights: the same
   arithmetic), 1000 classes; the head's forward + backward against the backbone's inference forward
   (goal: at most 0.05). Also the rotation as one (B*H*W x D) @ (D x D) product against B small ones.
3. Scaling from one process to two: ``infodisent train --no-cache`` (streaming, the dense head) in one
   process with two threads, and under ``torchrun --nproc_per_node=2`` with one thread each: training
   seconds from each run's metrics.json, and the two heads' largest difference.

Usage: python benchmarks/bench_distributed.py [--images 240] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from infodisent.core.head import InfoDisentHead
from infodisent.core.weights import load_backbone
from infodisent.data.datasets import PartsDataset
from infodisent.data.extract import extract_features
from infodisent.data.sources import CachedSource, StreamingSource
from infodisent.records.data import PartsConfig
from infodisent.records.model import HeadConfig
from infodisent.records.options import FitConfig
from infodisent.train.training import make_optimizer, train_one_epoch


def timed(fn, repeat: int = 1) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def epoch_seconds(head, source) -> float:
    cfg = FitConfig(epochs=1)
    opt = make_optimizer(head, cfg)
    return timed(lambda: train_one_epoch(head, source.batches(0), opt, 0, 10**6, 0, cfg))


def streaming_vs_cached(images: int) -> None:
    bb = load_backbone()
    ds = PartsDataset("train", config=PartsConfig(train_per_class=max(1, images // 15)))
    with tempfile.TemporaryDirectory() as tmp:
        cache = extract_features(bb, ds, tmp, progress=False)
        head = InfoDisentHead(HeadConfig(bb.num_features, ds.num_classes))
        cached = epoch_seconds(head, CachedSource(cache, 64))
        streamed = epoch_seconds(head, StreamingSource(bb, ds, 64, num_workers=1))
    print(f"1. one epoch over {len(ds)} images: cached {cached:.2f} s, streamed {streamed:.2f} s; "
          f"streamed / cached = {streamed / cached:.0f} x")


def head_share(batch: int) -> None:
    bb = load_backbone("resnet50", "random", image_size=224)
    d, h, w = bb.feature_shape()
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        t_backbone = timed(lambda: bb(x), repeat=2)
    head = InfoDisentHead(HeadConfig(d, 1000))
    maps = torch.randn(batch, d, h, w)
    y = torch.zeros(batch, dtype=torch.long)
    cfg = FitConfig(epochs=1)
    opt = make_optimizer(head, cfg)
    t_step = timed(lambda: train_one_epoch(head, iter([(maps, y)]), opt, 0, 10**6, 0, cfg), repeat=3)
    head.eval()
    with torch.inference_mode(), head.frozen_parameters():  # U computed once per head state, as in evaluation
        t_forward = timed(lambda: head(maps), repeat=3)
    print(f"2. ResNet-50 at 224, batch {batch}, 1000 classes: backbone forward {t_backbone * 1e3:.0f} ms;\n"
          f"   head forward {t_forward * 1e3:.0f} ms: head / backbone = {t_forward / t_backbone:.3f} (goal <= 0.05; "
          f"the rotation's arithmetic alone is 2 D^2 H W = {2 * d * d * h * w / 4.1e9 / 2:.3f} of ResNet-50's)\n"
          f"   head training step (U from its parameters, forward, backward, AdamW) {t_step * 1e3:.0f} ms: "
          f"{t_step / t_backbone:.3f} of the backbone's forward")
    U, F_ = torch.linalg.qr(torch.randn(d, d))[0], torch.randn(batch, d, h * w)
    batched = timed(lambda: torch.matmul(U, F_), repeat=3)
    one = timed(lambda: torch.matmul(F_.transpose(1, 2), U.T).transpose(1, 2), repeat=3)
    print(f"   rotation J = U F (D={d}): {batch} products of {d}x{h * w} columns {batched * 1e3:.0f} ms, one product "
          f"of {batch * h * w} rows {one * 1e3:.0f} ms ({batched / one:.2f} x)")


def scaling(images: int, epochs: int) -> None:
    flags = ["--dataset", "parts", "--max-classes", "5", "--dense", "--no-cache", "--epochs", str(epochs),
             "--batch-size", "32", "--num-workers", "1", "--quiet"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "INFODISENT_CACHE": f"{tmp}/cache", "PYTHONWARNINGS": "ignore"}
        runs = {}
        for procs in (1, 2):
            out = Path(tmp) / f"p{procs}"
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] \
                if procs == 2 else [sys.executable]
            threads = "1" if procs == 2 else "2"
            cmd = [*launcher, "-m", "infodisent", "train", *flags, "--out", str(out)]
            subprocess.run(cmd, check=True, capture_output=True, env={**env, "OMP_NUM_THREADS": threads})
            runs[procs] = json.loads((out / "metrics.json").read_text())
        h1, h2 = (load_file(str(Path(tmp) / f"p{p}" / "head.safetensors")) for p in (1, 2))
        gap = max(float((h1[k] - h2[k]).abs().max()) for k in h1)
    t1, t2 = runs[1]["seconds"]["train"], runs[2]["seconds"]["train"]
    print(f"3. streaming training, {runs[1]['num_train_images']} images x {epochs} epochs (+ the test split each "
          f"epoch): one process (2 threads) {t1:.1f} s, two processes (1 thread each) {t2:.1f} s: speed-up "
          f"{t1 / t2:.2f} x; heads differ by at most {gap:.1e}; top-1 {runs[1]['infodisent']['top1']:.4f} / "
          f"{runs[2]['infodisent']['top1']:.4f}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=240)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=32, help="batch of the head-share measurement")
    p.add_argument("--only", type=int, nargs="+", default=[1, 2, 3], help="which measurements")
    a = p.parse_args()
    print(f"torch threads {torch.get_num_threads()}\n")
    if 1 in a.only:
        streaming_vs_cached(a.images)
    if 2 in a.only:
        head_share(a.batch)
    if 3 in a.only:
        scaling(a.images, a.epochs)


if __name__ == "__main__":
    main()
