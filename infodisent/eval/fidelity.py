"""Fidelity: how closely InfoDisent's head follows the classifier a user wants explained.

InfoDisent explains the decision of its own head on the frozen backbone. Where the backbone has a
classifier for the dataset's classes (the black box), the two can be compared image by image:

- ``"imagenet"``: a 1000-way ImageNet classifier, read on the dataset's classes (an ImageNet-layout
  dataset whose class folders are ImageNet wnids, such as Imagenette);
- ``"own"``: a classifier with exactly the dataset's classes (a model fine-tuned on it, loaded with
  ``weights=<file>``).

:func:`infodisent.train.teacher.black_box` gives that classifier as a module on InfoDisent's feature maps
(CNNs, whose map is what their classifier reads); :func:`agreement` measures the share of images on which both
predict the same class and the KL divergence between their softmaxes. Training can match the black box's logits
instead of (or mixed with) the labels (``RunConfig.teacher``), so that the head explains that model.

Example:
    >>> run = infodisent.open_run("runs/imagenette")
    >>> agreement(run.model, run.dataset("test"), run.cache("test"))
    Agreement(classifier='imagenet', num_images=..., top1=..., kl=..., black_box=Accuracy(...))
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core.model import InfoDisent
from ..data.datasets import ImageDataset
from ..data.features import FeatureCache
from ..data.loader import image_batches
from ..errors import InputError
from ..records.results import Accuracy, Agreement
from ..train.teacher import BlackBox, classifier_columns


def compare(logits: torch.Tensor, black: torch.Tensor, labels: torch.Tensor, kind: str) -> Agreement:
    """:class:`Agreement` of InfoDisent's ``logits`` with the black box's (both (N, C), the same classes).

    Args:
        logits: InfoDisent's logits, ``(N, C)``.
        black: the black box's logits on the same images and classes, ``(N, C)``.
        labels: ``(N,)`` true classes, for the black box's own accuracy.
        kind: which classifier the black box is, ``"imagenet"`` or ``"own"``."""
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
    reads them, else one pass of the images through the backbone.

    Args:
        model: the InfoDisent model; its backbone holds the classifier.
        dataset: the images, with their labels.
        cache: the feature cache of ``dataset`` for this backbone. Default None: run the images through the
            backbone.
        batch_size: maps or images per batch. Default 64.
        num_workers: image-loading processes when the images are read. Default 0: load in this process."""
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


__all__ = ["agreement", "compare"]
