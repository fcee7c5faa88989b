"""Images a user hands in, brought to the model's view: what :func:`infodisent.explain` and the
interop adapters read (PIL images, paths, normalised tensors).

Example:
    >>> x, views, sources = prepare_inputs(run.model, ["bird.jpg", "car.png"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import torch
from PIL import Image

from ..core.geometry import ViewGeometry
from ..core.model import InfoDisent
from ..errors import InputError
from .datasets.base import read_image, to_rgb

ImageLike = Union[Image.Image, str, Path, torch.Tensor]


def prepare_inputs(model: InfoDisent, images: ImageLike | Sequence[ImageLike]
                   ) -> tuple[torch.Tensor, list[Image.Image], list[int | str | None]]:
    """Normalised inputs, views and sources for PIL images, paths, one (3,S,S) tensor or a (B,3,S,S) batch.

    Args:
        model: the model whose input size, transform and normalisation the images are brought to.
        images: PIL images, image paths (read here; an unreadable one is reported by path), or tensors
            already normalised to the model's input size.
    Returns:
        The batch ``(B, 3, S, S)``, each image's view (the crop the model sees, as a PIL image) and where
        it came from (its path, or None)."""
    size = tuple(model.backbone.data_config["input_size"])
    if isinstance(images, torch.Tensor):
        x = images[None] if images.ndim == 3 else images
        if x.ndim != 4 or tuple(x.shape[1:]) != size:
            raise InputError(
                f"explain takes (3, H, W) or (B, 3, H, W) tensors of the model's input size {size}, got shape "
                f"{tuple(images.shape)}; pass PIL images or paths, or use model.transform(image)"
            )
        mean, std = model.backbone.normalization()
        pixels = ((x.detach().cpu().float() * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        return x, [Image.fromarray(p, "RGB") for p in pixels], [None] * len(x)
    items = images if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise InputError("explain needs at least one image")
    if all(isinstance(i, torch.Tensor) for i in items):
        tensors = [i[0] if i.ndim == 4 and len(i) == 1 else i for i in items]
        if len({tuple(t.shape) for t in tensors}) > 1:
            raise InputError(f"explain takes tensors of one shape, got {sorted({tuple(t.shape) for t in tensors})}")
        return prepare_inputs(model, torch.stack(tensors))
    transform = model.transform
    xs, views, sources = [], [], []
    for item in items:
        source = str(item) if isinstance(item, (str, Path)) else None
        if isinstance(item, (str, Path)):
            item = read_image(item)
        if not isinstance(item, Image.Image):
            raise TypeError(f"explain takes PIL images, paths or normalised tensors, not {type(item).__name__}")
        geo = ViewGeometry.from_transform(transform, item.size)
        view = geo.view_image(to_rgb(item))
        xs.append(geo.to_tensor(view))
        views.append(view)
        sources.append(source)
    return torch.stack(xs), views, sources


__all__ = ["ImageLike", "prepare_inputs"]
