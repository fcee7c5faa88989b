"""Find a shortcut and switch it off.

A shortcut is evidence a class leans on that lies on no part of the object: a watermark, a ruler, a
background. InfoDisent makes it visible as a channel: its prototype patches show no annotated part
(the part masks of ``parts``, CUB's keypoints), and some class's decisions rest on it.
:func:`suspicious_channels` ranks the used channels by both; :func:`switch_off` gives the head with
chosen channels masked, and :meth:`Run.edit <infodisent.run.Run.edit>` writes it as a new run (with
its provenance, optionally fine-tuned with those channels kept off); :func:`before_after` compares the
two runs on clean and shifted test sets.

Example:
    >>> run = infodisent.open_run("runs/shortcut")
    >>> suspects = suspicious_channels(run)              # channel, background, reliance, class, score
    >>> fixed = run.edit(disable=suspects.channel[:1].tolist(), out="runs/shortcut-fixed")
    >>> before_after(run, fixed, {"clean": clean_test, "shifted": shifted_test})
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch

from ..core.head import switch_off  # noqa: F401 - part of this module's story
from ..core.options import WEIGHT_THRESHOLD
from ..errors import InputError
from ..core.geometry import ViewGeometry
from .part_metrics import cell_coverage, has_parts, prototype_parts
from .results import Accuracy

if TYPE_CHECKING:
    from ..run import Run


def class_reliance(W: np.ndarray, V: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(C, D): the share of class ``c``'s positive evidence that channel ``d`` carries on ``c``'s images,
    ``mean_i max(W[c, d] v_id, 0) / sum_d mean_i max(W[c, d] v_id, 0)``."""
    C, D = W.shape
    out = np.zeros((C, D))
    for c in range(C):
        mine = V[labels == c]
        if len(mine) == 0:
            continue
        contrib = np.clip(W[c][None, :] * mine, 0, None).mean(0)
        total = contrib.sum()
        out[c] = contrib / total if total > 0 else 0.0
    return out


def _cell_share(mask: np.ndarray, transform, grid: tuple[int, int]) -> np.ndarray:
    """``(H, W)``: the share of each grid cell of the model's view that an ``(h, w)`` image mask covers."""
    view = ViewGeometry.from_transform(transform, (mask.shape[1], mask.shape[0])).view_mask(mask[None])
    return cell_coverage(view, grid)[0]


def _off_parts(index, dataset, transform, channel: int, cache: dict, min_coverage: float) -> list[bool] | None:
    """For each of ``channel``'s top positive patches, whether it lies off every part: on ``parts``, all parts
    together cover less than ``min_coverage`` of its grid cell (a thin part, a rocket or a leg, still counts);
    on CUB, no visible keypoint lies in its region. None for a channel without patches."""
    if hasattr(dataset, "masks"):
        rows = index.prototypes(channel, "pos")
        if len(rows) == 0:
            return None

        def covered(i: int) -> np.ndarray:
            if ("any", i) not in cache:
                cache[("any", i)] = _cell_share(dataset.masks(i).any(0), transform, index.grid)
            return cache[("any", i)]

        return [bool(covered(int(i))[r, c] < min_coverage) for i, r, c in zip(rows["image"], rows["row"], rows["col"])]
    found = prototype_parts(index, dataset, transform, channel, "pos", cache=cache)
    return [len(p) == 0 for p in found["parts"]] if len(found) else None


def suspicious_channels(run: "Run", split: str = "train", top: int | None = None, *,
                        min_coverage: float = 0.05) -> pd.DataFrame:
    """The used channels that a class leans on and whose prototypes show no annotated part, most suspicious
    first. Columns: ``channel``; ``background``, the share of its top positive patches (the split's
    prototype index) on no part (on ``parts``: all parts together cover less than ``min_coverage`` of the
    patch's cell; on CUB: no visible keypoint in its region); ``reliance``, the largest share of one class's positive evidence it
    carries (:func:`class_reliance`, on the split's images); ``class`` and ``class_name``, that class;
    ``score`` = background x reliance. Needs the split's index (``infodisent mine``) and part annotations."""
    dataset = run.dataset(split)
    if not has_parts(dataset):
        raise InputError(f"suspicious channels need part annotations (parts masks or CUB keypoints); "
                         f"{dataset.name} has none")
    index = run.index(split)
    W = run.model.W.cpu().numpy()
    used = np.flatnonzero(W.max(0) > WEIGHT_THRESHOLD)
    valid = ~np.isnan(index.v).any(1)
    reliance = class_reliance(W, index.v[valid], index.labels[valid])
    cache: dict = {}
    rows = []
    for d in used:
        off = _off_parts(index, dataset, run.model.transform, int(d), cache, min_coverage)
        if off is None:
            continue
        background = float(np.mean(off))
        c = int(reliance[:, d].argmax())
        rows.append((int(d), background, float(reliance[c, d]), c, run.model.class_names[c]))
    table = pd.DataFrame(rows, columns=["channel", "background", "reliance", "class", "class_name"])
    table["score"] = table["background"] * table["reliance"]
    table = table.sort_values(["score", "reliance"], ascending=False, kind="stable").reset_index(drop=True)
    return table if top is None else table.head(top)


@torch.no_grad()
def accuracy_on(run: "Run", dataset, batch_size: int = 256) -> Accuracy:
    """Top-1 and top-5 of ``run``'s head on any dataset of its classes (its maps extracted into the run's
    feature cache, or reused from it)."""
    from ..data.extract import extract_features
    from ..data.sources import CachedSource
    from ..train.training import evaluate

    cache = extract_features(run.model.backbone, dataset, run.cache_dir, batch_size=64, progress=False,
                             device=run.device)
    return evaluate(run.model.head, CachedSource(cache, batch_size, device=run.device, view=0))


def before_after(before: "Run", after: "Run", datasets: dict[str, object]) -> pd.DataFrame:
    """Test top-1 of two runs (a run and its edit) on named datasets (e.g. ``clean`` and ``shifted``): one row
    per dataset, columns ``before``, ``after`` and ``change``."""
    rows = {name: (accuracy_on(before, ds).top1, accuracy_on(after, ds).top1) for name, ds in datasets.items()}
    table = pd.DataFrame(rows, index=["before", "after"]).T
    table["change"] = table["after"] - table["before"]
    table.index.name = "test set"
    return table


def mark_channels(index, dataset, transform, channels: Sequence[int], min_coverage: float = 0.2) -> pd.Series:
    """Ground truth for a planted shortcut (``parts`` with ``shortcut_class``): per channel, the share of its
    top positive patches whose grid cell the mark covers (at least ``min_coverage`` of it, as a part would;
    :meth:`~infodisent.data.datasets.PartsDataset.mark_box`)."""
    covered: dict[int, np.ndarray] = {}

    def cells(i: int) -> np.ndarray:
        if i not in covered:
            size = dataset.config.image_size
            mask = np.zeros((size, size), bool)
            box = dataset.mark_box(i)
            if box is not None:
                mask[box[1]:box[3], box[0]:box[2]] = True
            covered[i] = _cell_share(mask, transform, index.grid) >= min_coverage
        return covered[i]

    out = {}
    for d in channels:
        rows = index.prototypes(int(d), "pos")
        hits = [bool(cells(int(i))[r, c]) for i, r, c in zip(rows["image"], rows["row"], rows["col"])]
        out[int(d)] = float(np.mean(hits)) if hits else 0.0
    return pd.Series(out, name="on_mark")


__all__ = ["accuracy_on", "before_after", "class_reliance", "mark_channels", "suspicious_channels", "switch_off"]
