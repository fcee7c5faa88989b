"""The accuracy-readability frontier: every head a pruned run keeps, scored the same way on the test split.

Pruning fine-tunes a head for each candidate K (and for each K an escalation tries); :func:`refit` gives
each the same last fine-tune on every training image. :func:`frontier_point` then scores a kept head:
test accuracy and loss, the size of its explanations (how many channels a person has to read), and its
held-out scores, so that a user can pick K after training (:meth:`infodisent.run.Run.with_k`,
``infodisent select``) knowing what each step down in K costs and buys.

Example:
    >>> point = frontier_point(head, test, 5, held=scores, shown=True)
    >>> point.test.top1, point.local_size
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.head import InfoDisentHead
from ..data.sources import FeatureSource
from ..records.results import FrontierPoint
from ..train.selection import HeldOut
from ..train.training import classification_metrics, forward_all
from .metrics import size_summary


@torch.no_grad()
def frontier_point(head: InfoDisentHead, test: FeatureSource, channels_per_class: int | None, *,
                   held: HeldOut | None = None, shown: bool = False, amp: bool = True) -> FrontierPoint:
    """Score one kept head on ``test``.

    Args:
        head: the head (pruned, or the dense reference).
        test: the test split's features (every process's share under torchrun: the scores are of all of them).
        channels_per_class: its K (None: the dense head).
        held: its scores on the held-out images K was chosen on. Default None: K was given.
        shown: whether it is the head the run shows. Default False.
        amp: bfloat16 autocast on CUDA. Default True.
    """
    logits, labels, vs = forward_all(head, test, amp, values=True)
    with torch.no_grad():
        W = head.W.detach().double().cpu().numpy()
        bias = None if head.bias is None else head.bias.detach().double().cpu().numpy()
    size = size_summary(vs.double().numpy(), W, bias)
    return FrontierPoint(
        channels_per_class=channels_per_class, test=classification_metrics(logits, labels),
        local_size=size.local_size, global_size=size.global_size,
        weights_per_class=float(np.round(size.nonzero_weights_per_class, 4)), shown=shown,
        validation_top1=held.top1 if held is not None else None,
        validation_loss=held.loss if held is not None else None)


__all__ = ["frontier_point"]
