"""Typed results: every number a command writes (``metrics.json``, evaluations) as frozen dataclasses.

One accuracy vocabulary everywhere: :class:`Accuracy` (``top1``, ``top5``,
``loss`` where it was computed). Each result serialises with ``to_dict()`` to
the JSON the run directory holds and loads back with ``from_dict()``
(:mod:`infodisent.records.serialize`); figures, tables and the sentences built
from them (:mod:`infodisent.viz.sentences`) take the dataclasses.

Example:
    >>> run = infodisent.open_run("runs/demo")
    >>> run.metrics.infodisent.top1, run.metrics.linear_probe.top1
    >>> run.metrics.explanations.size.local_size
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..errors import InputError
from .serialize import Record


@dataclass(frozen=True)
class Accuracy(Record):
    """Top-1 and top-5 accuracy (top-k over min(5, C) classes), and the cross-entropy where computed."""

    top1: float
    top5: float
    loss: float | None = None


@dataclass(frozen=True)
class Sizes(Record):
    """How many channels an explanation has (each field defined in docs/reference.md, "Explanation size")."""

    num_channels: int
    global_size: int  # channels some class uses
    local_size: float  # channels with a say in the predicted class, mean over images
    channels_for_mass: float  # fewest channels carrying ``mass`` of the positive evidence
    above_relative: float  # channels contributing >= ``relative`` x the largest contribution
    top_share: float  # share of the positive evidence in the ``top`` largest contributions
    nonzero_weights_per_class: float
    mass: float = 0.9
    relative: float = 0.2
    top: int = 4


@dataclass(frozen=True)
class Faithfulness(Record):
    """Removal curves (top-k contributors vs k random channels) and the areas between them."""

    curves: pd.DataFrame  # k, logit_drop_top, logit_drop_random, accuracy_top, accuracy_random
    area_logit: float  # mean over k-steps of (drop_top - drop_random)
    area_accuracy: float  # mean over k-steps of (accuracy_random - accuracy_top)

    def to_dict(self) -> dict[str, Any]:
        return {"area_logit": self.area_logit, "area_accuracy": self.area_accuracy,
                **{c: self.curves[c].tolist() for c in self.curves.columns}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Faithfulness":
        """Rebuild from :meth:`to_dict`'s output.

        Args:
            data: the two areas and, under every other key, one column of the curves."""
        curves = pd.DataFrame({k: v for k, v in data.items() if k not in ("area_logit", "area_accuracy")})
        return cls(curves, float(data["area_logit"]), float(data["area_accuracy"]))


@dataclass(frozen=True)
class PartScores(Record):
    """Part metrics on the synthetic ``parts`` dataset (definitions in :mod:`infodisent.eval.part_metrics`).

    ``purity``: share of a channel's top-k patches showing its most frequent part, mean over the
    channels some class uses (``purity_all_channels``: over all; ``channels_used``: how many);
    ``pointing_game``: share of images whose top contributor's winning cell lies within 15 px of a
    part of the predicted class (``_correct``: on correctly classified images; ``_chance``: the same
    for a uniformly random point).
    """

    purity: float  # mean over the channels some class uses
    purity_all_channels: float
    channels_used: int
    pointing_game: float
    pointing_game_correct: float  # on correctly classified images
    pointing_game_chance: float


@dataclass(frozen=True)
class CubPartScores(Record):
    """Part metrics on CUB keypoints (definitions in :mod:`infodisent.eval.part_metrics`): ``purity``
    (PIP-Net), ``consistency`` and ``stability`` (Huang et al.), each in [0, 1]; ``window_px`` is the
    side of the region around a response, ``part_groups`` the 12 keypoint groups (left/right merged)."""

    window_px: float
    part_groups: list[str]
    channels_scored: int
    purity: float
    consistency: float
    consistency_channels: int
    stability: float | None = None
    stability_images: int | None = None
    stability_sigma: float | None = None  # Huang et al.'s noise, in ImageNet-normalised units
    stability_clip: float | None = None


@dataclass(frozen=True)
class ExplanationMetrics(Record):
    """All explanation metrics of a model on one split (``evaluate --explanations``)."""

    dataset: str
    split: str
    num_images: int
    prototypes_per_channel: int
    accuracy: Accuracy
    size: Sizes
    faithfulness: Faithfulness
    parts: PartScores | None = None
    cub_parts: CubPartScores | None = None


@dataclass(frozen=True)
class Agreement(Record):
    """How closely InfoDisent's head follows the backbone's own classifier (the black box) on one split.

    ``classifier``: ``"imagenet"`` (its ImageNet head, read on the dataset's classes) or ``"own"`` (a
    classifier with the dataset's classes, e.g. a fine-tuned model); ``top1``: the share of images on
    which both predict the same class; ``kl``: mean ``KL(black box || InfoDisent)`` of their softmaxes
    over the dataset's classes, in nats; ``black_box``: the black box's own accuracy on these images."""

    classifier: str
    num_images: int
    top1: float
    kl: float
    black_box: Accuracy



@dataclass(frozen=True)
class Randomised(Record):
    """The model randomisation check at one level of the cascade (Adebayo et al., NeurIPS 2018): the backbone's
    last ``stages`` stages re-initialised (``modules`` parameterised modules), the trained head kept. Each
    number compares the explanations of the same images by the trained and the randomised model: the mean
    Spearman rank correlation and SSIM of the top channels' maps ``J_d``, the mean Spearman correlation of the
    contributions to the predicted class (over its channels), and the randomised model's top-1."""

    stages: int
    modules: int
    map_spearman: float
    map_ssim: float
    ranking_spearman: float
    top1: float


@dataclass(frozen=True)
class LabelRandomisation(Record):
    """The label randomisation check: a head trained as the run's was, on the training images with their labels
    shuffled. Its part purity and pointing game (on the evaluated split) beside the trained run's, beside the
    same head untrained (the backbone's own channels, picked with no label: what a frozen backbone gives
    before any training) and beside chance (purity of random patches; the pointing game's random point),
    and its top-1 (chance: 1 / C). What the labels teach is the distance from the untrained head to the
    trained run; what is left of it under shuffled labels, training taught without them."""

    top1: float
    purity: float
    purity_trained: float | None
    purity_chance: float
    pointing_game: float
    pointing_game_trained: float | None
    pointing_game_chance: float
    purity_untrained: float | None = None  # None: not recorded
    pointing_game_untrained: float | None = None


@dataclass(frozen=True)
class SanityChecks(Record):
    """``infodisent evaluate --sanity``: does the explanation depend on the model and on the labels?"""

    split: str
    images: int  # images whose explanations the model randomisation compares
    channels: int  # top channels per image whose maps are compared
    model: list[Randomised] = field(default_factory=list)  # one entry per level of the cascade
    labels: LabelRandomisation | None = None



@dataclass(frozen=True)
class CacheUse(Record):
    path: str
    reused: bool  # True: no image passed through the backbone
    extraction_seconds: float | None = None


@dataclass(frozen=True)
class ProbeInfo(Record):
    l2: float
    holdout_accuracy: dict[str, float]  # L2 strength -> held-out top-1
    solver: str | None = None  # "lbfgs" (full batch) or "minibatch" (data beyond infodisent.train.probe.IN_MEMORY)


@dataclass(frozen=True)
class KSelection(Record):
    """How the channels per class were chosen (:func:`infodisent.train.selection.choose_k`): each candidate's
    held-out top-1 and calibrated loss, and whether the chosen head keeps the accuracy budget."""

    channels_per_class: int | None  # the chosen K (None: no compact head kept the budget, the dense head is shown)
    images: int  # held-out training images
    dense_top1: float  # the dense head on them
    tolerance: float  # the budget: top-1 the compact head may lose against the dense head
    top1: dict[str, float]  # K -> held-out top-1 of its head, fine-tuned as the final one would be
    within_tolerance: bool  # False: the shipped head measurably misses the budget, or none kept it (fallback)
    loss: dict[str, float] = field(default_factory=dict)  # K -> held-out cross-entropy after temperature scaling
    dense_loss: float | None = None
    loss_se: float | None = None  # the rule's band, in standard errors
    loss_gap: dict[str, float] = field(default_factory=dict)  # K -> its loss minus the best candidate's (paired)
    loss_gap_se: dict[str, float] = field(default_factory=dict)  # K -> the standard error of that gap
    lost: float | None = None  # held-out top-1 the chosen head loses against the dense one (paired)
    noise: float | None = None  # the loss the held-out images cannot resolve (1.645 standard errors)
    rule_k: int | None = None  # when escalated: the candidate the loss rule chose, which missed the budget
    escalated: list[int] = field(default_factory=list)  # the larger K tried after it, in order
    fallback: bool = False  # True: none of them kept the budget; the run ships the dense head

    @property
    def rule_choice(self) -> int | None:
        """The K the loss rule chose, before any escalation (what the frontier figure stars)."""
        return self.rule_k if self.rule_k is not None else self.channels_per_class



@dataclass(frozen=True)
class SparseSummary(Record):
    """What SIDE-style pruning did: channels per class after each round, and the dense head's accuracy."""

    channels_per_class: int | None  # None: no compact head kept the budget, the dense head is shown
    schedule: list[int]  # channels per class of each round run (with K chosen: the candidates tried)
    finetune_epochs: int
    round_epochs: int
    dense: Accuracy  # the dense head on the same test split (trained again on every training image when K was chosen)
    selection: KSelection | None = None  # when K was chosen on validation images
    channels_total: int | None = None  # a channel budget shared by all classes
    refit_epochs: int = 0  # K chosen: the chosen head then fine-tuned this long on every training image
    dense_fit: Accuracy | None = None  # dense trained again on every image: the first one (held-out images left out)



def head_key(k: int | str | None) -> str:
    """A kept head's key, as :meth:`infodisent.run.Run.with_k`, ``infodisent select`` and ``heads/<key>/``
    name it: its K, or ``"dense"`` for None.

    Args:
        k: channels per class, ``"dense"`` or None."""
    return "dense" if k is None else str(k)


@dataclass(frozen=True)
class FrontierPoint(Record):
    """One head a pruned run keeps (``metrics.json["frontier"]``, one per K tried and the dense reference):
    its test accuracy (with the cross-entropy), its held-out scores when K was chosen on held-out images,
    the size of its explanations on the test split, and whether it is the head the run shows.

    ``channels_per_class``: None for the dense head; ``explanations``: ``evaluate --explanations`` on it
    (purity and consistency where the dataset has parts or keypoints)."""

    channels_per_class: int | None
    test: Accuracy
    local_size: float  # channels with a say in the predicted class, mean over the test images
    global_size: int  # channels some class uses
    weights_per_class: float  # nonzero weights per class, mean over classes
    shown: bool = False  # the head in head.safetensors
    validation_top1: float | None = None
    validation_loss: float | None = None  # after temperature scaling (what the rule compares)
    explanations: ExplanationMetrics | None = None

    @property
    def key(self) -> str:
        """``"dense"`` or the K, as :meth:`infodisent.run.Run.with_k` and ``infodisent select`` take it."""
        return head_key(self.channels_per_class)

    @property
    def purity(self) -> float | None:
        e = self.explanations
        part = e and (e.cub_parts or e.parts)
        return part.purity if part else None

    @property
    def consistency(self) -> float | None:
        e = self.explanations
        return e.cub_parts.consistency if e and e.cub_parts else None


@dataclass(frozen=True)
class Selected(Record):
    """``infodisent select``: the head shown is not the one the run chose (``metrics.json["selected"]``)."""

    channels_per_class: int | None  # now shown (None: the dense head)
    chosen: int | None  # what training chose (None: the dense head)
    command: str = "infodisent select"


def _measured(x: float | None) -> float:
    return float("nan") if x is None else x


def frontier_table(points: list[FrontierPoint]) -> pd.DataFrame:
    """The frontier as a table, one row per kept head, largest K first (the dense head on top).

    Args:
        points: the kept heads (``RunMetrics.frontier``).
    Returns:
        A DataFrame indexed by K; a purity or consistency not measured is NaN."""
    rows = sorted(points, key=lambda p: -(p.channels_per_class or 10**9))
    return pd.DataFrame({
        "K": [p.key for p in rows], "test top-1": [p.test.top1 for p in rows],
        "test loss": [p.test.loss for p in rows], "held-out top-1": [p.validation_top1 for p in rows],
        "local size": [p.local_size for p in rows], "global size": [p.global_size for p in rows],
        "purity": [_measured(p.purity) for p in rows], "consistency": [_measured(p.consistency) for p in rows],
        "shown": [p.shown for p in rows]}).set_index("K")


@dataclass(frozen=True)
class RunMetrics(Record):
    """``metrics.json``: what training measured, plus the parts later commands add (``explanations``).

    ``infodisent`` and ``linear_probe``: test accuracy of the head and of the linear probe (an
    unconstrained linear head on the same frozen features: the accuracy reference); ``ratio``: their top-1 ratio; ``sparse``: what
    pruning did and the dense head's accuracy; ``feature_cache``: whether each split's maps were
    reused; ``seconds``: wall time of each stage.
    """

    dataset: str
    backbone: str
    weights: str
    num_classes: int
    num_train_images: int
    num_test_images: int
    num_test_evaluated: int
    infodisent: Accuracy
    linear_probe: Accuracy | None = None
    ratio: float | None = None  # InfoDisent top-1 / linear probe top-1
    skipped_images: dict[str, list[str]] = field(default_factory=dict)
    probe: ProbeInfo | None = None
    feature_cache: dict[str, CacheUse] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    sparse: SparseSummary | None = None
    explanations: ExplanationMetrics | None = None
    agreement: Agreement | None = None  # with the backbone's own classifier, where it has the dataset's classes
    sanity: SanityChecks | None = None  # evaluate --sanity on the test split
    frontier: list[FrontierPoint] = field(default_factory=list)  # every head a pruned run keeps
    selected: Selected | None = None  # infodisent select: another kept head is shown

    def with_head(self, point: FrontierPoint) -> "RunMetrics":
        """These metrics as they read with kept head ``point`` shown: its test accuracy, its explanation
        metrics and its ratio to the probe; agreement and sanity checks, measured on another head, dropped.

        Args:
            point: one of ``frontier``."""
        probe = self.linear_probe
        return dataclasses.replace(self, infodisent=point.test, explanations=point.explanations,
                                   ratio=point.test.top1 / probe.top1 if probe is not None and probe.top1 else None,
                                   agreement=None, sanity=None)

    def point(self, k: int | str | None) -> FrontierPoint:
        """The frontier's point of ``k`` (an int, ``"dense"`` or None for the dense head); an error names those kept.

        Args:
            k: the head's channels per class, or ``"dense"`` or None for the dense head."""
        key = head_key(k)
        for p in self.frontier:
            if p.key == key:
                return p
        kept = ", ".join(p.key for p in self.frontier) or "none (a run trained before heads were kept, or unpruned)"
        raise InputError(f"no kept head with K={key}; the run keeps {kept}")

    @property
    def num_skipped_images(self) -> int:
        return sum(len(v) for v in self.skipped_images.values())

    def table(self) -> pd.DataFrame:
        """Top-1 and top-5 of InfoDisent and of the linear probe (the accuracy reference)."""
        rows = {"InfoDisent": self.infodisent}
        if self.sparse is not None and self.sparse.dense_fit is not None:
            rows["InfoDisent, dense (all training images)"] = self.sparse.dense
            rows["InfoDisent, dense (held-out images left out)"] = self.sparse.dense_fit
        elif self.sparse is not None:
            rows["InfoDisent, dense (before pruning)"] = self.sparse.dense
        if self.linear_probe is not None:
            rows["linear probe"] = self.linear_probe
        return pd.DataFrame({"top-1 accuracy": [a.top1 for a in rows.values()],
                             "top-5 accuracy": [a.top5 for a in rows.values()]},
                            index=pd.Index(list(rows), name=f"{self.dataset} test"))


@dataclass(frozen=True)
class Evaluation(Record):
    """``infodisent evaluate``: accuracy of a saved run on one split (``evaluation_<dataset>_<split>.json``)."""

    run: str
    dataset: str
    split: str
    num_images: int
    num_evaluated: int
    infodisent: Accuracy
    linear_probe: Accuracy | None = None
    skipped_images: list[str] = field(default_factory=list)
    explanations: ExplanationMetrics | None = None
    agreement: Agreement | None = None
    sanity: SanityChecks | None = None


__all__ = [
    "LabelRandomisation", "Randomised", "SanityChecks",
    "Accuracy", "Agreement", "CacheUse", "CubPartScores", "Evaluation", "ExplanationMetrics", "Faithfulness",
    "FrontierPoint", "KSelection", "PartScores", "ProbeInfo", "RunMetrics", "Selected", "Sizes", "SparseSummary",
    "frontier_table", "head_key",
]
