"""The issue-11 GPU check, prepared for a session lent one (15 minutes in all, start-up included).

Prints, for ResNet-50 and ConvNeXt-T at 224 px:

1. backbone images per second (inference mode, bf16 autocast, channels-last; with ``--compile`` also through
   torch.compile) against timm's published inference rate for the same model and size;
2. a streaming training epoch's images per second (JPEGs decoded by loader workers, the backbone, the head's
   forward and backward) against the backbone's own rate (goal: at least 0.9);
3. the head's overhead: head forward + backward over backbone forward, at the same batch;
4. the rotation's arithmetic rate (J = U F, forward + backward, on cached maps) against this card's own
   matrix-multiply rate at the same shapes (0.06 on an H200 at batch 64 with the batched product; goal 0.5).

Weights are random (the arithmetic is that of the trained model; nothing is downloaded). Usage:
    python benchmarks/gpu_scale.py --device cuda [--compile] [--images 4096] [--workers 16]
    python benchmarks/gpu_scale.py --device cpu --quick        # a smoke run of the script itself
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from infodisent.core.head import InfoDisentHead
from infodisent.core.weights import load_backbone
from infodisent.data.datasets import build_dataset
from infodisent.data.sources import StreamingSource
from infodisent.records.model import HeadConfig
from infodisent.records.options import FitConfig
from infodisent.train.training import make_optimizer, train_one_epoch
from infodisent.tutorials.fabricate import fabricate

# timm's published inference rates, results/benchmark-infer-amp-nhwc-pt240-cu124-rtx4090.csv
# (AMP, channels-last, batch 512, PyTorch 2.4, CUDA 12.4, one RTX 4090): images per second at 224 px
TIMM_PUBLISHED = {"resnet50": 5088.39, "convnext_tiny": 4844.53}
TIMM_CARD = "RTX 4090 (timm results/benchmark-infer-amp-nhwc-pt240-cu124-rtx4090.csv, batch 512)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(fn, n_items: int, device: torch.device, repeat: int) -> float:
    """Items per second of ``fn`` (after two warm-up calls)."""
    fn()
    fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return n_items * repeat / (time.perf_counter() - t)


def backbone_rate(bb, batch: int, device: torch.device, repeat: int, compile_: bool) -> float:
    x = torch.randn(batch, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
    model = torch.compile(bb) if compile_ else bb

    def step():
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            model(x)

    return rate(step, batch, device, repeat)


def head_step_time(head, maps: torch.Tensor, device: torch.device, repeat: int) -> float:
    cfg = FitConfig(epochs=1)
    opt = make_optimizer(head, cfg)
    y = torch.zeros(len(maps), dtype=torch.long, device=device)
    return len(maps) / rate(lambda: train_one_epoch(head, iter([(maps, y)]), opt, 0, 10**6, 0, cfg), len(maps),
                            device, repeat)


def rotation_rate(d: int, hw: int, batch: int, device: torch.device, repeat: int) -> tuple[float, float]:
    """Achieved FLOP/s of the rotation (forward + backward of J = U F through the head's own module) and of
    one plain matmul of the same total size."""
    head = InfoDisentHead(HeadConfig(d, 1000)).to(device)
    F_ = torch.randn(batch, d, hw, 1, device=device)
    rot = head.rotation

    def step():
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            rot.zero_grad(set_to_none=True)
            rot(F_).float().sum().backward()

    flops = 3 * 2 * d * d * hw * batch  # forward, and about twice that backward
    achieved = rate(step, 1, device, repeat) * flops
    a = torch.randn(batch * hw, d, device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    b = torch.randn(d, d, device=device, dtype=a.dtype)
    peak = rate(lambda: a @ b, 1, device, repeat) * 2 * d * d * hw * batch
    return achieved, peak


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--images", type=int, default=4096, help="JPEGs in the streaming epoch")
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    a = p.parse_args()
    device = torch.device(a.device)
    repeat = 2 if a.quick else 20
    if a.quick:
        a.batch, a.images, a.workers = 8, 32, 1
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(torch.cuda.get_device_name(device), f"torch {torch.__version__}")
    print(f"timm's published rates: {TIMM_CARD}\n")

    with tempfile.TemporaryDirectory() as tmp:
        classes = 10
        root = fabricate("imagenet", f"{tmp}/data", classes=classes, train_per_class=a.images // classes,
                         test_per_class=1, image_size=256)
        ds = build_dataset("imagenet", root, "train")
        for name in ("resnet50", "convnext_tiny"):
            bb = load_backbone(name, "random", image_size=224, device=device).eval()
            bb.to(memory_format=torch.channels_last)
            r = backbone_rate(bb, a.batch, device, repeat, False)
            line = f"{name}: backbone {r:8.0f} img/s"
            if a.compile:
                line += f", compiled {backbone_rate(bb, a.batch, device, repeat, True):8.0f} img/s"
            print(line + f"; timm published {TIMM_PUBLISHED[name]:.0f} img/s -> ratio {r / TIMM_PUBLISHED[name]:.2f}")

            d, h, w = bb.feature_shape()
            head = InfoDisentHead(HeadConfig(d, 1000)).to(device)
            src = StreamingSource(bb, ds, a.batch, num_workers=a.workers, device=device, compile=a.compile)
            cfg = FitConfig(epochs=1)
            opt = make_optimizer(head, cfg)
            train_one_epoch(head, src.batches(0), opt, 0, 10**6, 0, cfg)  # warm-up: workers, cudnn, compile
            sync(device)
            t = time.perf_counter()
            stats, _ = train_one_epoch(head, src.batches(1), opt, 0, 10**6, 0, cfg)
            sync(device)
            epoch = stats.images / (time.perf_counter() - t)
            print(f"   streaming epoch {epoch:8.0f} img/s ({stats.images} JPEGs, {a.workers} workers): "
                  f"{epoch / r:.2f} of the backbone's rate (goal >= 0.9)")

            maps = torch.randn(a.batch, d, h, w, device=device)
            t_head = head_step_time(head, maps, device, repeat)
            print(f"   head forward+backward {t_head * 1e3:7.2f} ms per batch of {a.batch}: "
                  f"{t_head * r / a.batch:.3f} of the backbone's forward (goal <= 0.05)")
            for batch in (64, a.batch):
                achieved, peak = rotation_rate(d, h * w, batch, device, repeat)
                print(f"   rotation D={d}, batch {batch}: {achieved / 1e12:6.2f} TFLOP/s vs matmul "
                      f"{peak / 1e12:6.2f} TFLOP/s -> {achieved / peak:.2f} (goal >= 0.5)")


if __name__ == "__main__":
    main()
