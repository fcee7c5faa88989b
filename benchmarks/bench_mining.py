"""Prototype mining speed, as ratios to a plain feature-extraction pass measured in the same run.

1. Extraction: the frozen backbone over a split, written to a fresh feature cache.
2. Mining with the backbone (no cache): the same pass plus U, two-sided max and top-k.
3. Mining from the cache just written: no backbone at all.

The goal (issue 3): mining costs no more than 1.3 x an extraction pass.

Usage: python benchmarks/bench_mining.py [--device cuda] [--images 300] [--dataset cub --root PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from bench_training import sync  # benchmarks/ is on sys.path when run as a script

from infodisent.core.head import InfoDisentHead
from infodisent.core.model import InfoDisent
from infodisent.core.weights import load_backbone
from infodisent.data.datasets import PartsDataset, build_dataset
from infodisent.data.extract import extract_features
from infodisent.data.features import find_cache
from infodisent.explain.prototypes import mine_prototypes
from infodisent.records.data import PartsConfig
from infodisent.records.model import HeadConfig


def once(fn, device: torch.device) -> float:
    """Seconds of one call (no warm-up: a second extraction would only reuse the cache)."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=300, help="parts images (ignored with --dataset)")
    p.add_argument("--dataset", default=None, help="a dataset name (e.g. cub) to time instead of parts")
    p.add_argument("--root", default=None)
    p.add_argument("--split", default="train")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    bb = load_backbone(device=device)
    if a.dataset:
        ds = build_dataset(a.dataset, a.root, a.split)
    else:
        ds = PartsDataset(a.split, config=PartsConfig(train_per_class=max(1, a.images // 15),
                                                        test_per_class=max(1, a.images // 15)))
    torch.manual_seed(0)
    head = InfoDisentHead(HeadConfig(bb.num_features, ds.num_classes))
    with torch.no_grad():  # a rotated U, as after training
        head.rotation.linear.parametrizations.weight.original.normal_(0, 1e-2)
    model = InfoDisent(bb, head.to(device), ds.classes)
    print(f"device {device}, torch threads {torch.get_num_threads()}, {ds.name}/{ds.split}: {len(ds)} images")
    with torch.no_grad():  # warm-up: backbone kernels, the dataset's lazily built assets
        bb(torch.stack([bb.transform(ds.load_image(i)) for i in range(min(4, len(ds)))]).to(device))
    with tempfile.TemporaryDirectory() as tmp:
        t_extract = once(lambda: extract_features(bb, ds, tmp, batch_size=a.batch_size, num_workers=a.num_workers,
                                                  progress=False, device=device), device)
        t_stream = once(lambda: mine_prototypes(model, ds, None, batch_size=a.batch_size,
                                                num_workers=a.num_workers, progress=False, device=device), device)
        cache = find_cache(bb, ds, tmp)
        t_cached = once(lambda: mine_prototypes(model, ds, None, features=cache, batch_size=a.batch_size,
                                                progress=False, device=device), device)

    n = len(ds)
    print(f"feature extraction (backbone -> cache)  {t_extract:8.2f} s  ({n / t_extract:8.1f} img/s)")
    print(f"mining through the backbone             {t_stream:8.2f} s  ({n / t_stream:8.1f} img/s)")
    print(f"mining from the cache                   {t_cached:8.2f} s  ({n / t_cached:8.1f} img/s)")
    print(f"ratio mining (backbone) / extraction: {t_stream / t_extract:.2f}  (goal <= 1.3)")
    print(f"ratio mining (cache) / extraction:    {t_cached / t_extract:.3f}")


if __name__ == "__main__":
    main()
