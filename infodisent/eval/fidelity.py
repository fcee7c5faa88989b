"""Fidelity: how closely InfoDisent's head follows the classifier a user wants explained.

InfoDisent explains the decision of its own head on the frozen backbone. Where the backbone has a
classifier for the dataset's classes (the black box), the two can be compared image by image:

- ``"imagenet"``: a 1000-way ImageNet classifier, read on the dataset's classes (an ImageNet-layout
  dataset whose class folders are ImageNet wnids, such as Imagenette);
- ``"own"``: a classifier with exactly the dataset's classes (a model fine-tuned on it, loaded with
  ``weights=<file>``).

:func:`black_box` gives that classifier as a module on InfoDisent's feature maps (CNNs, whose map is
what their classifier reads), :func:`agreement` the share of images on which both predict the same
class and the KL divergence between their softmaxes. Training can match the black box's logits
instead of (or mixed with) the labels (``RunConfig.teacher``), so that the head explains that model.

Example:
    >>> run = infodisent.open_run("runs/imagenette")
    >>> agreement(run.model, run.dataset("test"), run.cache("test"))
    Agreement(classifier='imagenet', num_images=500, top1=0.97, kl=0.09, black_box=Accuracy(...))
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.backbone import Backbone
from ..core.model import InfoDisent
from ..data.datasets import DatasetSpec, ImageDataset
from ..data.features import FeatureCache
from ..errors import InputError
from .results import Accuracy, Agreement


def classifier_columns(backbone: Backbone, dataset: ImageDataset) -> tuple[str, np.ndarray] | None:
    """Which of the backbone classifier's outputs are the dataset's classes, in the dataset's order:
    ``("imagenet", index)`` for an ImageNet subset read by an ImageNet classifier, ``("own", arange(C))``
    for a classifier with the dataset's number of classes; None when it has neither."""
    n, c = backbone.num_classifier_classes, dataset.num_classes
    index = getattr(dataset, "imagenet_index", None)
    if index is not None and n == 1000 and len(index) == c and min(index) >= 0:
        return "imagenet", np.asarray(index, dtype=np.int64)
    if n == c and n > 0:
        return "own", np.arange(c)
    return None


def classifier_mismatch(backbone: Backbone, dataset: ImageDataset) -> str:
    """Why ``backbone``'s own classifier cannot be read on ``dataset``'s classes, and what to do: one
    sentence for an error message."""
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
    classes: ``BlackBox(backbone, columns)(maps) -> (B, C)`` logits (a teacher for :func:`~infodisent.train.training.fit`)."""

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
        self.backbone.to(maps.device)
        return self.backbone.classify(maps)[:, self.columns.to(maps.device)]


def black_box(backbone: Backbone, dataset: ImageDataset) -> BlackBox:
    """The backbone's classifier for ``dataset``'s classes, or an error saying why there is none."""
    cols = classifier_columns(backbone, dataset)
    if cols is None:
        raise InputError(f"there is no black box to match: {classifier_mismatch(backbone, dataset)}")
    kind, columns = cols
    return BlackBox(backbone, columns, kind)


def compare(logits: torch.Tensor, black: torch.Tensor, labels: torch.Tensor, kind: str) -> Agreement:
    """:class:`Agreement` of InfoDisent's ``logits`` with the black box's (both (N, C), the same classes)."""
    logits, black, labels = logits.float().cpu(), black.float().cpu(), labels.cpu()
    if len(labels) == 0:
        raise InputError("agreement needs at least one image")
    same = (logits.argmax(1) == black.argmax(1)).float().mean()
    kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(black, 1), log_target=True, reduction="batchmean")
    top = black.topk(min(5, black.shape[1]), dim=1).indices
    acc = Accuracy(top1=float((top[:, 0] == labels).float().mean()), top5=float((top == labels[:, None]).any(1).float().mean()))
    return Agreement(kind, int(len(labels)), float(same), float(kl), acc)


@torch.no_grad()
def agreement(model: InfoDisent, dataset: ImageDataset, cache: FeatureCache | None = None, *,
              batch_size: int = 64, num_workers: int = 0) -> Agreement | None:
    """How often InfoDisent and the backbone's own classifier agree on ``dataset`` (None when the backbone
    has no classifier for its classes). From ``cache``'s maps (view 0) when there is one and the classifier
    reads them, else one pass of the images through the backbone."""
    cols = classifier_columns(model.backbone, dataset)
    if cols is None:
        return None
    kind, columns = cols
    device = model.device
    model.head.eval()
    ours, theirs, labels = [], [], []
    if cache is not None and model.backbone.classifier_reads_map:
        bb = BlackBox(model.backbone, columns, kind)
        for batch in cache.map_batches(batch_size, device):
            ours.append(model.head(batch.maps))
            theirs.append(bb(batch.maps))
            labels.append(torch.as_tensor(np.asarray(dataset.labels)[batch.indices]))
    else:
        net = model.backbone.model.eval().to(device)
        cols_t = torch.as_tensor(columns, device=device)
        for x, y in image_batches(model.backbone, dataset, batch_size, num_workers, device):
            ours.append(model.head(model.backbone(x)))
            theirs.append(net(x).float()[:, cols_t])
            labels.append(y)
    return compare(torch.cat(ours), torch.cat(theirs), torch.cat(labels), kind)


def image_batches(backbone: Backbone, dataset: ImageDataset, batch_size: int = 64, num_workers: int = 0,
                  device: str | torch.device = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` batches of ``dataset`` in the backbone's view, the images on ``device``: one pass
    for what the cached maps cannot give (the black box of a classifier that does not read them)."""
    ds = DatasetSpec.of(dataset).build(backbone.transform)
    for x, y, _ in torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=num_workers):
        yield x.to(device), y


__all__ = ["BlackBox", "agreement", "black_box", "classifier_columns", "classifier_mismatch", "compare", "image_batches"]
