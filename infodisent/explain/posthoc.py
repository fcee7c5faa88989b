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

    ``U`` and ``W`` are the head's fixed inference weights: gradients reach ``F`` only.

    Args:
        head: the InfoDisent head."""

    def __init__(self, head: InfoDisentHead):
        super().__init__()
        self.features = nn.Identity()
        self.head = head

    def forward(self, F_: torch.Tensor) -> torch.Tensor:
        """The head's logits of backbone maps ``F``.

        Args:
            F_: backbone maps ``(B, D, H, W)``."""
        F_ = self.features(F_)
        U, W = self.head.inference_weights()
        J = self.head.rotation(F_, U.to(F_.dtype))
        v = self.head.pool(J)[0]
        bias = None if self.head.bias is None else self.head.bias.detach().to(v.dtype)
        return Fn.linear(v, W.to(v.dtype), bias)


def backbone_maps(model: InfoDisent, expl: Explanation) -> torch.Tensor:
    """The backbone maps ``F`` (B, D, H, W) of an explanation's images, from its rotated maps: ``Uᵀ J``.

    Args:
        model: the model that made the explanation (its head's rotation ``U`` is used).
        expl: the explanation."""
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
        methods: names from :data:`METHODS`. Default ``("Grad-CAM", "Grad-CAM++")``.
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
        finds no positive evidence). ``features``: that image's backbone maps, when already known.

        Args:
            expl: an explanation made by the model.
            target: the class explained. Default None: the explanation's class for image ``i``.
            i: the image of ``expl``. Default 0.
            features: image ``i``'s backbone maps ``(1, D, H, W)``. Default None: recovered from ``expl``."""
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


def cam_attribution(model: InfoDisent, images: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None,
                    method: str = "Grad-CAM") -> torch.Tensor:
    """A CAM of the model's decisions at the input: ``(B, 1, S, S)``, the method's map at the backbone's last
    map (torchcam, normalised to [0, 1] per image) upsampled bilinearly to the input's size, as torchcam
    overlays it. The backbone runs once without autograd; the gradient runs through the head alone.

    Args:
        model: the InfoDisent model (any copy: its own backbone and head are used).
        images: preprocessed images ``(B, 3, S, S)``.
        target: one class, one per image, or None for the predicted classes. Default None.
        method: a name from :data:`METHODS`. Default ``"Grad-CAM"``.
    """
    if method not in METHODS:
        raise InputError(f"unknown CAM method {method!r}; choose from {', '.join(METHODS)}")
    net = FeatureHead(model.head).eval()
    with torch.no_grad():
        F_ = model.backbone(images.to(model.device))
    F_ = F_.float().contiguous().requires_grad_(True)
    with METHODS[method](net, target_layer="features", input_shape=tuple(F_.shape[1:])) as extractor:
        with torch.enable_grad():
            scores = net(F_)
            if target is None:
                classes = scores.argmax(1).tolist()
            else:
                t = torch.as_tensor(target).reshape(-1).tolist()
                classes = t * len(F_) if len(t) == 1 else t
            if len(classes) != len(F_):
                raise InputError(f"{len(classes)} targets for {len(F_)} images: give one class, or one per image")
            cam = extractor([class_index(int(c), scores.shape[1]) for c in classes], scores)[0]
    cam = torch.nan_to_num(cam.detach().float())[:, None]
    return Fn.interpolate(cam, size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False).clamp(0, 1)


__all__ = ["FeatureHead", "METHODS", "PosthocCAM", "backbone_maps", "cam_attribution"]
