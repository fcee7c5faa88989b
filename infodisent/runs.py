"""The training pipeline behind ``infodisent train`` and ``infodisent demo``.

backbone → datasets → feature cache (or streaming) → InfoDisent head and the
linear-probe reference → test accuracy of both → a run directory:
``config.json``, ``head.safetensors``, ``probe.safetensors``, ``metrics.json``,
``history.csv`` (and ``checkpoint.pt`` for ``--resume``).
"""

from __future__ import annotations

import shutil
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
from .io import atomic_path, atomic_write_json, atomic_write_text, read_json
from .evaluation import explanation_metrics
from .model import CONFIG, InfoDisent, check_compatible, load
from .prototypes import PROTOTYPES, PrototypeIndex, mine_prototypes
from .probe import fit_linear_probe, probe_accuracy
from .sparse import SparseOptions, prune_head
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
    probe: bool = True  # also fit the linear-probe reference
    sparse: SparseOptions | None = None  # SIDE-style pruning to K channels per class, then fine-tuning W


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
        shutil.rmtree(run_dir / PROTOTYPES, ignore_errors=True)
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
    probe_acc = probe_top5 = None
    probe_info: dict[str, Any] | None = None
    if cfg.probe:
        probe_train = CachedSource(caches["train"], 512, view=0) if caches else train_src
        xtr, ytr = pooled_features(probe_train)
        xte, yte = pooled_features(test_src)
        probe = fit_linear_probe(xtr, ytr, train_ds.num_classes, seed=cfg.fit.seed)
        with atomic_path(run_dir / PROBE_WEIGHTS) as tmp:
            save_file({k: v.contiguous() for k, v in probe.linear.state_dict().items()}, str(tmp))
        probe_acc = probe_accuracy(probe.linear, xte, yte)
        probe_top5 = float((probe.linear(xte).topk(min(5, train_ds.num_classes), 1).indices == yte[:, None]).any(1).float().mean())
        probe_info = {"l2": probe.l2, "holdout_accuracy": {str(k): v for k, v in probe.validation.items()}}
    t_probe = time.perf_counter() - t0

    t0 = time.perf_counter()
    history = fit(model.head, train_src, test_src, cfg.fit, run_dir, cfg.resume, cfg.progress, cfg.device)
    dense_metrics = None
    if cfg.sparse is not None:
        dense_metrics = evaluate(model.head, test_src, cfg.fit.amp)
        model, more = _prune_and_finetune(cfg, model, caches, train_src, test_src)
        history = pd.concat([history.assign(phase="train"), more.assign(phase="prune")], ignore_index=True)
        atomic_write_text(run_dir / "history.csv", history.to_csv(index=False))
    t_train = time.perf_counter() - t0
    model.head.eval()
    model.save(run_dir, extra)

    head_metrics = evaluate(model.head, test_src, cfg.fit.amp)
    metrics = {
        "accuracy": {"infodisent": head_metrics["accuracy"], "linear_probe": probe_acc},
        "top5": {"infodisent": head_metrics["top5"], "linear_probe": probe_top5},
        "ratio": head_metrics["accuracy"] / probe_acc if probe_acc else None,
        "dataset": cfg.dataset,
        "backbone": backbone.name,
        "weights": backbone.weights.spec,
        "num_classes": train_ds.num_classes,
        "num_train_images": len(train_ds),
        "num_test_images": len(test_ds),
        "num_test_evaluated": len(test_src),
        "num_skipped_images": sum(len(c.bad_files) for c in caches.values()),
        "skipped_images": {split: [b["path"] for b in c.bad_files] for split, c in caches.items()},
        "linear_probe": probe_info,
        "feature_cache": {
            split: {"path": str(c.path), "reused": not c.extracted, "extraction_seconds": c.manifest.get("seconds")}
            for split, c in caches.items()
        },
        "seconds": {"features": round(t_features, 2), "linear_probe": round(t_probe, 2), "train": round(t_train, 2)},
    }
    if dense_metrics is not None:
        metrics["sparse"] = {"k": cfg.sparse.k, "schedule": cfg.sparse.schedule(backbone.num_features),
                             "finetune_epochs": cfg.sparse.finetune_epochs, "round_epochs": cfg.sparse.round_epochs,
                             "accuracy_before_pruning": dense_metrics["accuracy"]}
    atomic_write_json(run_dir / METRICS, metrics)
    return RunResult(run_dir, model, metrics, history)


def _prune_and_finetune(cfg: RunConfig, model: InfoDisent, caches, train_src, test_src) -> tuple[InfoDisent, pd.DataFrame]:
    """SIDE's second stage: prune to ``k`` channels per class in rounds, fine-tuning after each."""
    sp = cfg.sparse
    importance_src = CachedSource(caches["train"], 256, device=cfg.device, view=0) if caches else train_src
    head, rows, epoch = model.head, [], cfg.fit.epochs
    schedule = sp.schedule(head.config.num_features)
    for i, k in enumerate(schedule):
        head = prune_head(head, importance_src, k)
        last = i == len(schedule) - 1
        ft = replace(cfg.fit, epochs=sp.finetune_epochs if last else sp.round_epochs, lr=sp.finetune_lr or cfg.fit.lr,
                     train_rotation=sp.finetune_rotation, warmup_epochs=0)
        more = fit(head, train_src, test_src, ft, None, False, cfg.progress, cfg.device)
        more["epoch"] += epoch
        more["channels_per_class"] = k
        epoch += ft.epochs
        rows.append(more)
    return InfoDisent(model.backbone, head, model.class_names), pd.concat(rows, ignore_index=True)


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


def run_dataset(run_dir: str | Path, dataset: str | None = None, root: str | None = None, split: str = "test") -> ImageDataset:
    """A split of the run's own dataset (default) or of another one with the same classes."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / CONFIG) if (run_dir / CONFIG).is_file() else None
    if config is None:
        raise FileNotFoundError(f"{run_dir} is not an InfoDisent run directory (no {CONFIG})")
    run_cfg = config.get("run", {})
    dataset = dataset or run_cfg.get("dataset", "parts")
    root = root if root is not None else run_cfg.get("root")
    parts = PartsConfig.from_dict(run_cfg["parts"]) if dataset == "parts" and run_cfg.get("parts") else None
    ds = build_dataset(dataset, root, split, max_classes=run_cfg.get("max_classes"), parts=parts)
    check_compatible(config, config["backbone"]["name"], ds.num_classes, run_dir)
    return ds


def mine_run(
    run_dir: str | Path,
    dataset: str | None = None,
    root: str | None = None,
    split: str = "train",
    *,
    k: int = 10,
    cache_dir: str | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    num_workers: int = 1,
    device: str = "cpu",
    strict: bool = False,
    progress: bool = True,
    model: InfoDisent | None = None,
) -> PrototypeIndex:
    """Mine the prototype index of a saved run on a split (``infodisent mine``), written to ``<run>/prototypes/<split>``."""
    model = model or load(run_dir, device=device)
    ds = run_dataset(run_dir, dataset, root, split)
    return mine_prototypes(
        model, ds, run_dir, k=k, cache_dir=cache_dir, use_cache=use_cache, batch_size=batch_size,
        num_workers=num_workers, device=device, strict=strict, progress=progress,
    )


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
    explanations: bool = False,
    k: int = 10,
    stability: bool = True,
) -> dict[str, Any]:
    """Accuracy of a saved run (and of its linear probe) on a dataset split.

    The dataset defaults to the one the run was trained on; its class count must
    match the run's. The result is also written to ``evaluation_<dataset>_<split>.json``.
    With ``explanations``, the split is mined (``<run>/prototypes/<split>``) and
    :func:`~infodisent.evaluation.explanation_metrics` added under ``"explanations"``;
    for the run's own test split they also go into ``metrics.json``.
    """
    run_dir = Path(run_dir)
    model = load(run_dir, device=device)
    ds = run_dataset(run_dir, dataset, root, split)
    cache = extract_features(
        model.backbone, ds, cache_dir, batch_size=batch_size, num_workers=num_workers,
        strict=strict, progress=progress, device=device,
    )
    source = CachedSource(cache, max(batch_size, 256), device=device, view=0)
    m = evaluate(model.head, source)
    out: dict[str, Any] = {
        "run": str(run_dir), "dataset": ds.name, "split": split, "num_images": len(ds),
        "num_evaluated": len(source), "skipped_images": [b["path"] for b in cache.bad_files],
        "accuracy": {"infodisent": m["accuracy"]}, "top5": {"infodisent": m["top5"]},
    }
    probe = load_probe(run_dir)
    if probe is not None:
        x, y = pooled_features(source)
        out["accuracy"]["linear_probe"] = probe_accuracy(probe.to(x.device), x, y)
    if explanations:
        index = mine_prototypes(model, ds, run_dir, k=k, cache_dir=cache_dir, batch_size=batch_size,
                                device=device, progress=progress)
        out["explanations"] = explanation_metrics(model, index, stability=stability)
        run_cfg = read_json(run_dir / CONFIG).get("run", {})
        if ds.name == run_cfg.get("dataset", ds.name) and split == "test" and (run_dir / METRICS).is_file():
            metrics = read_json(run_dir / METRICS)
            metrics["explanations"] = out["explanations"]
            atomic_write_json(run_dir / METRICS, metrics)
    atomic_write_json(run_dir / f"evaluation_{ds.name}_{split}.json", out)
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
    "load_probe", "mine_run", "pooled_features", "run_dataset", "summary_table", "train_run",
]
