"""The ablation grid (``infodisent ablate``): one table of variants the paper does not show.

Each variant changes one thing of plain InfoDisent, trains on the same cached
features and is evaluated with the explanation metrics:

- ``infodisent``: orthogonal U, two-sided max, W >= 0, exact max in training
- ``no_rotation``: U fixed to the identity (the backbone's raw channels)
- ``avg_pooling``: average pooling instead of the two-sided max
- ``unconstrained_w``: W may be negative
- ``gumbel``: Gumbel-softmax relaxation of the max during training
- ``side_sparse``: SIDE's one-vs-rest sigmoid loss (with a per-class bias: with
  ``W >= 0`` only negative ``v`` could otherwise push a logit below zero), then
  pruning in rounds to K channels per class, fine-tuning W and U
- ``sparse_softmax``: the same pruning after plain softmax training
- ``sparse_no_rotation``: that pruning with U fixed to the identity (is U needed
  once the head is sparse?)
- ``compact``: the default run: that pruning with K chosen on held-out training
  images (``base.sparse``, or the default :class:`SparseOptions`)

Every variant but ``compact`` and the fixed-K sparse ones trains the dense head
(``base.sparse`` is ignored there).

Example:
    >>> table = ablation_grid(RunConfig(out="runs/ablations", dataset="parts"))
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from .. import distributed
from ..errors import InputError
from ..io import atomic_write_text
from ..pipeline import evaluate_run, train_run
from ..records.options import SparseOptions
from ..records.results import Evaluation, RunMetrics
from ..records.run import RunConfig
from ..run import open_run

ABLATIONS = "ablations.csv"


def variants(base: RunConfig, channels_per_class: int = 5, finetune_epochs: int | None = None) -> dict[str, RunConfig]:
    """The grid's run configurations, each in ``<base.out>/<name>``.

    Args:
        base: the run every variant starts from (its ``sparse`` options serve ``compact`` only).
        channels_per_class: K of the fixed-K sparse variants. Default 5.
        finetune_epochs: fine-tuning epochs after the last prune, for every sparse variant. Default None:
            those of ``base.sparse`` (or of the default :class:`SparseOptions`).
    Returns:
        The configurations by variant name, each overwriting its directory."""
    h, f = base.head, base.fit
    compact = base.sparse or SparseOptions()
    ft = finetune_epochs if finetune_epochs is not None else compact.finetune_epochs
    k = channels_per_class
    dense = replace(base, sparse=None)
    base = dense
    grid = {
        "infodisent": dense,
        "no_rotation": replace(base, head=replace(h, rotation=False), probe=False),
        "avg_pooling": replace(base, head=replace(h, pooling="avg"), probe=False),
        "unconstrained_w": replace(base, head=replace(h, nonnegative=False), probe=False),
        "gumbel": replace(base, head=replace(h, relaxation="gumbel"), probe=False),
        "side_sparse": replace(base, head=replace(h, bias=True), fit=replace(f, loss="sigmoid"),
                               sparse=SparseOptions(k, ft), probe=False),
        "sparse_softmax": replace(base, sparse=SparseOptions(k, ft), probe=False),
        "sparse_no_rotation": replace(base, head=replace(h, rotation=False), sparse=SparseOptions(k, ft), probe=False),
        "compact": replace(base, sparse=replace(compact, finetune_epochs=ft), probe=False),
    }
    return {name: replace(cfg, out=str(Path(base.out) / name), overwrite=True) for name, cfg in grid.items()}


def table_row(name: str, cfg: RunConfig, metrics: RunMetrics, ev: Evaluation) -> dict[str, Any]:
    """One row of the grid's table: the variant's settings, accuracy and explanation metrics.

    Args:
        name: the variant's name.
        cfg: its run configuration.
        metrics: its training's metrics.
        ev: its test evaluation, with explanation metrics."""
    e = ev.explanations
    size, faith = e.size, e.faithfulness
    row = {
        "variant": name, "rotation": cfg.head.rotation, "pooling": cfg.head.pooling,
        "nonnegative_w": cfg.head.nonnegative, "relaxation": cfg.head.relaxation, "loss": cfg.fit.loss,
        "channels_per_class": metrics.sparse.channels_per_class if metrics.sparse else None,
        "top1": metrics.infodisent.top1, "top5": metrics.infodisent.top5,
        "dense_top1": metrics.sparse.dense.top1 if metrics.sparse else None,
        "global_size": size.global_size, "local_size": size.local_size,
        "channels_for_90pct": size.channels_for_mass, "above_0.2_of_max": size.above_relative,
        "faithfulness_area_logit": faith.area_logit, "faithfulness_area_accuracy": faith.area_accuracy,
    }
    for group, scores in (("parts", e.parts), ("cub_parts", e.cub_parts)):
        for key, value in (scores.to_dict() if scores is not None else {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[f"{group}.{key}"] = value
    return row


def ablation_grid(
    base: RunConfig, channels_per_class: int = 5, names: list[str] | None = None, stability: bool = True,
    finetune_epochs: int | None = None, resume: bool = False,
) -> pd.DataFrame:
    """Train and evaluate every variant (or those in ``names``); writes ``<base.out>/ablations.csv``.

    With ``names``, the rows of those variants replace theirs in an existing table. With ``resume``,
    a variant whose run directory already holds its finished run is not trained again, only
    evaluated (e.g. after a metric changed); an unfinished one continues.

    Args:
        base: the run every variant starts from; the table goes in ``base.out``.
        channels_per_class: K of the fixed-K sparse variants. Default 5.
        names: the variants run. Default None: all of them.
        stability: include the stability metric in each evaluation. Default True.
        finetune_epochs: fine-tuning epochs after the last prune (:func:`variants`). Default None.
        resume: keep finished variants and continue unfinished ones instead of training afresh. Default False.
    Returns:
        The table, one row per variant (:func:`table_row`).
    """
    grid = variants(base, channels_per_class, finetune_epochs)
    unknown = set(names or []) - set(grid)
    if unknown:
        raise InputError(f"unknown ablation(s) {sorted(unknown)}; choose from {', '.join(grid)}")
    rows = []
    for name, cfg in grid.items():
        if names and name not in names:
            continue
        if resume:
            cfg = replace(cfg, overwrite=False, resume=True)
        result = train_run(cfg)
        ev = evaluate_run(
            open_run(cfg.out, device=cfg.device), "test", batch_size=cfg.batch_size, num_workers=cfg.num_workers,
            progress=cfg.progress, explanations=True, stability=stability,
        )
        rows.append(table_row(name, cfg, result.metrics, ev))
    table = pd.DataFrame(rows)
    path = Path(base.out) / ABLATIONS
    if names and path.is_file():
        old = pd.read_csv(path)
        table = pd.concat([old[~old["variant"].isin(table["variant"])], table], ignore_index=True)
        order = {name: i for i, name in enumerate(grid)}
        table = table.sort_values("variant", key=lambda s: s.map(order)).reset_index(drop=True)
    if distributed.current().main:  # under torchrun: one writer
        Path(base.out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(base.out) / ABLATIONS, table.to_csv(index=False))
    return table


__all__ = ["ABLATIONS", "ablation_grid", "table_row", "variants"]
