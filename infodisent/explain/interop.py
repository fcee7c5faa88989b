"""InfoDisent's decisions for the field's own tools: an input-space attribution, a Captum ``Attribution``
and a Quantus ``explain_func``.

An InfoDisent logit has an exact spatial form. The two-sided max takes each channel's strongest positive
response at one cell of the feature grid and its strongest negative response at another, so the logit
of class ``c`` minus its bias is the sum of a *logit map* over the grid: ``W[c, d] * pos_d`` at the cell
where channel ``d`` peaks, ``-W[c, d] * neg_d`` where it dips, summed over the channels (an average-pooling
head, an ablation, spreads ``W[c, d] * J_d / (H W)`` over every cell). :func:`input_attribution` spreads
each cell's value evenly over the input pixels that cell covers (and over the colour channels), so the
attribution's sum is the logit minus the bias exactly, in one forward pass: the completeness property that
Integrated Gradients approximates with tens of passes.

- :class:`InfoDisentAttribution` follows Captum's ``Attribution`` interface (``attribute(inputs,
  target=...)`` returning the inputs' shape), so it takes the place of ``LayerGradCam`` or
  ``IntegratedGradients`` in Captum code and works with ``captum.attr.visualization``.
- :func:`quantus_explain_func` is Quantus's ``explain_func`` (numpy in, numpy out); the model Quantus
  scores is :class:`~infodisent.core.model.InfoDisent` itself, one ``nn.Module`` from images to logits.

:func:`explain_func` puts the usual post-hoc methods beside it, each as a Quantus ``explain_func`` of the
same model and decision, as ``(B, 1, S, S)`` maps (colour channels summed, as Quantus's own ``explain``
does): ``"InfoDisent"`` (the exact map above), ``"Grad-CAM"``, ``"Grad-CAM++"`` and ``"LayerCAM"``
(torchcam at the backbone's last map, upsampled bilinearly: :func:`~.posthoc.cam_attribution`),
``"Saliency"`` (Captum: the absolute input gradient) and ``"Integrated Gradients"`` (Captum, as Quantus's
own ``explain`` calls it: :data:`IG_STEPS` trapezoid steps from a zero baseline, the mean image after
normalisation). :func:`explain_methods` runs several and times them.

Captum is needed for :class:`InfoDisentAttribution`, Saliency and Integrated Gradients alone (the
``[interop]`` extra); the rest needs torch and torchcam.

Example:
    >>> attr = input_attribution(run.model, images, target=3)         # (B, 3, S, S)
    >>> attr.sum((1, 2, 3)) == run.model(images)[:, 3] - bias         # to float rounding
    >>> InfoDisentAttribution(run.model).attribute(images, target=3)  # the same, Captum's way
    >>> quantus.Sparseness()(run.model, x, y, explain_func=quantus_explain_func)
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..core.model import InfoDisent
from ..errors import InputError
from .posthoc import METHODS as CAM_METHODS
from .posthoc import cam_attribution

try:  # Captum is optional (the [interop] extra): InfoDisentAttribution says so when it is missing
    from captum.attr import Attribution as _Attribution
except ImportError:
    _Attribution = None


def _targets(target: int | torch.Tensor | np.ndarray | None, logits: torch.Tensor) -> torch.Tensor:
    """One class per image: the given ones, or the predicted ones for None."""
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(np.asarray(target) if not torch.is_tensor(target) else target, dtype=torch.long)
    t = t.to(logits.device).reshape(-1)
    if len(t) == 1:
        t = t.expand(len(logits))
    if len(t) != len(logits):
        raise InputError(f"{len(t)} targets for {len(logits)} images: give one class, or one per image")
    if (t < 0).any() or (t >= logits.shape[1]).any():
        raise InputError(f"target classes must be in [0, {logits.shape[1]}); got {t.tolist()}")
    return t


@torch.no_grad()
def channel_maps(model: InfoDisent, images: torch.Tensor, target: int | torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each channel's share of the logit on the feature grid: ``(B, D, H, W)`` (summing over channels and
    cells gives the logit minus the bias), and the target classes ``(B,)``.

    Args:
        model: the InfoDisent model.
        images: preprocessed images ``(B, 3, S, S)``, as the model takes them.
        target: one class for every image, one per image, or None for the predicted class. Default None.
    """
    out = model.outputs(images.to(model.device))
    t = _targets(target, out.logits)
    w = model.W[t].to(out.J.dtype)  # (B, D)
    b, d, h, wd = out.J.shape
    if model.head.config.pooling == "avg":
        return w[:, :, None, None] * out.J / (h * wd), t
    maps = torch.zeros(b, d, h * wd, dtype=out.J.dtype, device=out.J.device)
    maps.scatter_add_(2, out.pool.pos_index[..., None], (w * out.pool.pos_values)[..., None])
    maps.scatter_add_(2, out.pool.neg_index[..., None], -(w * out.pool.neg_values)[..., None])
    return maps.reshape(b, d, h, wd), t


def logit_map(model: InfoDisent, images: torch.Tensor, target: int | torch.Tensor | None = None) -> torch.Tensor:
    """The decision on the feature grid, ``(B, H, W)``: its cells sum to the logit minus the bias.

    Args:
        model: the InfoDisent model.
        images: preprocessed images ``(B, 3, S, S)``.
        target: one class, one per image, or None for the predicted class. Default None.
    """
    return channel_maps(model, images, target)[0].sum(1)


def spread(cells: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Spread grid maps ``(..., H, W)`` over ``size = (S_h, S_w)`` pixels: each pixel gets its cell's value
    divided by the number of pixels that cell covers (pixel ``y`` lies in cell ``floor(y H / S_h)``), so
    every map keeps its sum exactly.

    Args:
        cells: maps on the feature grid.
        size: the input's height and width.
    """
    h, w = cells.shape[-2:]
    rows = torch.div(torch.arange(size[0], device=cells.device) * h, size[0], rounding_mode="floor")
    cols = torch.div(torch.arange(size[1], device=cells.device) * w, size[1], rounding_mode="floor")
    area = torch.bincount(rows, minlength=h)[:, None] * torch.bincount(cols, minlength=w)[None, :]
    return (cells / area.to(cells.dtype))[..., rows[:, None], cols[None, :]]


def input_attribution(model: InfoDisent, images: torch.Tensor, target: int | torch.Tensor | None = None, *,
                      per_channel: bool = False) -> torch.Tensor:
    """The decision spread over the input: ``(B, 3, S, S)`` like ``images``, summing to the logit minus the
    bias (each cell's value spread evenly over its pixels and the three colour channels).

    Args:
        model: the InfoDisent model.
        images: preprocessed images ``(B, 3, S, S)``.
        target: one class, one per image, or None for the predicted class. Default None.
        per_channel: instead, each feature channel's own map, ``(B, D, S, S)`` (large: D maps per image).
            Default False.
    """
    maps, _ = channel_maps(model, images, target)
    size = tuple(images.shape[-2:])
    if per_channel:
        return spread(maps, size)
    one = spread(maps.sum(1, keepdim=True), size)  # (B, 1, S, S)
    return (one / images.shape[1]).expand(-1, images.shape[1], -1, -1).contiguous()


class InfoDisentAttribution(_Attribution or object):  # type: ignore[misc]
    """InfoDisent's own attribution in Captum's interface: the logit map spread over the input
    (:func:`input_attribution`), exact and in one forward pass; ``has_convergence_delta()`` is False, as
    there is no approximation to measure.

    Args:
        model: the InfoDisent model (Captum's ``forward_func``: images to logits).
    """

    def __init__(self, model: InfoDisent) -> None:
        if _Attribution is None:
            raise InputError("InfoDisentAttribution needs Captum: pip install 'infodisent[interop]' "
                             "(or pip install captum)")
        super().__init__(model)
        self.model = model

    def attribute(self, inputs: torch.Tensor, target: int | torch.Tensor | None = None, *,
                  per_channel: bool = False) -> torch.Tensor:
        """Attributions of ``target``'s logit to ``inputs``, in the inputs' shape.

        Args:
            inputs: preprocessed images ``(B, 3, S, S)``.
            target: one class, one per image, or None for the predicted class. Default None.
            per_channel: each feature channel's own map instead, ``(B, D, S, S)``. Default False.
        """
        return input_attribution(self.model, inputs, target, per_channel=per_channel)

    def has_convergence_delta(self) -> bool:
        return False


def quantus_explain_func(model: InfoDisent, inputs: np.ndarray | torch.Tensor, targets: Any, **kwargs: Any
                         ) -> np.ndarray:
    """Quantus's ``explain_func``: the input attribution of ``targets`` as a float32 numpy array
    ``(B, 1, S, S)`` (summed over the colour channels, the shape Quantus's metrics take for images):
    :func:`explain_func` with ``method="InfoDisent"``.

    Args:
        model: the InfoDisent model Quantus scores.
        inputs: preprocessed images ``(B, 3, S, S)``, numpy or torch.
        targets: one class, one per image (numpy, torch or ints).
        **kwargs: Quantus's ``explain_func_kwargs`` (``device`` and the like); ignored.
    """
    return explain_func(model, inputs, targets, method="InfoDisent")


# ----------------------------------------------------------------------------- every method, as Quantus takes it


def _classes(targets: Any, n: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(targets) if not torch.is_tensor(targets) else targets, dtype=torch.long)
    t = t.reshape(-1)
    return t.expand(n) if len(t) == 1 else t


def _tensor(inputs: np.ndarray | torch.Tensor, model: nn.Module) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(inputs) if not torch.is_tensor(inputs) else inputs, dtype=torch.float32)
    return x.to(next(model.parameters()).device)


def _infodisent(model: InfoDisent, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return input_attribution(model, x, t).sum(1, keepdim=True)


def _cam(method: str) -> Callable[[InfoDisent, torch.Tensor, torch.Tensor], torch.Tensor]:
    def explain(model: InfoDisent, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return cam_attribution(model, x, t, method)

    return explain


class Differentiable(nn.Module):
    """The InfoDisent model with gradients through the frozen backbone to the input, for the gradient
    methods (the backbone's own forward runs without autograd).

    Args:
        model: the InfoDisent model.
    """

    def __init__(self, model: InfoDisent) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of ``x``, differentiable with respect to it.

        Args:
            x: preprocessed images ``(B, 3, S, S)``."""
        return self.model.head(self.model.backbone.map_with_grad(x))


def _saliency(model: InfoDisent, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    from captum.attr import Saliency

    return Saliency(Differentiable(model)).attribute(x.detach().requires_grad_(True), target=t).sum(1, keepdim=True)


IG_STEPS = 10  # Quantus's own explain() calls Captum's IntegratedGradients so: 10 trapezoid steps from zero


def _integrated_gradients(model: InfoDisent, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(Differentiable(model))
    return ig.attribute(x, target=t, baselines=torch.zeros_like(x), n_steps=IG_STEPS, method="riemann_trapezoid",
                        internal_batch_size=64).sum(1, keepdim=True)


EXPLAINERS: dict[str, Callable[[InfoDisent, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "InfoDisent": _infodisent,
    **{name: _cam(name) for name in CAM_METHODS},
    "Saliency": _saliency,
    "Integrated Gradients": _integrated_gradients,
}


def explain_func(model: nn.Module, inputs: np.ndarray | torch.Tensor, targets: Any, method: str = "InfoDisent",
                 **kwargs: Any) -> np.ndarray:
    """Quantus's ``explain_func`` for any method of :data:`EXPLAINERS`: ``(B, 1, S, S)`` float32.

    Args:
        model: the model Quantus passes (the scored model, or its randomised copy in MPRT); a module that
            wraps one as ``.model`` is unwrapped.
        inputs: preprocessed images ``(B, 3, S, S)``.
        targets: one class per image (or one for all).
        method: a name from :data:`EXPLAINERS`. Default ``"InfoDisent"``.
        **kwargs: the rest of Quantus's ``explain_func_kwargs`` (``device`` and the like); ignored.
    """
    if method not in EXPLAINERS:
        raise InputError(f"unknown attribution method {method!r}; choose from {', '.join(EXPLAINERS)}")
    if not isinstance(model, InfoDisent) and isinstance(getattr(model, "model", None), InfoDisent):
        model = model.model  # a wrapper of the model (a memo of its answers)
    if not isinstance(model, InfoDisent):
        raise InputError(f"explain_func explains an InfoDisent model, not a {type(model).__name__}")
    x = _tensor(inputs, model)
    out = EXPLAINERS[method](model, x, _classes(targets, len(x)).to(x.device))
    return out.detach().float().cpu().numpy()


def explain_methods(model: InfoDisent, images: torch.Tensor, targets: torch.Tensor, methods: Sequence[str],
                    batch_size: int = 32) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every method's maps of the same decisions, and its cost.

    Args:
        model: the InfoDisent model.
        images: preprocessed images ``(N, 3, S, S)``.
        targets: the explained class of each image ``(N,)``.
        methods: names from :data:`EXPLAINERS`.
        batch_size: images per call. Default 32.

    Returns:
        ``{method: (N, 1, S, S)}`` and ``{method: seconds per image}`` (wall time, this process's threads).
    """
    maps, seconds = {}, {}
    for m in methods:
        start, parts = time.perf_counter(), []
        for i in range(0, len(images), batch_size):
            parts.append(explain_func(model, images[i:i + batch_size], targets[i:i + batch_size], method=m))
        seconds[m] = (time.perf_counter() - start) / max(len(images), 1)
        maps[m] = np.concatenate(parts)
    return maps, seconds


__all__ = ["EXPLAINERS", "IG_STEPS", "Differentiable", "InfoDisentAttribution", "channel_maps", "explain_func",
           "explain_methods", "input_attribution", "logit_map", "quantus_explain_func", "spread"]
