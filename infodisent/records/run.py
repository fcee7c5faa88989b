"""The run's records: what ``infodisent train`` takes (:class:`RunConfig`) and what ``config.json`` holds
(:class:`RunRecord`: the model, how it was trained and, for an edited run, where it comes from).

Every option is checked where it is given: a wrong dataset, loss, pooling,
orthogonal map or relaxation fails when the dataclass is built (before any
image is read), with the allowed values. A ``config.json`` of another format
version gets an error that says which.

Example:
    >>> cfg = RunConfig(out="runs/cub", dataset="cub", root="/data/CUB_200_2011")
    >>> infodisent.open_run("runs/demo").config.run.fit.epochs
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import CorruptFileError, InfodisentError, InputError
from .data import DatasetSpec, PartsConfig, check_dataset
from .model import DEFAULT_BACKBONE, OFFLINE_WEIGHTS, BackboneSpec, HeadConfig, ModelConfig
from .options import FitConfig, SparseOptions
from .serialize import Record, from_dict, to_dict

CONFIG_VERSION = 2


class ConfigVersionError(InfodisentError, ValueError):
    """A ``config.json`` written by another format version of infodisent."""


@dataclass(frozen=True)
class RunConfig(Record):
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
        check_dataset(self.dataset)
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
        """How to build ``split`` of this run's dataset.

        Args:
            split: ``"train"`` or ``"test"``."""
        return DatasetSpec(self.dataset, self.root, split, self.max_classes, self.parts)

    def recorded(self) -> dict[str, Any]:
        """The form stored in ``config.json`` (without the flags that only steer one invocation)."""
        d = asdict(self)
        for k in ("progress", "resume", "overwrite"):
            d.pop(k)
        return d

    @classmethod
    def from_recorded(cls, data: dict[str, Any]) -> "RunConfig":
        """Rebuild the configuration :meth:`recorded` stored (progress bars off; resume and overwrite at their
        defaults).

        Args:
            data: ``config.json``'s ``run`` object."""
        return from_dict(cls, {**data, "progress": False})


def demo_config(out: str = "runs/demo", **overrides: Any) -> RunConfig:
    """The embedded default: offline EfficientNet-Lite0 on the synthetic parts dataset.

    Args:
        out: the run directory. Default ``"runs/demo"``.
        **overrides: other :class:`RunConfig` fields, passed to ``dataclasses.replace``."""
    cfg = RunConfig(out=out, dataset="parts", overwrite=True, fit=FitConfig(epochs=20))
    return replace(cfg, **overrides)


def tutorial_config(out: str = "runs/tutorial", **overrides: Any) -> RunConfig:
    """The tutorials' run: the demo's setting on a smaller parts dataset (15 classes, 16 training and 8 test
    images each, 12 dense epochs, shorter fine-tuning): a short training (its time is in
    ``docs/results/running-times.md``), opened at once with :func:`open_or_train` once it exists.

    Args:
        out: the run directory. Default ``"runs/tutorial"``.
        **overrides: other :class:`RunConfig` fields, passed to ``dataclasses.replace``."""
    cfg = RunConfig(out=out, dataset="parts", parts=PartsConfig(train_per_class=16, test_per_class=8),
                    fit=FitConfig(epochs=12), sparse=SparseOptions(finetune_epochs=6, round_epochs=2),
                    progress=False)
    return replace(cfg, **overrides)


@dataclass(frozen=True)
class EditRecord(Record):
    """Where an edited run comes from (:func:`infodisent.studies.shortcuts.edit`): the run it was made from,
    the channels switched off, and how long it was fine-tuned with them off (U fixed)."""

    source: str
    disabled: tuple[int, ...]
    finetune_epochs: int = 0


@dataclass(frozen=True)
class RunRecord:
    """``config.json``: the model (:class:`~infodisent.records.model.ModelConfig`), how it was trained
    (``run``; None for a head saved outside ``train_run``) and, for an edited run, its provenance."""

    model: ModelConfig
    run: RunConfig | None = None
    edit: EditRecord | None = None
    version: int = CONFIG_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the model's fields at the top, ``run`` and ``edit`` beside them."""
        m = self.model
        d = {"version": self.version, "backbone": to_dict(m.backbone), "data": to_dict(m.data), "head": to_dict(m.head),
             "num_classes": m.num_classes, "class_names": list(m.class_names), "channels_per_class": m.channels_per_class}
        if self.run is not None:
            d["run"] = self.run.recorded()
        if self.edit is not None:
            d["edit"] = to_dict(self.edit)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | Path = "config.json") -> "RunRecord":
        """Parse ``config.json``'s content; ``where`` names the file in errors (another version, a damaged
        field, class names that do not fit the head).

        Args:
            data: the parsed JSON object.
            where: the file, named in errors. Default ``"config.json"``."""
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
            backbone = from_dict(BackboneSpec, data["backbone"])
            if backbone.model_kwargs is None and run is not None and run.model_kwargs:
                backbone = replace(backbone, model_kwargs=run.model_kwargs)  # recorded with the run only
            model = ModelConfig(
                backbone=backbone,
                data={k: tuple(v) if isinstance(v, list) else v for k, v in data["data"].items()},
                head=from_dict(HeadConfig, data["head"]),
                class_names=tuple(data["class_names"]),
                channels_per_class=data.get("channels_per_class"),
            )
            record = cls(model, run, from_dict(EditRecord, data["edit"]) if data.get("edit") else None, version)
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFileError(where, f"not a valid run configuration: {type(e).__name__}: {e}") from e
        if data.get("num_classes", model.num_classes) != model.num_classes:
            raise CorruptFileError(where, f"{model.num_classes} class names, and num_classes says {data['num_classes']}")
        return record


__all__ = ["CONFIG_VERSION", "ConfigVersionError", "EditRecord", "RunConfig", "RunRecord", "demo_config",
           "tutorial_config"]
