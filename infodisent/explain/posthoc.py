"""Post-hoc references beside InfoDisent's own evidence: Grad-CAM and Grad-CAM++ from torchcam.

Both explain the same decision of the same model (the InfoDisent head's logit
of one class) at the backbone's last feature map ``F``, the layer Grad-CAM is
meant for on a CNN, and the one the head reads. torchcam (frgfm/torch-cam) is
the library: it is made for CAMs alone, is maintained (0.5, 2026), supports
CNNs and ViTs, and needs nothing beyond torch, numpy, Pillow and matplotlib
(pytorch-grad-cam pulls in OpenCV and scikit-learn; Captum has Grad-CAM but no
second CAM method).

The gradient of a logit with respect to ``F`` only runs through the head, so
the backbone is never run again: ``F = Uᵀ J`` is recovered exactly (``U`` is
orthogonal) from the rotated maps an :class:`~infodisent.explain.explanation.Explanation`
already holds, and a class change costs one small backward pass.

Example:
    >>> cams = PosthocCAM(run.model)
    >>> maps = cams(run.explain(17), target=3)    # {"Grad-CAM": (S, S) in [0, 1], "Grad-CAM++": ...}
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import nn
from torchcam.methods import GradCAM, GradCAMpp, LayerCAM

from ..core.head import InfoDisentHead
from ..core.model import InfoDisent
from ..errors import InputError
from .explanation import Explanation, class_index

METHODS = {"Grad-CAM": GradCAM, "Grad-CAM++": GradCAMpp, "LayerCAM": LayerCAM}


class FeatureHead(nn.Module):
    """The head as a model of backbone maps ``F``, with ``F`` itself as a layer (``features``) to hook.

    ``U`` and ``W`` are the head's fixed inference weights: gradients reach ``F`` only."""

    def __init__(self, head: InfoDisentHead):
        super().__init__()
        self.features = nn.Identity()
        self.head = head

    def forward(self, F_: torch.Tensor) -> torch.Tensor:
        F_ = self.features(F_)
        U, W = self.head.inference_weights()
        J = self.head.rotation(F_, U.to(F_.dtype))
        v = self.head.pool(J)[0]
        bias = None if self.head.bias is None else self.head.bias.detach().to(v.dtype)
        return Fn.linear(v, W.to(v.dtype), bias)


def backbone_maps(model: InfoDisent, expl: Explanation) -> torch.Tensor:
    """The backbone maps ``F`` (B, D, H, W) of an explanation's images, from its rotated maps: ``Uᵀ J``."""
    J = torch.from_numpy(expl.J)
    if not model.head.config.rotation:
        return J.float()
    U = model.head.inference_weights()[0].double().cpu()
    b, d, h, w = J.shape
    return torch.matmul(U.T, J.double().reshape(b, d, h * w)).reshape(b, d, h, w).float()


class PosthocCAM:
    """CAM maps of an InfoDisent model's decisions (see the module docstring).

    Args:
        model: the model whose decisions are explained.
        methods: names from :data:`METHODS` (default: Grad-CAM and Grad-CAM++).
    """

    def __init__(self, model: InfoDisent, methods: Sequence[str] = ("Grad-CAM", "Grad-CAM++")):
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise InputError(f"unknown CAM method {unknown[0]!r}; choose from {', '.join(METHODS)}")
        self.model = model
        self.methods = tuple(methods)
        self._net = FeatureHead(model.head).eval()

    def __call__(self, expl: Explanation, target: int | None = None, i: int = 0,
                 features: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        """Each method's map for class ``target`` (default: the explained class) on image ``i`` of ``expl``,
        upsampled to its view: ``{name: (S_h, S_w) float array in [0, 1]}`` (all zeros where the method
        finds no positive evidence). ``features``: that image's backbone maps, when already known."""
        c = expl.targets[i] if target is None else class_index(target, len(expl.class_names))
        F_ = backbone_maps(self.model, expl[i]) if features is None else features
        F_ = F_.detach().to(self.model.device).float().requires_grad_(True)  # the gradient's end
        size = expl.views[i].size
        out: dict[str, np.ndarray] = {}
        for name in self.methods:
            with METHODS[name](self._net, target_layer="features", input_shape=tuple(F_.shape[1:])) as extractor:
                with torch.enable_grad():
                    scores = self._net(F_)
                    cam = extractor(int(c), scores)[0]
            cam = torch.nan_to_num(cam.detach().float().cpu())[:, None]
            up = Fn.interpolate(cam, size=(size[1], size[0]), mode="bilinear", align_corners=False)[0, 0]
            out[name] = up.clamp(0, 1).numpy()
        return out


__all__ = ["FeatureHead", "METHODS", "PosthocCAM", "backbone_maps"]
