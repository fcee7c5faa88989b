"""InfoDisent = frozen backbone + head; run directories (config.json + head.safetensors).

Example:
    >>> model = infodisent.load("runs/demo")
    >>> out = model.outputs(images)          # logits, v, J, contributions
    >>> model.U                               # the orthogonal matrix, (D, D)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .backbone import Backbone, load_backbone
from .head import HeadConfig, InfoDisentHead
from .io import atomic_path, atomic_write_json, read_json

CONFIG = "config.json"
HEAD_WEIGHTS = "head.safetensors"
CONFIG_VERSION = 1


class RunMismatchError(ValueError):
    """A run directory or checkpoint that belongs to another backbone or class count."""


@dataclass(frozen=True)
class Outputs:
    """Per-image outputs of an InfoDisent model."""

    logits: torch.Tensor  # (B, C)
    v: torch.Tensor  # (B, D) pooled channel values
    J: torch.Tensor  # (B, D, H, W) rotated channel maps
    features: torch.Tensor  # (B, D, H, W) backbone maps F

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

    @property
    def transform(self):
        return self.backbone.transform

    @property
    def U(self) -> torch.Tensor:
        return self.head.U().detach()

    @property
    def W(self) -> torch.Tensor:
        return self.head.W.detach()

    @property
    def b(self) -> torch.Tensor | None:
        """The classifier bias (C,), or None for a head without one."""
        return None if self.head.bias is None else self.head.bias.detach()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    @torch.no_grad()
    def outputs(self, images: torch.Tensor) -> Outputs:
        """Logits, pooled values ``v``, channel maps ``J`` and backbone maps for a batch."""
        self.head.eval()
        F_ = self.backbone(images)
        with self.head.frozen_parameters():
            out = self.head.forward_details(F_)
        return Outputs(out.logits, out.v, out.J, F_)

    def config_dict(self) -> dict[str, Any]:
        bb = self.backbone
        return {
            "version": CONFIG_VERSION,
            "backbone": {
                "name": bb.name,
                "weights": bb.weights.to_dict(),
                "num_features": bb.num_features,
                "feature_shape": list(bb.feature_shape()),
            },
            "data": {k: _jsonable(v) for k, v in bb.data_config.items()},
            "head": self.head.config.to_dict(),
            "num_classes": self.head.config.num_classes,
            "class_names": self.class_names,
        }

    def save(self, run_dir: str | Path, extra_config: dict[str, Any] | None = None) -> None:
        """Write ``config.json`` and ``head.safetensors`` (U's parameters, U itself, W, bias)."""
        run_dir = Path(run_dir)
        save_head(self.head, run_dir / HEAD_WEIGHTS)
        atomic_write_json(run_dir / CONFIG, {**self.config_dict(), **(extra_config or {})})


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def head_tensors(head: InfoDisentHead) -> dict[str, torch.Tensor]:
    """The head's state dict plus the materialised ``U`` and ``W`` (for readers without torch's parametrizations)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    tensors["U"] = head.U().detach().cpu().clone().contiguous()
    tensors["W"] = head.W.detach().cpu().clone().contiguous()
    return tensors


def save_head(head: InfoDisentHead, path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file(head_tensors(head), str(tmp))


def load_head(path: Path, config: HeadConfig) -> InfoDisentHead:
    tensors = load_file(str(path))
    head = InfoDisentHead(config)
    state = {k: v for k, v in tensors.items() if k not in ("U", "W")}
    expected = head.state_dict()
    for k, v in state.items():
        if k in expected and expected[k].shape != v.shape:
            raise RunMismatchError(f"{path}: tensor {k} has shape {tuple(v.shape)}, the head expects {tuple(expected[k].shape)}")
    head.load_state_dict(state)
    if "U" in tensors and not torch.allclose(head.U().detach(), tensors["U"], atol=1e-4):
        raise RunMismatchError(f"{path}: stored U does not match its parameters (corrupt file?)")
    head.eval()
    return head


def check_compatible(config: dict[str, Any], backbone_name: str, num_classes: int, where: str | Path) -> None:
    """Raise :class:`RunMismatchError` naming both sides when a run does not fit."""
    have_bb, have_c = config["backbone"]["name"], int(config["num_classes"])
    if have_bb != backbone_name or have_c != num_classes:
        raise RunMismatchError(
            f"{where} was trained for backbone {have_bb!r} with {have_c} classes; "
            f"this run uses backbone {backbone_name!r} with {num_classes} classes"
        )


def load(
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    backbone_weights: str | None = None,
) -> InfoDisent:
    """Rebuild a saved model. ``backbone_weights`` overrides the recorded source
    (e.g. a local file path on another machine)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG
    if not cfg_path.is_file() or not (run_dir / HEAD_WEIGHTS).is_file():
        raise FileNotFoundError(f"{run_dir} is not an InfoDisent run directory (needs {CONFIG} and {HEAD_WEIGHTS})")
    cfg = read_json(cfg_path)
    bb_cfg = cfg["backbone"]
    weights = backbone_weights or (bb_cfg["weights"]["path"] if bb_cfg["weights"]["kind"] == "file" else bb_cfg["weights"]["kind"])
    size = cfg["data"]["input_size"][-1]
    backbone = load_backbone(bb_cfg["name"], weights, image_size=size, model_kwargs=cfg.get("model_kwargs"), device=device)
    for k in ("mean", "std", "interpolation", "crop_pct", "crop_mode"):
        if k in cfg["data"]:
            backbone.data_config[k] = tuple(cfg["data"][k]) if isinstance(cfg["data"][k], list) else cfg["data"][k]
    if backbone.num_features != bb_cfg["num_features"]:
        raise RunMismatchError(
            f"{run_dir} expects {bb_cfg['num_features']} channels from {bb_cfg['name']}, "
            f"the loaded backbone gives {backbone.num_features}"
        )
    head = load_head(run_dir / HEAD_WEIGHTS, HeadConfig(**cfg["head"])).to(device)
    return InfoDisent(backbone, head, cfg.get("class_names"))
