"""Typed results: every number a command writes (``metrics.json``, evaluations) as frozen dataclasses.

One accuracy vocabulary everywhere: :class:`Accuracy` (``top1``, ``top5``,
``loss`` where it was computed). Each result serialises with ``to_dict()`` to
the JSON the run directory holds and loads back with ``from_dict()``; figures
and tables take the dataclasses.

Example:
    >>> run = infodisent.open_run("runs/demo")
    >>> run.metrics.infodisent.top1, run.metrics.linear_probe.top1
    >>> run.metrics.explanations.size.local_size
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

import pandas as pd

from ..errors import InputError

T = TypeVar("T")


# ----------------------------------------------------------------------------- (de)serialisation


def to_dict(obj: Any) -> Any:
    """A dataclass (nested ones, lists, tuples, dicts) as plain JSON values; ``to_dict`` methods are used."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        own = getattr(type(obj), "to_dict", None)
        if own is not None and own is not _DataMixin.to_dict:
            return own(obj)
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type[T], data: Any) -> T:
    """Rebuild ``cls`` (a dataclass, or a typing annotation) from :func:`to_dict`'s output.

    Unknown keys are an error (a file from another version), missing keys take the field's default.
    """
    return _convert(cls, data, cls.__name__ if isinstance(cls, type) else str(cls))


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any or tp is None:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except (TypeError, ValueError, KeyError) as e:
                errors.append(str(e))
        raise InputError(errors[0] if len(errors) == 1 else f"{where}: a {type(value).__name__} that fits none of "
                         f"{[getattr(a, '__name__', str(a)) for a in args]} ({'; '.join(errors)[:300]})")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise InputError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {type(value).__name__}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if origin is tuple and args:
            return tuple(_convert(a, v, where) for a, v in zip(args, value))
        return [_convert(args[0] if args else Any, v, where) for v in value]
    if origin is dict:
        kt, vt = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected an object, got {type(value).__name__}")
        return {k: _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        own = tp.__dict__.get("from_dict")
        if own is not None and isinstance(own, classmethod) and tp.from_dict.__func__ is not _DataMixin.from_dict.__func__:
            return tp.from_dict(value)
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected an object for {tp.__name__}, got {type(value).__name__}")
        hints = _type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = set(value) - names
        if unknown:
            raise InputError(f"{where}: unknown keys {sorted(unknown)} for {tp.__name__}")
        return tp(**{k: _convert(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise TypeError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
    return value


@functools.cache
def _type_hints(tp: type) -> dict[str, Any]:
    """A dataclass's resolved field types, once per class: resolving compiles every string annotation."""
    return typing.get_type_hints(tp)


class _DataMixin:
    """``to_dict`` / ``from_dict`` for the result dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        return from_dict(cls, data)


# ----------------------------------------------------------------------------- the results


@dataclass(frozen=True)
class Accuracy(_DataMixin):
    """Top-1 and top-5 accuracy (top-k over min(5, C) classes), and the cross-entropy where computed."""

    top1: float
    top5: float
    loss: float | None = None


@dataclass(frozen=True)
class Sizes(_DataMixin):
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
class Faithfulness(_DataMixin):
    """Removal curves (top-k contributors vs k random channels) and the areas between them."""

    curves: pd.DataFrame  # k, logit_drop_top, logit_drop_random, accuracy_top, accuracy_random
    area_logit: float  # mean over k-steps of (drop_top - drop_random)
    area_accuracy: float  # mean over k-steps of (accuracy_random - accuracy_top)

    def to_dict(self) -> dict[str, Any]:
        return {"area_logit": self.area_logit, "area_accuracy": self.area_accuracy,
                **{c: self.curves[c].tolist() for c in self.curves.columns}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Faithfulness":
        curves = pd.DataFrame({k: v for k, v in data.items() if k not in ("area_logit", "area_accuracy")})
        return cls(curves, float(data["area_logit"]), float(data["area_accuracy"]))


@dataclass(frozen=True)
class PartScores(_DataMixin):
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
class CubPartScores(_DataMixin):
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
class ExplanationMetrics(_DataMixin):
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
class Agreement(_DataMixin):
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

    def sentence(self) -> str:
        """One line for the run's output and report."""
        which = "its ImageNet classifier read on these classes" if self.classifier == "imagenet" else "its own classifier"
        return (f"agreement with the backbone's black box ({which}): the same class on {100 * self.top1:.1f}% of "
                f"{self.num_images} images, KL(black box || InfoDisent) {self.kl:.3f} nats; the black box's own "
                f"top-1 {self.black_box.top1:.3f}")


@dataclass(frozen=True)
class Randomised(_DataMixin):
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
class LabelRandomisation(_DataMixin):
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
    purity_untrained: float | None = None  # None: written by a version without this reference
    pointing_game_untrained: float | None = None


def _refs(trained: float | None, untrained: float | None, chance: float) -> str:
    named = (("trained", trained), ("untrained head", untrained), ("chance", chance))
    return ", ".join(f"{name} {x:.3f}" for name, x in named if x is not None)


@dataclass(frozen=True)
class SanityChecks(_DataMixin):
    """``infodisent evaluate --sanity``: does the explanation depend on the model and on the labels?"""

    split: str
    images: int  # images whose explanations the model randomisation compares
    channels: int  # top channels per image whose maps are compared
    model: list[Randomised] = field(default_factory=list)  # one entry per level of the cascade
    labels: LabelRandomisation | None = None

    def sentence(self) -> str:
        """One line per check, for the run's output and report."""
        lines = [f"sanity, the last {m.stages} stage{'s' if m.stages > 1 else ''} of the backbone re-initialised: "
                 f"channel maps' rank correlation {m.map_spearman:.2f}, SSIM {m.map_ssim:.2f}; contributions' rank "
                 f"correlation {m.ranking_spearman:.2f}; top-1 {m.top1:.2f}" for m in self.model]
        if self.labels is not None:
            s = self.labels
            lines.append(f"sanity, labels shuffled: purity {s.purity:.3f} "
                         f"({_refs(s.purity_trained, s.purity_untrained, s.purity_chance)}), pointing game "
                         f"{s.pointing_game:.3f} ({_refs(s.pointing_game_trained, s.pointing_game_untrained, s.pointing_game_chance)}), "
                         f"top-1 {s.top1:.3f}")
        return "\n".join(lines)


@dataclass(frozen=True)
class CacheUse(_DataMixin):
    path: str
    reused: bool  # True: no image passed through the backbone
    extraction_seconds: float | None = None


@dataclass(frozen=True)
class ProbeInfo(_DataMixin):
    l2: float
    holdout_accuracy: dict[str, float]  # L2 strength -> held-out top-1
    solver: str | None = None  # "lbfgs" (full batch) or "minibatch" (data beyond infodisent.train.probe.IN_MEMORY)


@dataclass(frozen=True)
class KSelection(_DataMixin):
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

    def _lost(self, k: int, lost: float | None = None) -> str:
        """``K=k loses x points`` (``lost``: the paired loss; default: the difference of the top-1s)."""
        lost = self.dense_top1 - self.top1[str(k)] if lost is None else lost
        did = f"loses {100 * lost:.1f} points" if lost > 0 else f"gains {-100 * lost:.1f} points" if lost < 0 \
            else "loses nothing"
        return f"K={k} {did}"

    def budget(self) -> str:
        """One sentence on the accuracy budget: loud when it is missed or the dense head is shown instead."""
        budget = f"the {100 * self.tolerance:.1f}-point budget"
        ref = f"against the dense head ({self.dense_top1:.3f} on {self.images} held-out images)"
        if self.fallback:
            went = ", ".join(self._lost(a) for a in [self.rule_k, *self.escalated])
            return (f"WARNING: no compact head within {budget} of held-out top-1 {ref}: {went}; "
                    "the dense head is shown (every channel counts in every decision)")
        k = self.channels_per_class
        lost = self.dense_top1 - self.top1[str(k)] if self.lost is None else self.lost
        said = f"{self._lost(k, lost)} of held-out top-1 {ref}"
        if self.escalated:
            said = (f"{self._lost(self.rule_k)} (the loss rule's choice), outside {budget}; "
                    f"going up ({', '.join(f'K={a}' for a in self.escalated)}), {said}")
        if not self.within_tolerance:
            return (f"WARNING: {said}: OUTSIDE {budget}; the compact head is kept: compare it with the dense "
                    "head (metrics 'sparse.dense') before trusting its accuracy")
        if self.noise is not None and lost > self.tolerance:
            return (f"{said}: not measurably outside {budget} ({self.images} images cannot resolve less than "
                    f"{100 * (self.tolerance + self.noise):.1f} points)")
        return f"{said}: within {budget}"


@dataclass(frozen=True)
class SparseSummary(_DataMixin):
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

    def describe(self) -> str:
        """K, how it was chosen, what compactness cost on the test split and, loudly, a missed budget."""
        k, sel = self.channels_per_class, self.selection
        how = "given"
        if sel is not None:
            order = sorted(sel.top1, key=lambda a: -int(a))
            if sel.loss:
                tried = ", ".join(f"K={a}: {sel.loss[a]:.3f}" for a in order)
                how = (f"chosen on {sel.images} held-out training images by calibrated loss "
                       f"(dense {sel.dense_loss:.3f}; {tried}); {sel.budget()}")
            else:  # a run from before the loss rule
                tried = ", ".join(f"K={a}: {sel.top1[a]:.3f}" for a in order)
                how = f"chosen on {sel.images} held-out training images (dense {sel.dense_top1:.3f}; {tried})"
        head = f"compact head: {k} channels per class" if k is not None else "dense head (fallback)"
        then = f"; then fine-tuned {self.refit_epochs} epochs on every training image" if self.refit_epochs else ""
        if self.dense_fit is None:
            return f"{head}, {how}{then}; test top-1 of the dense head before pruning: {self.dense.top1:.4f}"
        return (f"{head}, {how}{then}; test top-1 of the dense head trained on every training image: "
                f"{self.dense.top1:.4f} ({self.dense_fit.top1:.4f} without the held-out images)")

    def cost(self, compact: Accuracy) -> str:
        """What compactness costs, at a glance: the shipped head's test top-1 against the dense head's."""
        if self.channels_per_class is None:
            return (f"no compact head kept the accuracy budget: the dense head is shown (test top-1 "
                    f"{self.dense.top1:.3f})")
        d = compact.top1 - self.dense.top1
        return (f"cost of compactness: {self.channels_per_class} channels per class, test top-1 {compact.top1:.3f} "
                f"against {self.dense.top1:.3f} dense ({100 * d:+.1f} points)")


def head_key(k: int | str | None) -> str:
    """A kept head's key, as :meth:`infodisent.run.Run.with_k`, ``infodisent select`` and ``heads/<key>/``
    name it: its K, or ``"dense"`` for None.

    Args:
        k: channels per class, ``"dense"`` or None."""
    return "dense" if k is None else str(k)


@dataclass(frozen=True)
class FrontierPoint(_DataMixin):
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
class Selected(_DataMixin):
    """``infodisent select``: the head shown is not the one the run chose (``metrics.json["selected"]``)."""

    channels_per_class: int | None  # now shown (None: the dense head)
    chosen: int | None  # what training chose (None: the dense head)
    command: str = "infodisent select"


def frontier_steps(points: list[FrontierPoint]) -> str:
    """One sentence on what each step down in K costs and buys: the test top-1 lost, and the channels a
    reader saves (local size) and, where measured, the consistency gained, from the largest compact K down."""
    compact = sorted((p for p in points if p.channels_per_class is not None), key=lambda p: -p.channels_per_class)
    if len(compact) < 2:
        return ""
    steps = []
    for a, b in zip(compact, compact[1:]):
        lost = 100 * (a.test.top1 - b.test.top1)
        step = (f"K={a.channels_per_class}→{b.channels_per_class} "
                f"{'costs' if lost >= 0 else 'gains'} {abs(lost):.1f} points of top-1 for "
                f"{a.local_size - b.local_size:.1f} fewer channels per decision")
        if a.consistency is not None and b.consistency is not None:
            step += f" and {b.consistency - a.consistency:+.3f} consistency"
        steps.append(step)
    return "Each step down in K: " + "; ".join(steps)


def _measured(x: float | None) -> float:
    return float("nan") if x is None else x


def frontier_table(points: list[FrontierPoint]) -> pd.DataFrame:
    """The frontier as a table, one row per kept head, largest K first (the dense head on top)."""
    rows = sorted(points, key=lambda p: -(p.channels_per_class or 10**9))
    return pd.DataFrame({
        "K": [p.key for p in rows], "test top-1": [p.test.top1 for p in rows],
        "test loss": [p.test.loss for p in rows], "held-out top-1": [p.validation_top1 for p in rows],
        "local size": [p.local_size for p in rows], "global size": [p.global_size for p in rows],
        "purity": [_measured(p.purity) for p in rows], "consistency": [_measured(p.consistency) for p in rows],
        "shown": [p.shown for p in rows]}).set_index("K")


@dataclass(frozen=True)
class RunMetrics(_DataMixin):
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
        """The frontier's point of ``k`` (an int, ``"dense"`` or None for the dense head); an error names those kept."""
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
class Evaluation(_DataMixin):
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
    "frontier_steps", "frontier_table", "from_dict", "head_key", "to_dict",
]
