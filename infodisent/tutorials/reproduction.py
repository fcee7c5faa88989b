"""The paper's tables as data: what was published, what each profile runs, and the table that compares them.

The reproduction notebooks (``notebooks/reproduction/``) are thin over this module. Each table has three
profiles (:data:`PROFILES`):

- ``full``: the paper's setting: the real dataset at a root you give, timm's pretrained weights (or a local
  file), the dense head, a GPU, streaming where a feature cache would not fit (ImageNet);
- ``smoke``: a fabricated miniature in the same on-disk layout (:func:`~infodisent.tutorials.fabricate`), on
  the CPU: it checks the pipeline, its numbers mean nothing;
- ``cpu-real``: what a 2-core CPU without a download can run for real: the offline EfficientNet-Lite0 on
  Imagenette (ImageNet layout) or CUB-200-2011 classes 1-50.

Published numbers (top-1, %) are in :data:`IMAGENET` and :data:`FINE_GRAINED`; SIDE's claims in :data:`SIDE`.

Example:
    >>> configs = imagenet_configs("smoke", out="runs/repro")
    >>> rows = [summary(train_run(cfg).open()) for cfg in configs.values()]
    >>> compare_imagenet(pd.DataFrame(rows))
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..core.backbone import Backbone
from ..data.loader import image_batches
from ..errors import InputError
from ..records.data import PartsConfig
from ..records.options import FitConfig, SparseOptions
from ..records.results import Accuracy
from ..records.run import RunConfig
from ..run import Run
from ..train.teacher import classifier_columns
from ..train.training import classification_metrics
from .fabricate import fabricate

PROFILES = ("smoke", "cpu-real", "full")
OFFLINE_NAME = "tf_efficientnet_lite0"  # the backbone of the cpu-real and smoke profiles

# InfoDisent (arXiv 2409.10329): ImageNet top-1 of the frozen backbone's own classifier and of InfoDisent on it.
# The names carry timm's weights tag of the paper's black boxes (torchvision's ResNets and DenseNet, the
# ConvNeXt and Swin authors' ImageNet-1k weights), so the full profile loads the very classifiers it compares to.
IMAGENET = pd.DataFrame({
    "backbone": ["resnet34.tv_in1k", "resnet50.tv_in1k", "densenet121.tv_in1k", "convnext_large.fb_in1k",
                 "swin_small_patch4_window7_224.ms_in1k"],
    "black_box": [73.3, 76.1, 74.4, 84.4, 83.7],
    "infodisent": [64.1, 67.8, 66.6, 82.8, 81.4],
})
# its best fine-grained top-1 (Stanford Dogs was evaluated too; no number is recorded here)
FINE_GRAINED = {"cub": 84.1, "stanford_cars": 92.9, "stanford_dogs": None}
FINE_GRAINED_CLASSES = {"cub": 200, "stanford_cars": 196, "stanford_dogs": 120}  # the task those numbers are on
# SIDE (arXiv 2507.19321): prototypes per class after pruning, at matched accuracy, and the size it saves;
# InfoDisent's example decision: channels above 0.2 of the largest contribution, and the top 4's share
SIDE = {"channels_per_class": 5, "backbone": "SwinV2-S", "size_reduction": 0.90,
        "infodisent_above_0.2": 21, "infodisent_channels": 768, "infodisent_top4_share": 0.30}

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def check_profile(profile: str) -> str:
    """``profile`` if it is one of :data:`PROFILES`, else an :class:`InputError`.

    Args:
        profile: a profile's name."""
    if profile not in PROFILES:
        raise InputError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return profile


def real_data(name: str, root: str | Path | None = None) -> Path:
    """The folder of a ``cpu-real`` dataset (``imagenette`` or ``cub50``), with an error that says where it was
    looked for.

    Args:
        name: ``"imagenette"`` or ``"cub50"``.
        root: its folder. Default None: under ``shared/datasets/`` beside the checkout."""
    folders = {"imagenette": "imagenette_mini", "cub50": "cub50/CUB_200_2011"}
    if name not in folders:
        raise InputError(f"unknown cpu-real dataset {name!r}; choose one of {', '.join(folders)}")
    path = Path(root) if root is not None else SHARED_DATA / folders[name]
    if not path.is_dir():
        raise FileNotFoundError(f"the cpu-real profile needs {name} at {path} (pass its folder as root=); "
                                "use profile='smoke' where it is not on this machine")
    return path


def _smoke(out: Path, dataset: str, epochs: int = 2) -> RunConfig:
    root = fabricate(dataset, out / "data" / dataset, classes=6, train_per_class=6, test_per_class=4)
    return RunConfig(out=str(out / dataset), dataset=dataset, root=str(root), num_workers=0, overwrite=True,
                     fit=FitConfig(epochs=epochs), sparse=None)


def imagenet_configs(profile: str, out: str | Path = "runs/reproduction/imagenet", root: str | Path | None = None,
                     weights: str = "timm", device: str = "cuda", epochs: int = 30,
                     progress: bool = True) -> dict[str, RunConfig]:
    """One run per backbone of the ImageNet table: the paper's dense head on the frozen backbone.

    Args:
        profile: one of :data:`PROFILES`.
        out: the folder the runs go under, one subfolder per backbone. Default
            ``"runs/reproduction/imagenet"``.
        root: the dataset's folder: ImageNet for ``full`` (required there), Imagenette for ``cpu-real``.
            Default None: for ``cpu-real``, :func:`real_data`'s folder; unused by ``smoke``.
        weights: the backbones' weights for ``full``: ``"timm"`` (pretrained) or a local file. Default ``"timm"``.
        device: where ``full`` runs. Default ``"cuda"``.
        epochs: training epochs of the head for ``cpu-real`` and ``full`` (``smoke`` trains 2). Default 30.
        progress: show progress bars while the runs train. Default True.
    Returns:
        The run configurations, by backbone name."""
    return _with_progress(_imagenet_configs(profile, Path(out), root, weights, device, epochs), progress)


def _with_progress(configs: dict[str, RunConfig], progress: bool) -> dict[str, RunConfig]:
    return {name: replace(cfg, progress=progress) for name, cfg in configs.items()}


def _imagenet_configs(profile, out, root, weights, device, epochs) -> dict[str, RunConfig]:
    if check_profile(profile) == "smoke":
        base = _smoke(out, "imagenet")
        return {"tf_efficientnet_lite0": replace(base, out=str(out / "tf_efficientnet_lite0")),
                "test_convnext": replace(base, out=str(out / "test_convnext"), backbone="test_convnext",
                                         weights="random", image_size=96)}
    if profile == "cpu-real":
        return {"tf_efficientnet_lite0": RunConfig(
            out=str(out / "tf_efficientnet_lite0"), dataset="imagenet", root=str(real_data("imagenette", root)),
            num_workers=1, overwrite=True, sparse=None, fit=FitConfig(epochs=epochs))}
    if root is None:
        raise InputError("the full profile needs root= (an ImageNet folder: train/<wnid>/, val/<wnid>/)")
    return {name: RunConfig(out=str(out / name), dataset="imagenet", root=str(root), backbone=name, weights=weights,
                            device=device, use_cache=False, batch_size=256, num_workers=8, overwrite=True,
                            sparse=None, fit=FitConfig(epochs=epochs))
            for name in IMAGENET["backbone"]}


def fine_grained_configs(profile: str, out: str | Path = "runs/reproduction/fine_grained",
                         roots: dict[str, str] | None = None, backbones: tuple[str, ...] = tuple(IMAGENET["backbone"]),
                         weights: str = "timm", device: str = "cuda", epochs: int = 30,
                         progress: bool = True) -> dict[str, RunConfig]:
    """Runs of the fine-grained table, keyed ``dataset/backbone``; ``full`` needs ``roots`` per dataset.

    Args:
        profile: one of :data:`PROFILES`.
        out: the folder the runs go under. Default ``"runs/reproduction/fine_grained"``.
        roots: each dataset's folder, by name (``"cub"``, ``"stanford_cars"``, ``"stanford_dogs"``); ``full``
            needs all three, ``cpu-real`` reads ``"cub"`` (a 50-class CUB). Default None: for ``cpu-real``,
            :func:`real_data`'s folder; unused by ``smoke``.
        backbones: the backbones ``full`` runs on each dataset. Default those of :data:`IMAGENET`.
        weights: the backbones' weights for ``full``: ``"timm"`` (pretrained) or a local file. Default ``"timm"``.
        device: where ``full`` runs. Default ``"cuda"``.
        epochs: training epochs of the head for ``cpu-real`` and ``full`` (``smoke`` trains 2). Default 30.
        progress: show progress bars while the runs train. Default True."""
    return _with_progress(_fine_grained_configs(profile, Path(out), roots, backbones, weights, device, epochs),
                          progress)


def _fine_grained_configs(profile, out, roots, backbones, weights, device, epochs) -> dict[str, RunConfig]:
    if check_profile(profile) == "smoke":
        return {f"{d}/{OFFLINE_NAME}": _smoke(out, d) for d in FINE_GRAINED}
    if profile == "cpu-real":
        root = real_data("cub50", (roots or {}).get("cub"))
        return {f"cub/{OFFLINE_NAME}": RunConfig(out=str(out / "cub"), dataset="cub", root=str(root), num_workers=1,
                                                 overwrite=True, sparse=None, fit=FitConfig(epochs=epochs))}
    missing = [d for d in FINE_GRAINED if d not in (roots or {})]
    if missing:
        raise InputError(f"the full profile needs roots= for {', '.join(missing)}")
    return {f"{d}/{b}": RunConfig(out=str(out / d / b), dataset=d, root=str(roots[d]), backbone=b,  # type: ignore[index]
                                  weights=weights, device=device, batch_size=128, num_workers=8, overwrite=True,
                                  sparse=None, fit=FitConfig(epochs=epochs))
            for d in FINE_GRAINED for b in backbones}


def side_configs(profile: str, out: str | Path = "runs/reproduction/side", root: str | Path | None = None,
                 ks: tuple[int, ...] = (8, 5, 3, 1), weights: str = "timm", device: str = "cuda",
                 backbone: str = "swinv2_small_window8_256", epochs: int = 30,
                 progress: bool = True) -> dict[str, RunConfig]:
    """SIDE's size-vs-accuracy sweep: the dense head, then SIDE's sigmoid training pruned to each ``K``
    channels per class, and at SIDE's K = 5 also the softmax head pruned the same way; one run each.

    Args:
        profile: one of :data:`PROFILES`.
        out: the folder the runs go under. Default ``"runs/reproduction/side"``.
        root: the dataset's folder: ImageNet for ``full`` (required there), the 50-class CUB for ``cpu-real``.
            Default None: for ``cpu-real``, :func:`real_data`'s folder; ``smoke`` uses the ``parts`` dataset.
        ks: the channels per class pruned to, one sweep run each; ``smoke`` keeps the first two. Default
            ``(8, 5, 3, 1)``.
        weights: the backbone's weights for ``full``: ``"timm"`` (pretrained) or a local file. Default ``"timm"``.
        device: where ``full`` runs. Default ``"cuda"``.
        backbone: the backbone ``full`` runs on. Default ``"swinv2_small_window8_256"`` (SIDE's SwinV2-S).
        epochs: training epochs of the head for ``cpu-real`` and ``full`` (``smoke`` trains 2). Default 30.
        progress: show progress bars while the runs train. Default True.
    Returns:
        The run configurations by name: ``"dense"``, ``"side K=<k>"`` and ``"softmax K=5"``."""
    out = Path(out)
    if isinstance(ks, (str, bytes)) or not all(isinstance(k, int) and k >= 1 for k in ks):
        raise InputError(f"ks must be channel counts (integers >= 1), got {ks!r} (papermill: -y 'KS: [5, 1]')")
    if check_profile(profile) == "smoke":
        base = RunConfig(out="", dataset="parts", num_workers=0, fit=FitConfig(epochs=2), max_classes=6,
                         parts=PartsConfig(image_size=128, train_per_class=6, test_per_class=4))
    elif profile == "cpu-real":
        base = RunConfig(out="", dataset="cub", root=str(real_data("cub50", root)), num_workers=1,
                         fit=FitConfig(epochs=epochs))
    else:
        if root is None:
            raise InputError("the full profile needs root= (an ImageNet folder: train/<wnid>/, val/<wnid>/)")
        base = RunConfig(out="", dataset="imagenet", root=str(root), backbone=backbone, weights=weights,
                         device=device, use_cache=False, batch_size=256, num_workers=8, fit=FitConfig(epochs=epochs))
    # shorter fine-tuning off the GPU: the smoke profile checks the pipeline, cpu-real must fit a CPU session
    finetune, rounds = {"smoke": (2, 1), "cpu-real": (6, 2)}.get(profile, (10, 3))
    if profile == "smoke":
        ks = ks[:2]
    runs = {"dense": replace(base, out=str(out / "dense"), sparse=None, overwrite=True)}
    for k in ks:
        sparse = SparseOptions(channels_per_class=k, finetune_epochs=finetune, round_epochs=rounds)
        runs[f"side K={k}"] = replace(base, out=str(out / f"side_k{k}"), head=replace(base.head, bias=True),
                                      fit=replace(base.fit, loss="sigmoid"), sparse=sparse, probe=False,
                                      overwrite=True)
        if k == SIDE["channels_per_class"]:  # the loss's share of the result, at SIDE's own K
            runs[f"softmax K={k}"] = replace(base, out=str(out / f"softmax_k{k}"), sparse=sparse, probe=False,
                                             overwrite=True)
    return _with_progress(runs, progress)


@torch.no_grad()
def black_box_accuracy(backbone: Backbone, dataset, batch_size: int = 64, num_workers: int = 0,
                       device: str | torch.device = "cpu") -> Accuracy | None:
    """Top-1 and top-5 of the backbone's own ImageNet classifier on an ImageNet-layout split (the "black box"
    column of the paper's table), among the split's classes: on ImageNet-1k the usual 1000-way accuracy, on a
    subset (Imagenette) the same task InfoDisent's head solves. None when the classes are not ImageNet's.

    Args:
        backbone: the backbone whose ImageNet classifier is scored.
        dataset: an ImageNet-layout split.
        batch_size: images per batch. Default 64.
        num_workers: image-loading processes. Default 0: load in this process.
        device: where the classifier runs. Default ``"cpu"``."""
    cols = classifier_columns(backbone, dataset)
    if cols is None or cols[0] != "imagenet":
        return None
    if len(dataset) == 0:
        raise InputError("black_box_accuracy: the split has no images")
    net = backbone.model.eval().to(device)
    columns = torch.as_tensor(cols[1], device=device)  # the dataset's classes, in its order
    logits, labels = [], []
    with torch.no_grad():
        for x, y in image_batches(backbone, dataset, batch_size, num_workers, device):
            logits.append(net(x).float()[:, columns].cpu())
            labels.append(y)
    acc = classification_metrics(torch.cat(logits), torch.cat(labels))
    return Accuracy(top1=acc.top1, top5=acc.top5)


def summary(run: Run, **extra: Any) -> dict[str, Any]:
    """One row of a reproduction table: the run's test top-1 (%), its linear probe's, the dense head's
    (a pruned run), channels per class, and ``extra`` columns.

    Args:
        run: an opened, trained run.
        **extra: further columns of the row, by name (e.g. ``black_box``)."""
    m = run.metrics
    pct = (lambda a: None if a is None else round(100 * a.top1, 1))
    return {
        "dataset": m.dataset, "backbone": m.backbone, "weights": m.weights, "classes": m.num_classes,
        "test_images": m.num_test_evaluated, "infodisent": pct(m.infodisent), "linear_probe": pct(m.linear_probe),
        "dense": pct(m.sparse.dense) if m.sparse else None,
        "channels_per_class": run.config.model.channels_per_class, **extra,
    }


def compare_imagenet(ours: pd.DataFrame) -> pd.DataFrame:
    """Our rows (``backbone``, ``black_box``, ``infodisent``, ``linear_probe``, ...) and the published ImageNet
    table, one row per backbone of either. Where the paper did not use a backbone, the comparable quantity is the
    share of the black box's top-1 that InfoDisent keeps (``kept``).

    Args:
        ours: our rows, one per run (:func:`summary` with a ``black_box`` column)."""
    pub = IMAGENET.rename(columns={"black_box": "published black box", "infodisent": "published InfoDisent"})
    order = list(pub["backbone"]) + [b for b in ours["backbone"] if b not in set(pub["backbone"])]
    table = ours.merge(pub, on="backbone", how="outer").set_index("backbone").reindex(order).reset_index()
    table["difference"] = table["infodisent"] - table["published InfoDisent"]
    table["kept (ours)"] = _ratio(table["infodisent"], table["black_box"])
    table["kept (published)"] = _ratio(table["published InfoDisent"], table["published black box"])
    return table


def compare_fine_grained(ours: pd.DataFrame) -> pd.DataFrame:
    """Our best top-1 per dataset next to the paper's best fine-grained top-1. ``difference`` is left empty
    where our run does not have all the dataset's classes (``same_task`` is False): a 50-species CUB is
    another task than the paper's 200 species.

    Args:
        ours: our rows, one per run (:func:`summary`'s, with ``dataset``, ``classes`` and ``infodisent``)."""
    best = ours.sort_values("infodisent", ascending=False).groupby("dataset", sort=False).head(1)
    best = best.assign(published=best["dataset"].map(FINE_GRAINED),
                       same_task=best["classes"] == best["dataset"].map(FINE_GRAINED_CLASSES))
    best = best.sort_values("dataset").reset_index(drop=True)
    best["difference"] = (best["infodisent"] - best["published"]).where(best["same_task"])
    return best


def side_row(name: str, run: Run, explanations) -> dict[str, Any]:
    """One row of the SIDE table: the run's accuracy and explanation sizes (``explanations``: its
    :class:`~infodisent.records.results.ExplanationMetrics` on the test split).

    Args:
        name: the row's name in the ``head`` column (e.g. ``"side K=5"``).
        run: the opened, trained run.
        explanations: its explanation metrics on the test split."""
    cfg = run.config.run
    size = explanations.size
    return {"head": name, "loss": cfg.fit.loss if cfg is not None else None,
            "channels_per_class": run.config.model.channels_per_class, "top1": round(100 * run.metrics.infodisent.top1, 1),
            "global_size": size.global_size, "local_size": size.local_size,
            "channels_for_90pct": size.channels_for_mass, "above_0.2_of_max": size.above_relative,
            "top4_share": size.top_share}


def compare_side(rows: pd.DataFrame) -> pd.DataFrame:
    """SIDE's claim, row by row: accuracy against the dense head (points) and how much smaller the explanation
    is (``size_reduction``: 1 - local size / the dense head's local size); the first row must be the dense head.

    Args:
        rows: :func:`side_row`'s rows, the dense head's first."""
    dense = rows.iloc[0]
    table = rows.copy()
    table["top1 vs dense"] = (table["top1"] - dense["top1"]).round(1)
    table["size_reduction"] = (1 - table["local_size"] / dense["local_size"]).round(3)
    return table


def _ratio(a: pd.Series, b: pd.Series) -> pd.Series:
    return (pd.to_numeric(a) / pd.to_numeric(b)).round(3).replace([np.inf, -np.inf], np.nan)


__all__ = [
    "FINE_GRAINED", "IMAGENET", "PROFILES", "SIDE", "black_box_accuracy", "check_profile", "compare_fine_grained",
    "compare_imagenet", "compare_side", "fine_grained_configs", "imagenet_configs", "real_data", "side_configs",
    "side_row", "summary",
]
