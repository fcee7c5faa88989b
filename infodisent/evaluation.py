"""All explanation metrics of a model on one split, from its prototype index (``evaluate --explanations``).

The keys of the returned dict are stable (they are what ``metrics.json``
holds under ``"explanations"``):

- ``accuracy``: ``top1``, ``top5`` (recomputed from the index's ``v``)
- ``size``: ``num_channels``, ``global_size``, ``local_size``,
  ``channels_for_90pct``, ``above_0.2_of_max``, ``top4_share``,
  ``mean_nonzero_weights_per_class``
- ``faithfulness``: ``k``, ``logit_drop_top``, ``logit_drop_random``,
  ``accuracy_top``, ``accuracy_random`` (lists over k), ``area_logit``,
  ``area_accuracy``
- ``parts`` (the synthetic parts dataset): ``purity`` (mean over used
  channels), ``purity_all_channels``, ``channels_used``, ``pointing_game``,
  ``pointing_game_correct`` (on correctly classified images),
  ``pointing_game_chance``
- ``cub_parts`` (CUB with part locations): ``purity``, ``consistency``,
  ``stability`` and their settings

Definitions: :mod:`infodisent.metrics` and :mod:`infodisent.part_metrics`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .datasets import PartsDataset
from .metrics import DEFAULT_KS, WEIGHT_THRESHOLD, accuracy, faithfulness, logits_of, size_summary
from .model import InfoDisent
from .part_metrics import cub_part_metrics, parts_purity, pointing_game
from .prototypes import PrototypeIndex


def explanation_metrics(
    model: InfoDisent,
    index: PrototypeIndex,
    *,
    ks: tuple[int, ...] = DEFAULT_KS,
    repeats: int = 5,
    stability: bool = True,
    stability_images: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy, explanation size, faithfulness and (where the dataset has them) part metrics."""
    W = model.W.double().cpu().numpy()
    bias = None if model.b is None else model.b.double().cpu().numpy()
    valid = index.valid
    V, labels = np.asarray(index.v[valid], np.float64), index.labels[valid]
    logits = logits_of(V, W, bias)
    spec = index.meta["dataset"]
    out: dict[str, Any] = {
        "dataset": spec["name"],
        "split": spec["split"],
        "num_images": int(valid.sum()),
        "prototypes_per_channel": index.k,
        "accuracy": accuracy(logits, labels),
        "size": size_summary(V, W, bias),
        "faithfulness": faithfulness(V, W, bias, labels, ks, repeats, seed).to_dict(),
    }
    ds = index.dataset()
    transform = model.backbone.transform
    if isinstance(ds, PartsDataset):
        used = np.flatnonzero(W.max(0) > WEIGHT_THRESHOLD)
        pur = parts_purity(index, ds, transform)
        pg = pointing_game(index, ds, transform, W, bias)
        correct = pg["predicted"] == pg["label"]
        out["parts"] = {
            "purity": float(pur[pur["channel"].isin(used)]["purity"].mean()) if len(used) else float("nan"),
            "purity_all_channels": float(pur["purity"].mean()),
            "channels_used": int(len(used)),
            "pointing_game": float(pg["hit"].mean()),
            "pointing_game_correct": float(pg["hit"][correct].mean()) if correct.any() else float("nan"),
            "pointing_game_chance": float(pg["chance"].mean()),
        }
    elif getattr(ds, "part_locs", None) is not None:
        out["cub_parts"] = cub_part_metrics(
            index, ds, W, transform, model=model if stability else None,
            stability_images=stability_images, seed=seed,
        )
    return out


__all__ = ["explanation_metrics"]
