"""The teacher: the backbone's own classifier (the black box) as a module on InfoDisent's feature maps,
so that training can match its logits instead of (or mixed with) the labels (``RunConfig.teacher``) and
the head explains that model.

- ``"imagenet"``: a 1000-way ImageNet classifier, read on the dataset's classes (an ImageNet-layout
  dataset whose class folders are ImageNet wnids, such as Imagenette);
- ``"own"``: a classifier with exactly the dataset's classes (a model fine-tuned on it, loaded with
  ``weights=<file>``).

How closely a trained head follows it is measured in :mod:`infodisent.eval.fidelity`.

Example:
    >>> teacher = black_box(model.backbone, train_dataset)   # logits from cached maps
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..core.backbone import Backbone
from ..data.datasets import ImageDataset
from ..errors import InputError


def classifier_columns(backbone: Backbone, dataset: ImageDataset) -> tuple[str, np.ndarray] | None:
    """Which of the backbone classifier's outputs are the dataset's classes, in the dataset's order:
    ``("imagenet", index)`` for an ImageNet subset read by an ImageNet classifier, ``("own", arange(C))``
    for a classifier with the dataset's number of classes; None when it has neither.

    Args:
        backbone: the backbone, its own classifier included.
        dataset: the dataset whose classes are looked for (its ``imagenet_index``, where it has one)."""
    n, c = backbone.num_classifier_classes, dataset.num_classes
    index = getattr(dataset, "imagenet_index", None)
    if index is not None and n == 1000 and len(index) == c and min(index) >= 0:
        return "imagenet", np.asarray(index, dtype=np.int64)
    if n == c and n > 0:
        return "own", np.arange(c)
    return None


def classifier_mismatch(backbone: Backbone, dataset: ImageDataset) -> str:
    """Why ``backbone``'s own classifier cannot be read on ``dataset``'s classes, and what to do: one
    sentence for an error message.

    Args:
        backbone: the backbone, its own classifier included.
        dataset: the dataset whose classes were looked for."""
    n, c = backbone.num_classifier_classes, dataset.num_classes
    where = f"the classifier in {backbone.weights.path}" if backbone.weights.kind == "file" \
        else f"{backbone.name}'s classifier ({backbone.weights.kind} weights)"
    if n == 0:
        return f"{where} has no outputs (num_classes=0); load the model with its classifier"
    if n == 1000:
        return (f"{where} has ImageNet's 1000 classes, and {dataset.name}'s {c} classes are not ImageNet "
                "classes (an ImageNet-layout dataset of wnid folders is read on its own columns); pass a "
                "model fine-tuned on these classes (--weights FILE)")
    return (f"{where} has {n} classes and {dataset.name} has {c}: a classifier fine-tuned on this dataset has "
            f"one output per class, in the dataset's class order")


class BlackBox(nn.Module):
    """The backbone's own classifier on InfoDisent's feature maps, its outputs restricted to the dataset's
    classes: ``BlackBox(backbone, columns)(maps) -> (B, C)`` logits (a teacher for
    :func:`~infodisent.train.training.fit`).

    Args:
        backbone: the backbone; its classifier must read the feature map (``classifier_reads_map``: CNNs).
        columns: the classifier's output for each of the dataset's classes, in the dataset's order.
        kind: ``"imagenet"`` or ``"own"``, as :func:`classifier_columns` says. Default ``"own"``."""

    def __init__(self, backbone: Backbone, columns: np.ndarray, kind: str = "own"):
        super().__init__()
        if not backbone.classifier_reads_map:
            raise InputError(
                f"the black box must read the cached feature maps, and {backbone.name}'s classifier does not "
                "(ViT, Swin and ConvNeXt models pool tokens or normalise first); use a CNN backbone")
        self.backbone, self.kind = backbone, kind
        self.register_buffer("columns", torch.as_tensor(columns, dtype=torch.long), persistent=False)

    @torch.no_grad()
    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """The classifier's logits on the dataset's classes, without gradients.

        Args:
            maps: backbone feature maps ``(B, D, H, W)``; the backbone is moved to their device.
        Returns:
            ``(B, C)`` logits in float32."""
        self.backbone.to(maps.device)
        return self.backbone.classify(maps)[:, self.columns.to(maps.device)]


def black_box(backbone: Backbone, dataset: ImageDataset) -> BlackBox:
    """The backbone's classifier for ``dataset``'s classes, or an error saying why there is none.

    Args:
        backbone: the backbone, its own classifier included.
        dataset: the dataset whose classes the black box gives."""
    cols = classifier_columns(backbone, dataset)
    if cols is None:
        raise InputError(f"there is no black box to match: {classifier_mismatch(backbone, dataset)}")
    kind, columns = cols
    return BlackBox(backbone, columns, kind)


__all__ = ["BlackBox", "black_box", "classifier_columns", "classifier_mismatch"]
