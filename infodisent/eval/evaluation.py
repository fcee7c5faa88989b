"""All explanation metrics of a model on one split, from its prototype index (``evaluate --explanations``).

The result is an :class:`~infodisent.records.results.ExplanationMetrics` (what
``metrics.json`` holds under ``"explanations"``): accuracy, sizes,
faithfulness, and where the dataset has part ground truth, part scores
(``parts`` for the synthetic dataset, ``cub_parts`` for CUB keypoints).
Definitions: :mod:`infodisent.eval.metrics` and :mod:`infodisent.eval.part_metrics`.
"""

from __future__ import annotations

import numpy as np

from ..core.model import InfoDisent
from ..data.datasets import ImageDataset, PartsDataset
from ..errors import InputError
from ..explain.prototypes import PrototypeIndex
from ..records.results import ExplanationMetrics, PartScores
from .metrics import DEFAULT_KS, WEIGHT_THRESHOLD, accuracy, faithfulness, logits_of, size_summary
from .part_metrics import cub_part_metrics, parts_purity, pointing_game


def explanation_metrics(
    model: InfoDisent,
    index: PrototypeIndex,
    dataset: ImageDataset,
    *,
    ks: tuple[int, ...] = DEFAULT_KS,
    repeats: int = 5,
    stability: bool = True,
    stability_images: int = 200,
    seed: int = 0,
) -> ExplanationMetrics:
    """Accuracy, explanation size, faithfulness and (where ``dataset`` has them) part metrics.

    ``dataset`` is the split ``index`` was mined on (its images are read only for part metrics).

    Args:
        model: the model whose head (``W``, bias) and backbone (transform, stability) are scored.
        index: the prototype index mined on ``dataset`` with this model.
        dataset: the split the index was mined on.
        ks: the numbers of channels removed for faithfulness. Default
            :data:`~infodisent.eval.metrics.DEFAULT_KS`.
        repeats: random orders averaged for faithfulness's random curves. Default 5.
        stability: on CUB, include the stability metric (noisy images through the backbone). Default True.
        stability_images: images the stability metric uses. Default 200.
        seed: the seed of the random orders and of the stability images and noise. Default 0.
    Returns:
        The metrics; ``parts`` is set for the synthetic dataset, ``cub_parts`` for a dataset with part
        locations."""
    if len(dataset) != index.meta.num_images:
        raise InputError(f"the index was mined on {index.meta.num_images} images, the dataset has {len(dataset)}")
    W = model.W.double().cpu().numpy()
    bias = None if model.bias is None else model.bias.double().cpu().numpy()
    valid = index.valid
    V, labels = np.asarray(index.v[valid], np.float64), index.labels[valid]
    logits = logits_of(V, W, bias)
    parts = cub = None
    transform = model.backbone.transform
    if isinstance(dataset, PartsDataset):
        used = np.flatnonzero(W.max(0) > WEIGHT_THRESHOLD)
        pur = parts_purity(index, dataset, transform)
        pg = pointing_game(index, dataset, transform, W, bias)
        correct = pg["predicted"] == pg["label"]
        parts = PartScores(
            purity=float(pur[pur["channel"].isin(used)]["purity"].mean()) if len(used) else float("nan"),
            purity_all_channels=float(pur["purity"].mean()),
            channels_used=int(len(used)),
            pointing_game=float(pg["hit"].mean()),
            pointing_game_correct=float(pg["hit"][correct].mean()) if correct.any() else float("nan"),
            pointing_game_chance=float(pg["chance"].mean()),
        )
    elif getattr(dataset, "part_locs", None) is not None:
        cub = cub_part_metrics(index, dataset, W, transform, model=model if stability else None,
                               stability_images=stability_images, seed=seed)
    return ExplanationMetrics(
        dataset=index.meta.dataset.name, split=index.meta.dataset.split, num_images=int(valid.sum()),
        prototypes_per_channel=index.k, accuracy=accuracy(logits, labels), size=size_summary(V, W, bias),
        faithfulness=faithfulness(V, W, bias, labels, ks, repeats, seed), parts=parts, cub_parts=cub,
    )


__all__ = ["explanation_metrics"]
