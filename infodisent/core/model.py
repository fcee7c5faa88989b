"""InfoDisent = frozen backbone + head, and the head's file (``head.safetensors``).

Example:
    >>> model = infodisent.open_run("runs/demo").model
    >>> out = model.outputs(images)          # logits, v, J, pooling positions
    >>> model.U                               # the orthogonal matrix, (D, D)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import BackboneSpec, ModelConfig, RunConfig
from ..errors import InfodisentError
from ..io import CorruptFileError, atomic_path
from .backbone import Backbone
from .head import HeadConfig, InfoDisentHead, PoolResult
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
        """``W[c, d] * v_d``: (B, C, D), or (B, D) for one class per image."""
        return head.contributions(self.v, target)


class InfoDisent(nn.Module):
    """A frozen backbone and an InfoDisent head, with the metadata to save and reload them."""

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
        return self.head(self.backbone(images))

    @torch.no_grad()
    def outputs(self, images: torch.Tensor) -> Outputs:
        """Logits, pooled values ``v``, channel maps ``J``, backbone maps and pooling positions for a batch."""
        self.head.eval()
        F_ = self.backbone(images)
        out = self.head.forward_details(F_)  # eval, no autograd: U and W computed once per head state
        return Outputs(out.logits, out.v, out.J, F_, out.pool)

    def config(self, run: RunConfig | None = None) -> ModelConfig:
        """What ``config.json`` holds for this model (``run``: how it was trained)."""
        bb = self.backbone
        return ModelConfig(
            backbone=BackboneSpec(bb.name, bb.weights, bb.num_features, tuple(bb.feature_shape()),
                                  bb.classifier_reads_map),
            data=dict(bb.data_config), head=self.head.config, class_names=tuple(self.class_names), run=run,
            channels_per_class=self.channels_per_class,
        )

    @property
    def channels_per_class(self) -> int | None:
        """Of a pruned head, the most channels any class keeps (None for a dense head)."""
        if not self.head.config.pruned:
            return None
        return int((self.head.weight_mask > 0).sum(1).max())

    @classmethod
    def build(cls, config: ModelConfig, head_file: str | Path, *, device: str | torch.device = "cpu",
              weights: str | None = None) -> "InfoDisent":
        """Rebuild a saved model: its backbone (``weights`` overrides the recorded source, e.g. a local
        file on another machine) and the head in ``head_file``."""
        spec = config.backbone
        weights = weights or spec.weights.spec
        kwargs = config.run.model_kwargs if config.run is not None else None
        known = spec.classifier_reads_map is not None  # the map's shape as recorded: no probing forward
        backbone = load_backbone(spec.name, weights, image_size=config.data["input_size"][-1], model_kwargs=kwargs,
                                 device=device, feature_shape=tuple(spec.feature_shape) if known else None,
                                 classifier_reads_map=spec.classifier_reads_map)
        for k in ("mean", "std", "interpolation", "crop_pct", "crop_mode"):
            if k in config.data:
                backbone.data_config[k] = config.data[k]
        if backbone.num_features != spec.num_features:
            raise RunMismatchError(
                f"{head_file} expects {spec.num_features} channels from {spec.name}, "
                f"the loaded backbone gives {backbone.num_features}"
            )
        head = load_head(Path(head_file), config.head).to(device)
        return cls(backbone, head, list(config.class_names))


def head_tensors(head: InfoDisentHead) -> dict[str, torch.Tensor]:
    """The head's state dict plus the materialised ``U`` and ``W`` (for readers without torch's parametrizations)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    tensors["U"] = head.U.detach().cpu().clone().contiguous()
    tensors["W"] = head.W.detach().cpu().clone().contiguous()
    return tensors


def save_head(head: InfoDisentHead, path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file(head_tensors(head), str(tmp))


def load_head(path: Path, config: HeadConfig) -> InfoDisentHead:
    """Read ``head.safetensors``; a damaged file or a head of another shape gets an error naming the file."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptFileError(path, f"not a readable safetensors file ({e})",
                               "the run's head is lost: retrain it (infodisent train ... --overwrite)") from None
    head = InfoDisentHead(config)
    W = tensors.get("W")
    if W is None or W.ndim != 2:
        raise CorruptFileError(path, "it holds no classifier matrix W")
    if tuple(W.shape) != (config.num_classes, config.num_features):
        raise RunMismatchError(
            f"{path} holds a head for {W.shape[0]} classes and {W.shape[1]} channels; its config.json says "
            f"{config.num_classes} classes and {config.num_features} channels"
        )
    state = {k: v for k, v in tensors.items() if k not in ("U", "W")}
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise RunMismatchError(f"{path} does not fit the head described by config.json "
                               f"({str(e).splitlines()[-1].strip()[:200]})") from None
    head.eval()
    U, _ = head.inference_weights()  # formed once here, and kept for inference until a parameter changes
    if "U" in tensors and not torch.allclose(U, tensors["U"], atol=1e-4):
        raise CorruptFileError(path, "its stored U does not match its parameters")
    return head


def check_compatible(config: ModelConfig, backbone_name: str, num_classes: int, where: str | Path) -> None:
    """Raise :class:`RunMismatchError` naming both sides when a run does not fit."""
    have_bb, have_c = config.backbone.name, config.num_classes
    if have_bb != backbone_name or have_c != num_classes:
        raise RunMismatchError(
            f"{where} was trained for backbone {have_bb!r} with {have_c} classes; "
            f"this run uses backbone {backbone_name!r} with {num_classes} classes"
        )
