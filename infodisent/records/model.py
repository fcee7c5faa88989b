"""The model's records: everything needed to rebuild a model and nothing about how it was trained.

:class:`HeadConfig` rebuilds a head, :class:`BackboneSpec` its backbone (name, weights, timm keyword
arguments, the map's shape), and :class:`ModelConfig` puts them together with the data config and the
class names, as timm's ``PretrainedCfg`` describes a model. How a run trained it lives beside it, in
:class:`infodisent.records.run.RunRecord`.

Example:
    >>> cfg = infodisent.open_run("runs/demo").config.model
    >>> cfg.backbone.name, cfg.head.num_features, cfg.num_classes
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InputError
from .options import check_choices
from .serialize import Record

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
OFFLINE_WEIGHTS = "offline"
HUB_WEIGHTS = "timm"
RANDOM_WEIGHTS = "random"
WEIGHTS_KEYWORDS = (OFFLINE_WEIGHTS, HUB_WEIGHTS, RANDOM_WEIGHTS)


OrthogonalMap = Literal["cayley", "householder", "matrix_exp"]
Pooling = Literal["max", "avg"]
Relaxation = Literal["none", "gumbel", "softmax"]


@dataclass(frozen=True)
class HeadConfig(Record):
    """Everything needed to rebuild a head (stored in a run's ``config.json``).

    ``num_features`` and ``num_classes`` may be left unset in a
    :class:`~infodisent.records.run.RunConfig`: training fills them from the backbone and the data.
    """

    num_features: int | None = None
    num_classes: int | None = None
    orthogonal_map: OrthogonalMap = "cayley"
    rotation: bool = True
    pooling: Pooling = "max"
    relaxation: Relaxation = "softmax"  # training only: the max's gradient spread near its peak (see softmax_two_sided)
    gumbel_tau: float = 0.5
    softmax_tau: float = 0.05  # "softmax": the temperature, relative to each channel's largest |J|
    nonnegative: bool = True
    bias: bool = False
    pruned: bool = False  # a fixed 0/1 mask on W (SIDE-style pruning), stored as the buffer ``weight_mask``

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("num_features", "num_classes"):
            n = getattr(self, name)
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise InputError(f"HeadConfig.{name} must be a positive integer, got {n!r}")
        for name in ("gumbel_tau", "softmax_tau"):
            if getattr(self, name) <= 0:
                raise InputError(f"HeadConfig.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class WeightsSource(Record):
    """Where a backbone's weights come from, as recorded in a run's config."""

    kind: str  # "offline" | "timm" | "file" | "random"
    path: str | None = None
    sha256: str | None = None

    @property
    def spec(self) -> str:
        """The string a user passes as ``weights=`` to get these weights."""
        return self.path if self.kind == "file" else self.kind

    @property
    def cache_id(self) -> str:
        """Identifies the weights in feature-cache keys."""
        return f"file:{self.sha256}" if self.kind == "file" else self.kind


@dataclass(frozen=True)
class BackboneSpec(Record):
    """The backbone a head was trained on: its timm name, weights, keyword arguments and map."""

    name: str
    weights: WeightsSource
    num_features: int
    feature_shape: tuple[int, int, int]
    # whether the model's own classifier reads the map as it is (CNNs); None in runs that did not record it
    classifier_reads_map: bool | None = None
    model_kwargs: dict[str, Any] | None = None  # passed to timm.create_model


@dataclass(frozen=True)
class ModelConfig(Record):
    """A model, rebuildable: its backbone, timm's data config, the head and the class names.

    ``channels_per_class``: of a pruned head, the most channels any class keeps (None: dense)."""

    backbone: BackboneSpec
    data: dict[str, Any]  # timm's data config (input_size, mean, std, interpolation, crop_pct, ...)
    head: HeadConfig
    class_names: tuple[str, ...]
    channels_per_class: int | None = None

    def __post_init__(self) -> None:
        if self.head.num_classes != len(self.class_names):
            raise InputError(f"{len(self.class_names)} class names for a head of {self.head.num_classes} classes")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


__all__ = ["DEFAULT_BACKBONE", "HUB_WEIGHTS", "OFFLINE_WEIGHTS", "RANDOM_WEIGHTS", "WEIGHTS_KEYWORDS", "BackboneSpec",
           "HeadConfig", "ModelConfig", "OrthogonalMap", "Pooling", "Relaxation", "WeightsSource"]
