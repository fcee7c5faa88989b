"""The training pipeline behind ``infodisent train`` and ``infodisent demo``.

backbone → datasets → feature cache (or streaming) → InfoDisent head and the
linear-probe reference → test accuracy of both → a run directory:
``config.json``, ``head.safetensors``, ``probe.safetensors``, ``metrics.json``,
``history.csv`` (and ``checkpoint.pt`` for ``--resume``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from .backbone import DEFAULT_BACKBONE, OFFLINE_WEIGHTS, Backbone, load_backbone
from .datasets import ImageDataset, PartsConfig, build_dataset
from .features import FeatureCache, extract_features
from .head import HeadConfig, InfoDisentHead
from .io import atomic_path, atomic_write_json, read_json
from .model import CONFIG, InfoDisent, check_compatible, load
from .probe import fit_linear_probe, probe_accuracy
from .training import CHECKPOINT, CachedSource, FeatureSource, FitConfig, StreamingSource, evaluate, fit

METRICS = "metrics.json"
PROBE_WEIGHTS = "probe.safetensors"


class RunExistsError(FileExistsError):
    """A run directory that already holds a run (use --resume or --overwrite)."""


@dataclass(frozen=True)
class HeadOptions:
    """Head choices a user can set (the feature and class counts come from the data)."""

    orthogonal_map: str = "cayley"
    rotation: bool = True
    pooling: str = "max"
    relaxation: str = "none"
    nonnegative: bool = True
    bias: bool = False


@dataclass(frozen=True)
class RunConfig:
    """Everything ``infodisent train`` needs."""

    out: str
    dataset: str = "parts"
    root: str | None = None
    backbone: str = DEFAULT_BACKBONE
    weights: str = OFFLINE_WEIGHTS
    image_size: int | None = None
    max_classes: int | None = None
    batch_size: int = 64
    num_workers: int = 1
    device: str = "cpu"
    cache_dir: str | None = None
    use_cache: bool = True
    views: int = 1
    strict: bool = False
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    head: HeadOptions = field(default_factory=HeadOptions)
    fit: FitConfig = field(default_factory=FitConfig)
    model_kwargs: dict[str, Any] | None = None
    parts: PartsConfig | None = None  # generation settings of the parts dataset


@dataclass
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    model: InfoDisent
    metrics: dict[str, Any]
    history: pd.DataFrame


def pooled_features(source: FeatureSource) -> tuple[torch.Tensor, torch.Tensor]:
    """Globally average-pooled features (N, D) and labels from any source, one pass."""
    xs, ys = [], []
    for x, y in source.batches(None):
        xs.append(x.float().mean(dim=(2, 3)).cpu())
        ys.append(y.cpu())
    return torch.cat(xs), torch.cat(ys)


def _prepare_run_dir(cfg: RunConfig, backbone: str, num_classes: int) -> Path:
    run_dir = Path(cfg.out)
    has_run = (run_dir / CONFIG).is_file() or (run_dir / CHECKPOINT).is_file()
    if has_run and cfg.resume and (run_dir / CONFIG).is_file():
        check_compatible(read_json(run_dir / CONFIG), backbone, num_classes, run_dir)
    elif has_run and not cfg.resume:
        if not cfg.overwrite:
            raise RunExistsError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite")
        for name in (CONFIG, CHECKPOINT, "head.safetensors", PROBE_WEIGHTS, METRICS, "history.csv"):
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _sources(cfg: RunConfig, backbone: Backbone, train_ds: ImageDataset, test_ds: ImageDataset):
    dev = cfg.device
    if not cfg.use_cache:
        mk = lambda ds: StreamingSource(backbone, ds, cfg.batch_size, cfg.fit.seed, cfg.num_workers, dev)  # noqa: E731
        return mk(train_ds), mk(test_ds), {}
    caches: dict[str, FeatureCache] = {}
    for ds, views in ((train_ds, cfg.views), (test_ds, 1)):
        caches[ds.split] = extract_features(
            backbone, ds, cfg.cache_dir, views=views, seed=cfg.fit.seed, batch_size=cfg.batch_size,
            num_workers=cfg.num_workers, strict=cfg.strict, progress=cfg.progress, device=dev,
        )
    train = CachedSource(caches["train"], cfg.batch_size, cfg.fit.seed, dev)
    test = CachedSource(caches["test"], max(cfg.batch_size, 256), cfg.fit.seed, dev, view=0)
    return train, test, caches


def train_run(cfg: RunConfig) -> RunResult:
    """Run the whole pipeline and write the run directory."""
    torch.manual_seed(cfg.fit.seed)
    backbone = load_backbone(cfg.backbone, cfg.weights, image_size=cfg.image_size, model_kwargs=cfg.model_kwargs, device=cfg.device)
    train_ds = build_dataset(cfg.dataset, cfg.root, "train", max_classes=cfg.max_classes, parts=cfg.parts)
    test_ds = build_dataset(cfg.dataset, cfg.root, "test", max_classes=cfg.max_classes, parts=cfg.parts)
    run_dir = _prepare_run_dir(cfg, backbone.name, train_ds.num_classes)
    head_cfg = HeadConfig(backbone.num_features, train_ds.num_classes, **asdict(cfg.head))
    model = InfoDisent(backbone, InfoDisentHead(head_cfg), train_ds.classes)
    extra = {"run": _run_config_dict(cfg)}
    if cfg.model_kwargs:
        extra["model_kwargs"] = cfg.model_kwargs
    atomic_write_json(run_dir / CONFIG, {**model.config_dict(), **extra})

    t0 = time.perf_counter()
    train_src, test_src, caches = _sources(cfg, backbone, train_ds, test_ds)
    t_features = time.perf_counter() - t0

    t0 = time.perf_counter()
    probe_train = CachedSource(caches["train"], 512, view=0) if caches else train_src
    xtr, ytr = pooled_features(probe_train)
    xte, yte = pooled_features(test_src)
    probe = fit_linear_probe(xtr, ytr, train_ds.num_classes, seed=cfg.fit.seed)
    t_probe = time.perf_counter() - t0
    with atomic_path(run_dir / PROBE_WEIGHTS) as tmp:
        save_file({k: v.contiguous() for k, v in probe.linear.state_dict().items()}, str(tmp))

    t0 = time.perf_counter()
    history = fit(model.head, train_src, test_src, cfg.fit, run_dir, cfg.resume, cfg.progress, cfg.device)
    t_train = time.perf_counter() - t0
    model.head.eval()
    model.save(run_dir, extra)

    head_metrics = evaluate(model.head, test_src, cfg.fit.amp)
    probe_acc = probe_accuracy(probe.linear, xte, yte)
    probe_top5 = float((probe.linear(xte).topk(min(5, train_ds.num_classes), 1).indices == yte[:, None]).any(1).float().mean())
    metrics = {
        "accuracy": {"infodisent": head_metrics["accuracy"], "linear_probe": probe_acc},
        "top5": {"infodisent": head_metrics["top5"], "linear_probe": probe_top5},
        "ratio": head_metrics["accuracy"] / probe_acc if probe_acc else float("nan"),
        "dataset": cfg.dataset,
        "backbone": backbone.name,
        "weights": backbone.weights.spec,
        "num_classes": train_ds.num_classes,
        "num_train_images": len(train_ds),
        "num_test_images": len(test_ds),
        "num_test_evaluated": int(len(yte)),
        "num_skipped_images": sum(len(c.bad_files) for c in caches.values()),
        "skipped_images": {split: [b["path"] for b in c.bad_files] for split, c in caches.items()},
        "linear_probe": {"l2": probe.l2, "holdout_accuracy": {str(k): v for k, v in probe.validation.items()}},
        "feature_cache": {
            split: {"path": str(c.path), "reused": not c.extracted, "extraction_seconds": c.manifest.get("seconds")}
            for split, c in caches.items()
        },
        "seconds": {"features": round(t_features, 2), "linear_probe": round(t_probe, 2), "train": round(t_train, 2)},
    }
    atomic_write_json(run_dir / METRICS, metrics)
    return RunResult(run_dir, model, metrics, history)


def _run_config_dict(cfg: RunConfig) -> dict[str, Any]:
    d = asdict(cfg)
    for k in ("progress", "resume", "overwrite"):
        d.pop(k)
    return d


def load_probe(run_dir: str | Path) -> torch.nn.Linear | None:
    path = Path(run_dir) / PROBE_WEIGHTS
    if not path.is_file():
        return None
    state = load_file(str(path))
    lin = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    lin.load_state_dict(state)
    return lin


def evaluate_run(
    run_dir: str | Path,
    dataset: str | None = None,
    root: str | None = None,
    split: str = "test",
    *,
    cache_dir: str | None = None,
    batch_size: int = 64,
    num_workers: int = 1,
    device: str = "cpu",
    strict: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of a saved run (and of its linear probe) on a dataset split.

    The dataset defaults to the one the run was trained on; its class count must
    match the run's. The result is also written to ``evaluation_<dataset>_<split>.json``.
    """
    run_dir = Path(run_dir)
    model = load(run_dir, device=device)
    run_cfg = read_json(run_dir / CONFIG).get("run", {})
    dataset = dataset or run_cfg.get("dataset", "parts")
    root = root if root is not None else run_cfg.get("root")
    parts = PartsConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in run_cfg["parts"].items()}) if (
        dataset == "parts" and run_cfg.get("parts")) else None
    ds = build_dataset(dataset, root, split, max_classes=run_cfg.get("max_classes"), parts=parts)
    check_compatible(read_json(run_dir / CONFIG), model.backbone.name, ds.num_classes, run_dir)
    cache = extract_features(
        model.backbone, ds, cache_dir, batch_size=batch_size, num_workers=num_workers,
        strict=strict, progress=progress, device=device,
    )
    source = CachedSource(cache, max(batch_size, 256), device=device, view=0)
    m = evaluate(model.head, source)
    out: dict[str, Any] = {
        "run": str(run_dir), "dataset": dataset, "split": split, "num_images": len(ds),
        "num_evaluated": len(source), "skipped_images": [b["path"] for b in cache.bad_files],
        "accuracy": {"infodisent": m["accuracy"]}, "top5": {"infodisent": m["top5"]},
    }
    probe = load_probe(run_dir)
    if probe is not None:
        x, y = pooled_features(source)
        out["accuracy"]["linear_probe"] = probe_accuracy(probe.to(x.device), x, y)
    atomic_write_json(run_dir / f"evaluation_{dataset}_{split}.json", out)
    return out


def demo_config(out: str = "runs/demo", **overrides: Any) -> RunConfig:
    """The embedded default: offline EfficientNet-Lite0 on the synthetic parts dataset."""
    cfg = RunConfig(out=out, dataset="parts", overwrite=True, fit=FitConfig(epochs=20))
    return replace(cfg, **overrides)


def summary_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Accuracy of each head and their ratio, as printed by the CLI."""
    acc, top5 = metrics["accuracy"], metrics["top5"]
    return pd.DataFrame(
        {
            "top-1 accuracy": [acc["infodisent"], acc["linear_probe"]],
            "top-5 accuracy": [top5["infodisent"], top5["linear_probe"]],
        },
        index=pd.Index(["InfoDisent", "linear probe (black box)"], name=f"{metrics['dataset']} test"),
    )


__all__ = [
    "HeadOptions", "RunConfig", "RunExistsError", "RunResult", "demo_config", "evaluate_run",
    "load_probe", "pooled_features", "summary_table", "train_run",
]
