"""InfoDisent = frozen backbone + head: the model a run explains, and its configuration.

Example:
    >>> model = infodisent.open_run("runs/demo").model
    >>> out = model.outputs(images)          # logits, v, J, pooling positions
    >>> model.U                               # the orthogonal matrix, (D, D)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import InfodisentError
from ..records.model import BackboneSpec, ModelConfig
from .backbone import Backbone
from .head import InfoDisentHead, PoolResult
from .weights import load_backbone


class RunMismatchError(InfodisentError, ValueError):
    """A run directory or checkpoint that belongs to another backbone or class count."""


@dataclass(frozen=True)
class Outputs:
    """Per-image outputs of an InfoDisent model."""

    logits: torch.Tensor  # (B, C)
    v: torch.Tensor  # (B, D) pooled channel values
    J: torch.Tensor  # (B, D, H, W) rotated channel maps
    features: torch.Tensor  # (B, D, H, W) backbone maps F
    pool: PoolResult  # the two-sided max and where each side of each channel peaks

    def contributions(self, head: InfoDisentHead, target: torch.Tensor | int | None = None) -> torch.Tensor:
        """``W[c, d] * v_d``: (B, C, D), or (B, D) for one class per image.

        Args:
            head: the head that computed these outputs (its ``W`` is read).
            target: the class per image, as a ``(B,)`` tensor, or one class for every image. Default None:
                all classes."""
        return head.contributions(self.v, target)


class InfoDisent(nn.Module):
    """A frozen backbone and an InfoDisent head, with the metadata to save and reload them.

    Args:
        backbone: the frozen backbone; its channel count must be the head's ``num_features``.
        head: the head.
        class_names: one name per class of the head. Default None: ``"0"``, ``"1"``, ..."""

    def __init__(self, backbone: Backbone, head: InfoDisentHead, class_names: list[str] | None = None):
        super().__init__()
        if head.config.num_features != backbone.num_features:
            raise RunMismatchError(
                f"head expects {head.config.num_features} channels, backbone {backbone.name} gives "
                f"{backbone.num_features}"
            )
        self.backbone = backbone
        self.head = head
        self.class_names = list(class_names) if class_names else [str(i) for i in range(head.config.num_classes)]
        if len(self.class_names) != head.config.num_classes:
            raise RunMismatchError(f"{len(self.class_names)} class names for a head of {head.config.num_classes} classes")

    @property
    def transform(self):
        return self.backbone.transform

    @property
    def U(self) -> torch.Tensor:
        """The head's orthogonal matrix, detached, (D, D): of a head in eval mode, formed once per head state."""
        return self.head.inference_weights()[0] if not self.head.training else self.head.U.detach()

    @property
    def W(self) -> torch.Tensor:
        return self.head.W.detach()

    @property
    def bias(self) -> torch.Tensor | None:
        """The classifier bias (C,), or None for a head without one."""
        return None if self.head.bias is None else self.head.bias.detach()

    @property
    def device(self) -> torch.device:
        return self.head.W.device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The logits of a batch.

        Args:
            images: preprocessed images ``(B, 3, S, S)`` (:attr:`transform`'s output).
        Returns:
            The logits ``(B, C)``."""
        return self.head(self.backbone(images))

    @torch.no_grad()
    def outputs(self, images: torch.Tensor) -> Outputs:
        """Logits, pooled values ``v``, channel maps ``J``, backbone maps and pooling positions for a batch.

        Args:
            images: preprocessed images ``(B, 3, S, S)``; the head is put in eval mode."""
        self.head.eval()
        F_ = self.backbone(images)
        out = self.head.forward_details(F_)  # eval, no autograd: U and W computed once per head state
        return Outputs(out.logits, out.v, out.J, F_, out.pool)

    def config(self) -> ModelConfig:
        """What rebuilds this model (:meth:`build`): its backbone, data config, head and class names."""
        bb = self.backbone
        return ModelConfig(
            backbone=BackboneSpec(bb.name, bb.weights, bb.num_features, tuple(bb.feature_shape()),
                                  bb.classifier_reads_map, dict(bb.asked_kwargs) or None),
            data=dict(bb.data_config), head=self.head.config, class_names=tuple(self.class_names),
            channels_per_class=self.channels_per_class,
        )

    @property
    def channels_per_class(self) -> int | None:
        """Of a pruned head, the most channels any class keeps (None for a dense head)."""
        if not self.head.config.pruned:
            return None
        return int((self.head.weight_mask > 0).sum(1).max())

    @classmethod
    def build(cls, config: ModelConfig, head: InfoDisentHead, *, device: str | torch.device = "cpu",
              weights: str | None = None) -> "InfoDisent":
        """Rebuild a model from its configuration, with a head already read.

        Args:
            config: the model's configuration (a run's ``config.json``, ``Run.config.model``).
            head: the trained head (:func:`infodisent.run.load_head` reads one from a file).
            device: where the model runs. Default ``"cpu"``.
            weights: the backbone's weights, overriding the recorded source (e.g. a local file on another
                machine). Default None: the recorded source."""
        spec = config.backbone
        weights = weights or spec.weights.spec
        known = spec.classifier_reads_map is not None  # the map's shape as recorded: no probing forward
        backbone = load_backbone(spec.name, weights, image_size=config.data["input_size"][-1],
                                 model_kwargs=spec.model_kwargs, device=device,
                                 feature_shape=tuple(spec.feature_shape) if known else None,
                                 classifier_reads_map=spec.classifier_reads_map)
        for k in ("mean", "std", "interpolation", "crop_pct", "crop_mode"):
            if k in config.data:
                backbone.data_config[k] = config.data[k]
        if backbone.num_features != spec.num_features:
            raise RunMismatchError(
                f"the head expects {spec.num_features} channels from {spec.name}, "
                f"the loaded backbone gives {backbone.num_features}"
            )
        return cls(backbone, head.to(device), list(config.class_names))


def check_compatible(config: ModelConfig, backbone_name: str, num_classes: int, where: str | Path) -> None:
    """Raise :class:`RunMismatchError` naming both sides when a run does not fit.

    Args:
        config: the recorded model's configuration.
        backbone_name: the timm name the current run uses.
        num_classes: the class count the current run uses.
        where: the run directory or checkpoint, named in the message."""
    have_bb, have_c = config.backbone.name, config.num_classes
    if have_bb != backbone_name or have_c != num_classes:
        raise RunMismatchError(
            f"{where} was trained for backbone {have_bb!r} with {have_c} classes; "
            f"this run uses backbone {backbone_name!r} with {num_classes} classes"
        )
