"""The field's own instruments on InfoDisent and its post-hoc peers: Quantus metrics, with settings chosen
once and stated, on the input-space maps of several attribution methods for one model's decisions (the
methods, as Quantus ``explain_func`` functions: :func:`infodisent.explain.interop.explain_func`).

:func:`metric_table` names each Quantus metric, its family and its settings (Quantus's defaults unless the
table says otherwise, and why). Metrics that only read the maps (localisation, complexity) score every
image; metrics that call the model tens of times per image (faithfulness, randomisation, robustness)
score the first ``probes`` of them (:class:`FieldSettings`). :func:`spread_over_classes` picks the images
(every class's share equal) and :func:`object_masks` their ground truth (CUB's boxes, the ``parts`` masks).

Example:
    >>> x, y, s = ...                                     # images, predicted classes, ground-truth masks
    >>> maps, seconds = explain_methods(model, x, y, ["InfoDisent", "Grad-CAM"])   # explain.interop
    >>> table = score_methods(model, x, y, s, maps, FieldSettings(probes=20))
"""

from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core.geometry import ViewGeometry
from ..core.model import InfoDisent
from ..errors import InputError
from ..explain.interop import explain_func

# ----------------------------------------------------------------------------- images and ground truth


def spread_over_classes(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` images with every class's share as equal as it can be: each class's first image in
    class order, then each class's second, and so on (so any first part of them spreads over the classes too).

    Args:
        labels: the class of every image of a split.
        n: how many to take (all of them where the split has fewer).
    """
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    order = [idx[r] for r in range(max(map(len, by_class))) for idx in by_class if r < len(idx)]
    return np.asarray(order[:n], dtype=int)


def object_masks(dataset, transform, indices: np.ndarray) -> np.ndarray | None:
    """The object each image shows, as ``(N, 1, S, S)`` boolean masks of the model's view: the CUB bounding
    box, or on ``parts`` the union of the part masks (the two parts that make the class); None where the
    dataset has neither.

    Args:
        dataset: a split with ``boxes`` (CUB) or ``masks`` (``parts``).
        transform: the model's evaluation transform (resize and centre crop: the view).
        indices: the images.
    """
    boxes = getattr(dataset, "boxes", None)
    if boxes is None and not hasattr(dataset, "masks"):
        return None
    out = []
    for i in indices:
        if boxes is not None:
            img = dataset.load_image(int(i))
            m = np.zeros((img.size[1], img.size[0]), dtype=bool)
            b = boxes.iloc[int(i)]
            m[int(b["y"]):int(np.ceil(b["y"] + b["height"])), int(b["x"]):int(np.ceil(b["x"] + b["width"]))] = True
        else:
            m = dataset.masks(int(i)).any(0)
        out.append(ViewGeometry.from_transform(transform, (m.shape[1], m.shape[0])).view_mask(m))
    return np.stack(out)[:, None]


# ----------------------------------------------------------------------------- metrics


class Memo(nn.Module):
    """A model whose forward remembers its answers by the input's bytes. Faithfulness Correlation draws its
    random pixel subsets from numpy's global generator; with the generator reseeded before each method,
    every method perturbs the same pixels, and the model answers each perturbed batch once for all of them
    (the scores are unchanged: the memo returns what the model returned).

    Args:
        model: the model to answer for.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._answers: dict[bytes, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output for ``x``, computed once per distinct input (same bytes and shape).

        Args:
            x: a batch of model inputs."""
        digest = hashlib.blake2b(x.detach().cpu().numpy().tobytes(), digest_size=16).digest()
        key = digest + str(tuple(x.shape)).encode()
        if key not in self._answers:
            self._answers[key] = self.model(x).detach()
        return self._answers[key]


@dataclass(frozen=True)
class FieldSettings:
    """What the benchmark scores, and the settings of the metrics that are not Quantus's defaults.

    Args:
        probes: images scored by the metrics that call the model per image. Default 20: the first 20.
        faithfulness_runs: Faithfulness Correlation's random subsets per image. Default 100, Quantus's.
        region_steps: Region Perturbation's perturbed 8 x 8 patches per image. Default 100, Quantus's.
        sensitivity_samples: Max-Sensitivity's noisy copies per image. Default 10 (Quantus's 200 would cost
            Integrated Gradients 2,000 backward passes per image).
        seed: numpy's seed before each method's call of a random metric. Default 42, Quantus's.
    """

    probes: int = 20
    faithfulness_runs: int = 100
    region_steps: int = 100
    sensitivity_samples: int = 10
    seed: int = 42


@dataclass(frozen=True)
class Metric:
    """One Quantus metric as the benchmark calls it.

    Args:
        name: its name in tables.
        family: localisation, complexity, faithfulness, randomisation or robustness.
        better: ``"higher"`` or ``"lower"``.
        scope: ``"images"`` (it reads the maps only: every image) or ``"probes"`` (it calls the model per
            image: the first :attr:`FieldSettings.probes`).
        settings: its Quantus class and settings in words, with :class:`FieldSettings` fields in braces.
        build: ``(settings, classes) ->`` the Quantus metric.
        positive: score each map's positive part only. Default False.
        curve: Quantus returns a curve per image, scored by its mean. Default False.
    """

    name: str
    family: str
    better: str
    scope: str
    settings: str
    build: Callable[[FieldSettings, int], Any]
    positive: bool = False
    curve: bool = False


def _metrics() -> list[Metric]:
    import quantus

    quiet = {"disable_warnings": True, "display_progressbar": False}
    return [
        Metric("Pointing Game", "localisation", "higher", "images",
               "quantus.PointingGame(), defaults (is the map's maximum inside the mask)",
               lambda s, c: quantus.PointingGame(**quiet)),
        Metric("Relevance Mass Accuracy", "localisation", "higher", "images",
               "quantus.RelevanceMassAccuracy(), defaults, on each map's positive part: the share of the "
               "evidence for the class inside the mask (on a signed map the default share is unbounded: "
               "negative mass outside the mask pushes it above 1)",
               lambda s, c: quantus.RelevanceMassAccuracy(**quiet), positive=True),
        Metric("Sparseness", "complexity", "higher", "images",
               "quantus.Sparseness(), defaults (the Gini index of the absolute map)",
               lambda s, c: quantus.Sparseness(**quiet)),
        Metric("Faithfulness Correlation", "faithfulness", "higher", "probes",
               "quantus.FaithfulnessCorrelation(nr_runs={faithfulness_runs}, subset_size=224, perturb_baseline="
               "'black'), Quantus's defaults otherwise (Pearson)",
               lambda s, c: quantus.FaithfulnessCorrelation(nr_runs=s.faithfulness_runs, subset_size=224,
                                                           perturb_baseline="black", return_aggregate=False,
                                                           **quiet)),
        Metric("Region Perturbation (AOPC)", "faithfulness", "higher", "probes",
               "quantus.RegionPerturbation(patch_size=8, regions_evaluation={region_steps}, order='morf', "
               "perturb_baseline='black'); the score is the mean logit drop over the steps (AOPC)",
               lambda s, c: quantus.RegionPerturbation(patch_size=8, regions_evaluation=s.region_steps,
                                                      order="morf", perturb_baseline="black", **quiet),
               curve=True),
        Metric("Random Logit", "randomisation", "lower", "probes",
               "quantus.RandomLogit(num_classes=C, seed={seed}), defaults otherwise (SSIM of the map and a random "
               "other class's map)",
               lambda s, c: quantus.RandomLogit(num_classes=c, seed=s.seed, **quiet)),
        Metric("MPRT", "randomisation", "lower", "probes",
               "quantus.MPRT(layer_order='top_down', skip_layers=True, return_last_correlation=True, seed={seed}): "
               "Spearman correlation of the map with the fully randomised model's map (every layer, head first)",
               lambda s, c: quantus.MPRT(layer_order="top_down", skip_layers=True, return_last_correlation=True,
                                         seed=s.seed, **quiet)),
        Metric("Max-Sensitivity", "robustness", "lower", "probes",
               "quantus.MaxSensitivity(nr_samples={sensitivity_samples}, lower_bound=0.2), defaults otherwise "
               "(uniform noise, Frobenius norms)",
               lambda s, c: quantus.MaxSensitivity(nr_samples=s.sensitivity_samples, lower_bound=0.2, **quiet)),
    ]


def metric_table(settings: FieldSettings | None = None) -> pd.DataFrame:
    """The metrics with their family, direction, scope and settings, for the results page.

    Args:
        settings: the benchmark's settings. Default None: :class:`FieldSettings`'s defaults.
    """
    s = asdict(settings or FieldSettings())
    return pd.DataFrame([{"metric": m.name, "family": m.family, "better": m.better, "images": m.scope,
                          "settings": m.settings.format(**s)} for m in _metrics()])


def _per_image(metric: Metric, q: Any, scores: Any) -> np.ndarray:
    if metric.curve:
        return np.asarray([np.mean(curve) for curve in q.evaluation_scores], dtype=float)
    return np.asarray(scores, dtype=float).reshape(-1)


def score_methods(model: InfoDisent, images: torch.Tensor, targets: torch.Tensor, masks: np.ndarray | None,
                  maps: dict[str, np.ndarray], settings: FieldSettings | None = None,
                  metrics: Sequence[str] | None = None, batch_size: int = 32, progress: bool = True
                  ) -> pd.DataFrame:
    """Score each method's maps with each Quantus metric.

    Args:
        model: the explained model, in eval mode.
        images: the preprocessed images ``(N, 3, S, S)``.
        targets: the explained classes ``(N,)`` (the model's predictions).
        masks: ground-truth object masks ``(N, 1, S, S)`` for the localisation metrics, or None to skip them.
        maps: ``{method: (N, 1, S, S)}`` from :func:`explain_methods`.
        settings: the benchmark's settings. Default None: :class:`FieldSettings`'s defaults.
        metrics: names from :func:`metric_table`. Default None: all of them.
        batch_size: images per Quantus batch. Default 32.
        progress: print a line per metric and method. Default True.

    Returns:
        One row per (method, metric): ``method, metric, family, better, n, mean, sem, seconds`` (``seconds``:
        the metric's wall time for that method).
    """
    settings = settings or FieldSettings()
    chosen = [m for m in _metrics() if metrics is None or m.name in metrics]
    unknown = set(metrics or []) - {m.name for m in chosen}
    if unknown:
        raise InputError(f"unknown metrics {sorted(unknown)}; choose from {list(metric_table().metric)}")
    x, y = images.cpu().numpy().astype(np.float32), np.asarray(targets.cpu(), dtype=np.int64)
    device = str(next(model.parameters()).device)
    c = model.head.config.num_classes
    rows = []
    for metric in chosen:
        if metric.family == "localisation" and masks is None:
            continue
        n = len(x) if metric.scope == "images" else min(settings.probes, len(x))
        memo = Memo(model).eval() if metric.name == "Faithfulness Correlation" else model
        for method, a in maps.items():
            q = metric.build(settings, c)
            np.random.seed(settings.seed)
            start = time.perf_counter()
            a = np.clip(a, 0, None) if metric.positive else a
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores = q(model=memo, x_batch=x[:n], y_batch=y[:n], a_batch=a[:n],
                           s_batch=None if masks is None else masks[:n].astype(np.float32),
                           explain_func=explain_func, explain_func_kwargs={"method": method},
                           softmax=False, device=device, batch_size=batch_size, channel_first=True)
            values = _per_image(metric, q, scores)
            seconds = time.perf_counter() - start
            ok = values[np.isfinite(values)]
            rows.append({"method": method, "metric": metric.name, "family": metric.family, "better": metric.better,
                         "n": len(ok), "mean": float(ok.mean()) if len(ok) else float("nan"),
                         "sem": float(ok.std(ddof=1) / np.sqrt(len(ok))) if len(ok) > 1 else float("nan"),
                         "seconds": seconds})
            if progress:
                print(f"  {metric.name:<28} {method:<22} {rows[-1]['mean']:+.3f} (n={len(ok)}, {seconds:.0f} s)",
                      flush=True)
    return pd.DataFrame(rows)


def ranks(table: pd.DataFrame) -> pd.DataFrame:
    """Each method's rank per metric (1 = best, by the metric's direction), methods × metrics.

    Args:
        table: :func:`score_methods`'s rows.
    """
    out = {}
    for metric, part in table.groupby("metric", sort=False):
        higher = part["better"].iloc[0] == "higher"
        out[metric] = part.set_index("method")["mean"].rank(ascending=not higher, method="min")
    return pd.DataFrame(out)


__all__ = ["FieldSettings", "Memo", "Metric", "metric_table", "object_masks", "ranks", "score_methods",
           "spread_over_classes"]
