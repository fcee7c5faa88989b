"""Typed configurations: what ``infodisent train`` takes (:class:`RunConfig`) and what ``config.json`` holds.

Every option is checked where it is given: a wrong dataset, loss, pooling,
orthogonal map or relaxation fails when the dataclass is built (before any
image is read), with the allowed values. ``config.json`` is parsed once into a
:class:`ModelConfig`; its ``version`` is checked, and a file written by another
format version gets an error that says which.

Example:
    >>> cfg = RunConfig(out="runs/cub", dataset="cub", root="/data/CUB_200_2011")
    >>> ModelConfig.read("runs/cub/config.json").backbone.name
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .core.backbone import DEFAULT_BACKBONE, OFFLINE_WEIGHTS, WeightsSource
from .core.head import HeadConfig
from .core.options import FitConfig, SparseOptions
from .data.datasets import DATASETS, DatasetSpec, PartsConfig
from .errors import InfodisentError, InputError
from .eval.results import from_dict
from .io import CorruptFileError, read_json

CONFIG_VERSION = 2


class ConfigVersionError(InfodisentError, ValueError):
    """A ``config.json`` written by another format version of infodisent."""


@dataclass(frozen=True)
class RunConfig:
    """Everything ``infodisent train`` needs. ``head`` leaves the feature and class counts to the data."""

    out: str
    dataset: str = "parts"
    root: str | None = None
    backbone: str = DEFAULT_BACKBONE
    weights: str = OFFLINE_WEIGHTS
    image_size: int | None = None
    max_classes: int | None = None
    batch_size: int = 64
    num_workers: int = 1
    device: str = "cpu"
    cache_dir: str | None = None
    use_cache: bool = True
    compile: bool = False  # streaming: run the backbone through torch.compile
    views: int = 1
    strict: bool = False
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    head: HeadConfig = field(default_factory=HeadConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    model_kwargs: dict[str, Any] | None = None
    parts: PartsConfig | None = None  # generation settings of the parts dataset
    probe: bool = True  # also fit the linear-probe reference
    # Explain the backbone's own classifier (the black box): training matches its logits with this weight
    # (1.0: its logits alone, below 1 mixed with the labels); None: the labels alone.
    teacher: float | None = None
    # The compact head by default: dense training, pruning to K channels per class (K chosen on held-out
    # training images), fine-tuning. None: the paper's dense head.
    sparse: SparseOptions | None = field(default_factory=SparseOptions)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise InputError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.dataset != "parts" and self.root is None:
            raise InputError(f"dataset {self.dataset!r} needs a root (the folder holding its files)")
        if self.parts is not None and self.dataset != "parts":
            raise InputError("parts= (generation settings) only applies to the parts dataset")
        for name in ("batch_size", "views"):
            if getattr(self, name) < 1:
                raise InputError(f"RunConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise InputError(f"RunConfig.num_workers must be >= 0, got {self.num_workers}")
        if self.resume and self.overwrite:
            raise InputError("resume and overwrite exclude each other: continue the run, or start it again")
        if self.root is not None and not Path(self.root).is_absolute():
            # recorded absolute: a notebook or server that opens the run from another folder still finds the data
            object.__setattr__(self, "root", str(Path(self.root).resolve()))
        if self.max_classes is not None and self.max_classes < 1:
            raise InputError(f"RunConfig.max_classes must be >= 1, got {self.max_classes}")
        if self.teacher is not None and not 0 < self.teacher <= 1:
            raise InputError(f"RunConfig.teacher (the weight of the black box's logits) must be in (0, 1], got {self.teacher}")

    def dataset_spec(self, split: str) -> DatasetSpec:
        """How to build ``split`` of this run's dataset."""
        return DatasetSpec(self.dataset, self.root, split, self.max_classes, self.parts)

    def recorded(self) -> dict[str, Any]:
        """The form stored in ``config.json`` (without the flags that only steer one invocation)."""
        d = asdict(self)
        for k in ("progress", "resume", "overwrite"):
            d.pop(k)
        return d

    @classmethod
    def from_recorded(cls, data: dict[str, Any]) -> "RunConfig":
        return from_dict(cls, {**data, "progress": False})


def demo_config(out: str = "runs/demo", **overrides: Any) -> RunConfig:
    """The embedded default: offline EfficientNet-Lite0 on the synthetic parts dataset."""
    cfg = RunConfig(out=out, dataset="parts", overwrite=True, fit=FitConfig(epochs=20))
    return replace(cfg, **overrides)


def tutorial_config(out: str = "runs/tutorial", **overrides: Any) -> RunConfig:
    """The tutorials' run: the demo's setting on a smaller parts dataset (15 classes, 16 training and 8 test
    images each, 12 dense epochs, shorter fine-tuning), about a minute on a 2-core CPU, a second with
    :func:`open_or_train` once it exists."""
    cfg = RunConfig(out=out, dataset="parts", parts=PartsConfig(train_per_class=16, test_per_class=8),
                    fit=FitConfig(epochs=12), sparse=SparseOptions(finetune_epochs=6, round_epochs=2),
                    progress=False)
    return replace(cfg, **overrides)


@dataclass(frozen=True)
class BackboneSpec:
    """The backbone a head was trained on."""

    name: str
    weights: WeightsSource
    num_features: int
    feature_shape: tuple[int, int, int]
    # whether the model's own classifier reads the map as it is (CNNs); None in runs that did not record it
    classifier_reads_map: bool | None = None


@dataclass(frozen=True)
class EditRecord:
    """Where an edited run comes from (:meth:`Run.edit <infodisent.run.Run.edit>`): the run it was made from,
    the channels switched off, and how long it was fine-tuned with them off (U fixed)."""

    source: str
    disabled: tuple[int, ...]
    finetune_epochs: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """``config.json``: everything needed to rebuild a run's model and its dataset."""

    backbone: BackboneSpec
    data: dict[str, Any]  # timm's data config (input_size, mean, std, interpolation, crop_pct, ...)
    head: HeadConfig
    class_names: tuple[str, ...]
    run: RunConfig | None = None  # how it was trained (None for a head saved outside train_run)
    channels_per_class: int | None = None  # of a pruned head: the most channels any class keeps
    version: int = CONFIG_VERSION
    edit: EditRecord | None = None  # an edited run: its provenance

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "version": self.version,
            "backbone": {**asdict(self.backbone), "feature_shape": list(self.backbone.feature_shape)},
            "data": {k: list(v) if isinstance(v, tuple) else v for k, v in self.data.items()},
            "head": self.head.to_dict(),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "channels_per_class": self.channels_per_class,
        }
        if self.run is not None:
            d["run"] = self.run.recorded()
        if self.edit is not None:
            d["edit"] = {"source": self.edit.source, "disabled": list(self.edit.disabled),
                         "finetune_epochs": self.edit.finetune_epochs}
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | Path = "config.json") -> "ModelConfig":
        version = data.get("version") if isinstance(data, dict) else None
        if version != CONFIG_VERSION:
            newer = isinstance(version, int) and version > CONFIG_VERSION
            raise ConfigVersionError(
                f"{where} has format version {version}, this infodisent (0.1) reads version {CONFIG_VERSION}: "
                + ("it was written by a newer infodisent; upgrade the package" if newer
                   else "it was written by an older infodisent; retrain the run (infodisent train ... --overwrite)")
            )
        try:
            run = RunConfig.from_recorded(data["run"]) if data.get("run") else None
            cfg = cls(
                backbone=from_dict(BackboneSpec, data["backbone"]),
                data={k: tuple(v) if isinstance(v, list) else v for k, v in data["data"].items()},
                head=from_dict(HeadConfig, data["head"]),
                class_names=tuple(data["class_names"]),
                run=run,
                channels_per_class=data.get("channels_per_class"),
                version=version,
                edit=from_dict(EditRecord, data["edit"]) if data.get("edit") else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFileError(where, f"not a valid run configuration: {type(e).__name__}: {e}") from e
        if data.get("num_classes", cfg.num_classes) != cfg.num_classes or cfg.head.num_classes != cfg.num_classes:
            raise CorruptFileError(where, f"{cfg.num_classes} class names for a head of {cfg.head.num_classes} classes")
        return cfg

    @classmethod
    def read(cls, path: str | Path) -> "ModelConfig":
        return cls.from_dict(read_json(path), path)


__all__ = ["CONFIG_VERSION", "BackboneSpec", "ConfigVersionError", "ModelConfig", "RunConfig", "demo_config",
           "tutorial_config"]
