"""Find a shortcut and switch it off.

A shortcut is evidence a class leans on that lies on no part of the object: a watermark, a ruler, a
background. InfoDisent makes it visible as a channel: its prototype patches show no annotated part
(the part masks of ``parts``, CUB's keypoints), and some class's decisions rest on it.
:func:`suspicious_channels` ranks the used channels by both; :func:`~infodisent.core.head.switch_off` gives the
head with chosen channels masked, and :func:`edit` writes it as a new run (with its provenance, optionally
fine-tuned with those channels kept off); :func:`before_after` compares the
two runs on clean and shifted test sets.

Example:
    >>> run = infodisent.open_run("runs/shortcut")
    >>> suspects = suspicious_channels(run)              # channel, background, reliance, class, score
    >>> fixed = edit(run, disable=suspects.channel[:1].tolist(), out="runs/shortcut-fixed")
    >>> before_after(run, fixed, {"clean": clean_test, "shifted": shifted_test})
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..core.geometry import ViewGeometry
from ..core.head import switch_off
from ..core.model import InfoDisent
from ..data.extract import extract_features
from ..data.sources import CachedSource
from ..errors import InputError
from ..eval.fidelity import agreement
from ..eval.part_metrics import cell_coverage, has_parts, prototype_parts
from ..io import atomic_write_json
from ..records.options import WEIGHT_THRESHOLD, FitConfig
from ..records.results import Accuracy
from ..records.run import EditRecord, RunRecord
from ..records.serialize import to_dict
from ..run import Run, RunExistsError, RunFiles, open_run, save_head
from ..train.training import evaluate, fit


def class_reliance(W: np.ndarray, V: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(C, D): the share of class ``c``'s positive evidence that channel ``d`` carries on ``c``'s images,
    ``mean_i max(W[c, d] v_id, 0) / sum_d mean_i max(W[c, d] v_id, 0)``.

    Args:
        W: the classifier weights ``(C, D)``.
        V: pooled channel values ``(N, D)`` of the images.
        labels: ``(N,)`` class labels of the images; a class without images, or without positive
            evidence, gets a row of zeros."""
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


def suspicious_channels(run: Run, split: str = "train", top: int | None = None, *,
                        min_coverage: float = 0.05) -> pd.DataFrame:
    """The used channels that a class leans on and whose prototypes show no annotated part, most suspicious
    first. Columns: ``channel``; ``background``, the share of its top positive patches (the split's
    prototype index) on no part (on ``parts``: all parts together cover less than ``min_coverage`` of the
    patch's cell; on CUB: no visible keypoint in its region); ``reliance``, the largest share of one class's positive evidence it
    carries (:func:`class_reliance`, on the split's images); ``class`` and ``class_name``, that class;
    ``score`` = background x reliance. Needs the split's index (``infodisent mine``) and part annotations.

    Args:
        run: the run examined.
        split: the split whose prototype index and images are read. Default ``"train"``.
        top: keep only this many rows. Default None: every used channel with patches.
        min_coverage: on ``parts``, the share of a patch's cell the parts must cover for it to count as on a
            part. Default 0.05."""
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


def edit(run: Run, disable: Sequence[int], out: str | Path, *, finetune_epochs: int = 0,
         overwrite: bool = False) -> Run:
    """A new run at ``out`` whose head no longer uses the ``disable`` channels (e.g. a shortcut found with
    :func:`suspicious_channels`): their weights masked to 0, and with
    ``finetune_epochs`` the other weights fine-tuned on the training feature cache with them kept off (U
    fixed, so the channels stay the same). ``config.json`` records where it comes from (``edit``);
    ``metrics.json`` holds the new head's test accuracy (the probe's copied, the agreement recomputed;
    pruning and explanation metrics belong to the old head and are left out). Mine it again to browse it.

    Args:
        run: the run to edit.
        disable: the channels to switch off.
        out: the new run directory (not ``run``'s own).
        finetune_epochs: epochs of fine-tuning W with the channels off. Default 0: the weights masked only.
        overwrite: replace a run already at ``out``. Default False: an error."""
    target = RunFiles(Path(out))
    if Path(out).resolve() == run.path.resolve():
        raise InputError(f"an edit is written to a new run directory, not over {run.path}")
    if (target.config.is_file() or target.head.is_file()) and not overwrite:
        raise RunExistsError(f"{target.root} already holds a run; pass overwrite=True to replace it")
    if finetune_epochs < 0:
        raise InputError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
    head = switch_off(run.model.head, disable)
    disabled = tuple(int(d) for d in sorted(set(int(d) for d in disable)))
    fit_cfg = run.config.run.fit if run.config.run is not None else FitConfig()
    if finetune_epochs:
        torch.manual_seed(fit_cfg.seed)  # the same edit whatever ran before it in this process
        fit(head, CachedSource(run.features("train"), 64, fit_cfg.seed, run.device), None,
            replace(fit_cfg, epochs=finetune_epochs, warmup_epochs=0, train_rotation=False), progress=False,
            device=run.device)
        head.eval()
    model = InfoDisent(run.model.backbone, head, list(run.class_names))
    test = run.features("test")
    old = run.metrics
    acc = evaluate(head, CachedSource(test, 256, device=run.device, view=0), fit_cfg.amp)
    agreed = agreement(model, run.dataset("test"), test, batch_size=256)
    metrics = replace(old, infodisent=acc, ratio=acc.top1 / old.linear_probe.top1 if old.linear_probe else None,
                      sparse=None, explanations=None, agreement=agreed,
                      seconds={}, feature_cache={}, frontier=[], selected=None)
    target.root.mkdir(parents=True, exist_ok=True)
    for path in (*target.outputs(), target.report, *target.evaluations()):
        path.unlink(missing_ok=True)
    if run.files.probe.is_file():
        shutil.copyfile(run.files.probe, target.probe)
    atomic_write_json(target.metrics, to_dict(metrics))
    save_head(head, target.head)
    config = RunRecord(model.config(), run.config.run, EditRecord(str(run.path), disabled, finetune_epochs))
    atomic_write_json(target.config, config.to_dict())  # last: now the directory holds a run
    return open_run(target.root, device=run.device, cache_dir=run.cache_dir)


@torch.no_grad()
def accuracy_on(run: Run, dataset, batch_size: int = 256) -> Accuracy:
    """Top-1 and top-5 of ``run``'s head on any dataset of its classes (its maps extracted into the run's
    feature cache, or reused from it).

    Args:
        run: the run whose head is evaluated.
        dataset: an image dataset with the run's classes.
        batch_size: feature maps per evaluation batch (extraction uses batches of 64). Default 256."""
    cache = extract_features(run.model.backbone, dataset, run.cache_dir, batch_size=64, progress=False,
                             device=run.device)
    return evaluate(run.model.head, CachedSource(cache, batch_size, device=run.device, view=0))


def before_after(before: Run, after: Run, datasets: dict[str, object]) -> pd.DataFrame:
    """Test top-1 of two runs (a run and its edit) on named datasets (e.g. ``clean`` and ``shifted``): one row
    per dataset, columns ``before``, ``after`` and ``change``.

    Args:
        before: the original run.
        after: the edited run.
        datasets: image datasets of the runs' classes, by the name their row gets."""
    rows = {name: (accuracy_on(before, ds).top1, accuracy_on(after, ds).top1) for name, ds in datasets.items()}
    table = pd.DataFrame(rows, index=["before", "after"]).T
    table["change"] = table["after"] - table["before"]
    table.index.name = "test set"
    return table


def mark_channels(index, dataset, transform, channels: Sequence[int], min_coverage: float = 0.2) -> pd.Series:
    """Ground truth for a planted shortcut (``parts`` with ``shortcut_class``): per channel, the share of its
    top positive patches whose grid cell the mark covers (at least ``min_coverage`` of it, as a part would;
    :meth:`~infodisent.data.datasets.PartsDataset.mark_box`).

    Args:
        index: the prototype index (:class:`~infodisent.explain.prototypes.PrototypeIndex`) mined on
            ``dataset``.
        dataset: the ``parts`` dataset with the planted mark.
        transform: the model's evaluation transform (it places the cells on the images).
        channels: the channels scored.
        min_coverage: the share of a cell the mark must cover for a patch to count as on it. Default 0.2.
    Returns:
        The share per channel, a Series named ``on_mark`` indexed by channel."""
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


__all__ = ["accuracy_on", "before_after", "class_reliance", "edit", "mark_channels", "suspicious_channels"]
