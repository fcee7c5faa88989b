"""Training speed, as ratios measured in one run.

1. The orthogonal map: forward + backward of U alone (Cayley, Householder, matrix_exp).
2. One epoch on cached feature maps against one that recomputes the backbone.
3. The rotation's achieved arithmetic rate against this machine's matrix-multiply rate.
4. An epoch of a pruned head (K channels per class: only the channels some class keeps are rotated)
   against the dense head's epoch.

Usage: python benchmarks/bench_training.py [--device cuda] [--images 256] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from infodisent.core.head import InfoDisentHead, OrthogonalRotation
from infodisent.core.weights import load_backbone
from infodisent.data.datasets import PartsDataset
from infodisent.data.extract import extract_features
from infodisent.data.sources import CachedSource, StreamingSource
from infodisent.records.data import PartsConfig
from infodisent.records.model import HeadConfig
from infodisent.records.options import FitConfig
from infodisent.train.training import make_optimizer, train_one_epoch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat: int = 1) -> float:
    fn()  # warm-up
    sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t) / repeat


def bench_orthogonal_maps(dim: int, device: torch.device) -> dict[str, float]:
    out = {}
    for omap in ("cayley", "householder", "matrix_exp"):
        rot = OrthogonalRotation(dim, omap).to(device)
        with torch.no_grad():
            rot.linear.parametrizations.weight.original.normal_(0, 1e-3)

        def step():
            rot.zero_grad()
            rot.matrix().sum().backward()

        out[omap] = timed(step, device)
        if omap == "cayley":  # torch's own map of the same parameters: B @ (I - A/2)^-1 (I + A/2) with B = I

            def torchs():
                rot.zero_grad()
                rot.linear.weight.sum().backward()

            out["cayley, torch's product with the identity base"] = timed(torchs, device)
    return out


def matmul_rate(dim: int, cols: int, device: torch.device) -> float:
    a, b = torch.randn(dim, dim, device=device), torch.randn(dim, cols, device=device)
    t = timed(lambda: a @ b, device, repeat=5)
    return 2 * dim * dim * cols / t


def epoch_time(head, source, device) -> float:
    cfg = FitConfig(epochs=1, amp=False)
    opt = make_optimizer(head, cfg)

    def run():
        train_one_epoch(head, source.batches(0), opt, 0, 10**6, 0, cfg)

    return timed(run, device)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}")

    bb = load_backbone(device=device)
    d, h, w = bb.feature_shape()
    maps = bench_orthogonal_maps(d, device)
    print(f"\n1. orthogonal map, forward+backward of U alone, D={d}:")
    for k, v in maps.items():
        print(f"   {k:12s} {v * 1e3:9.1f} ms   ({v / maps['cayley']:.2f} x cayley)")

    per_class = max(1, a.images // 15)
    ds = PartsDataset("train", config=PartsConfig(train_per_class=per_class))
    with tempfile.TemporaryDirectory() as tmp:
        cache = extract_features(bb, ds, tmp, batch_size=a.batch_size, progress=False, device=device)
        torch.manual_seed(0)
        head = InfoDisentHead(HeadConfig(d, ds.num_classes)).to(device)
        t_cached = epoch_time(head, CachedSource(cache, a.batch_size, device=device), device)
        t_stream = epoch_time(head, StreamingSource(bb, ds, a.batch_size, device=device), device)
        print(f"\n2. one training epoch over {len(ds)} images:")
        print(f"   on cached features     {t_cached:8.2f} s  ({len(ds) / t_cached:8.1f} img/s)")
        print(f"   recomputing backbone   {t_stream:8.2f} s  ({len(ds) / t_stream:8.1f} img/s)")
        print(f"   ratio recompute / cached: {t_stream / t_cached:.1f} x")

        flops = 3 * 2 * d * d * h * w * len(ds)  # forward + ~2x backward of J = U F
        achieved = flops / t_cached
        peak = matmul_rate(d, a.batch_size * h * w, device)
        print(f"\n3. rotation arithmetic: {achieved / 1e9:.1f} GFLOP/s achieved on cached features; "
              f"matmul ({d}x{d} @ {d}x{a.batch_size * h * w}) {peak / 1e9:.1f} GFLOP/s; "
              f"ratio {achieved / peak:.2f}")

        print(f"\n4. one epoch of a pruned head against the dense head's ({ds.num_classes} classes):")
        for k in (3, 8, 32):
            pruned = InfoDisentHead(HeadConfig(d, ds.num_classes, pruned=True)).to(device)
            g = torch.Generator().manual_seed(k)  # each class keeps k channels of its own choosing
            idx = torch.stack([torch.randperm(d, generator=g)[:k] for _ in range(ds.num_classes)])
            mask = torch.zeros(ds.num_classes, d).scatter_(1, idx, 1.0).to(device)
            pruned.set_mask(mask)
            used = int(mask.any(0).sum())
            t_pruned = epoch_time(pruned, CachedSource(cache, a.batch_size, device=device), device)
            print(f"   K = {k:2d} ({used:4d} of {d} channels kept by some class): {t_pruned / t_cached:.2f} x the dense epoch")


if __name__ == "__main__":
    main()
