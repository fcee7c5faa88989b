"""The options every layer reads: how a head is
trained (:class:`FitConfig`), how it is pruned to a compact head (:class:`SparseOptions`), the two sides of
a channel (:data:`Side`) and the weight below which a channel has no say (:data:`WEIGHT_THRESHOLD`). Opening
a model reads these without importing the training loop or the cache writer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args, get_type_hints

from ..errors import InputError
from .serialize import Record

Loss = Literal["softmax", "sigmoid"]
Side = Literal["pos", "neg"]  # a channel's positive (max ReLU(J)) or negative (max ReLU(-J)) side
WEIGHT_THRESHOLD = 1e-3  # W[c, d] above this: channel d has a say in class c (sizes, explanations, browsers)


def check_choices(obj: Any) -> None:
    """Raise ``ValueError`` naming the allowed values when a ``Literal`` field of dataclass ``obj`` holds another.

    Args:
        obj: a dataclass instance; only its fields annotated with a ``Literal`` are checked."""
    for name, tp in get_type_hints(type(obj)).items():
        allowed = get_args(tp) if getattr(tp, "__origin__", None) is Literal else None
        if allowed and getattr(obj, name) not in allowed:
            raise InputError(f"{type(obj).__name__}.{name}={getattr(obj, name)!r}; choose one of {', '.join(map(str, allowed))}")


@dataclass(frozen=True)
class FitConfig(Record):
    """Optimisation settings (stored in the run's ``config.json``)."""

    epochs: int = 30
    lr: float = 2e-3
    rotation_lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    loss: Loss = "softmax"  # "softmax" (cross-entropy) or "sigmoid" (one-vs-rest, as in SIDE)
    train_rotation: bool = True  # False keeps U fixed (fine-tuning W after pruning)
    seed: int = 0
    amp: bool = True  # bfloat16 autocast on CUDA; ignored on CPU
    eval_every: int = 1
    distill: float = 0.0  # weight of matching a teacher's logits (given to fit), 1 - distill on the labels
    distill_temperature: float = 1.0

    def __post_init__(self) -> None:
        check_choices(self)
        if self.epochs < 0 or self.lr <= 0 or self.rotation_lr < 0:
            raise InputError(f"FitConfig needs epochs >= 0, lr > 0, rotation_lr >= 0; got {self.epochs}, "
                             f"{self.lr}, {self.rotation_lr}")
        if not 0 <= self.distill <= 1 or self.distill_temperature <= 0:
            raise InputError(f"FitConfig needs 0 <= distill <= 1 and distill_temperature > 0; got {self.distill}, "
                             f"{self.distill_temperature}")


@dataclass(frozen=True)
class SparseOptions(Record):
    """Pruning settings: ``channels_per_class`` after the last round, then ``finetune_epochs`` of fine-tuning.

    ``channels_per_class=None`` (the default) lets the data choose K: a ``validation`` share of each
    class's training images is held out, the rounds go on through all the ``candidates`` from the
    largest down, each fine-tuned for ``finetune_epochs`` as the final head would be, and K is the
    smallest candidate whose held-out loss after temperature scaling is within ``loss_se`` standard
    errors of the best candidate's (the one-standard-error rule, :func:`infodisent.train.selection.choose_k`;
    top-1 on a few dozen images flips with another CPU's last bits). The chosen head is kept; whether it
    loses more than ``tolerance`` top-1 against the dense head, beyond what the held-out images can
    resolve, is recorded (``KSelection.within_tolerance``). A head measurably outside the budget is not
    shipped in silence: with ``escalate`` (the default) larger K are tried, smallest first
    (:meth:`escalation`), and the first within the budget is kept; when none is, the dense head is (a
    fallback said loudly wherever the run's results are shown). Without ``escalate`` the compact head
    is kept and the miss printed loudly. The held-out images only choose: once K is chosen, the chosen
    head is fine-tuned for ``refit_epochs`` on every training image and, with ``dense_reference``, the
    dense head it is judged against is trained again on all of them (:func:`refit`), so that the run's
    compact and dense test accuracies both come from all the training data. With ``channels_total``,
    all classes choose their channels from one shared budget of that many.

    Every head fine-tuned as a final one is kept (the run's accuracy-readability frontier): the
    candidates, any K an escalation tried, and the ``frontier`` K trained beside them (16: a point for
    users who must keep accuracy; never the rule's choice, the first K an escalation tries). Each
    fine-tune after a prune starts at the run's rates times the share of the classes' evidence the
    prune removed, at least ``finetune_lr_min`` of them (:func:`infodisent.train.sparse.finetune_rates`).
    """

    channels_per_class: int | None = None
    finetune_epochs: int = 10  # after the last round
    finetune_lr: float | None = None  # default: the run's rates scaled by the evidence a prune removed
    finetune_lr_min: float = 0.1  # that scale's floor (infodisent.train.sparse.finetune_rates)
    finetune_rotation: bool = True  # also fine-tune U (False: W alone, prototypes unchanged)
    ratio: int = 4  # each round keeps 1/ratio of the channels per class (1: prune to k at once)
    round_epochs: int = 3  # fine-tuning after each intermediate round
    candidates: tuple[int, ...] = (3, 5, 8)  # the short list K is chosen from ("a handful")
    tolerance: float = 0.005  # the budget: top-1 the compact head may lose against the dense head
    loss_se: float = 1.0  # K: the smallest candidate within this many standard errors of the best held-out loss
    validation: float = 0.1  # share of each class's training images held out to choose K
    channels_total: int | None = None  # one budget of channels shared by all classes
    distill: float = 0.0  # fine-tuning matches the dense head's logits with this weight (the labels: 1 - distill)
    escalate: bool = True  # no candidate within the budget: try larger K (:meth:`escalation`), then the dense head
    refit_epochs: int = 5  # K chosen: the chosen head is then fine-tuned this long on every training image
    dense_reference: bool = True  # K chosen: the dense reference is trained again on every training image
    frontier: tuple[int, ...] = (16,)  # K also trained and kept beside the candidates (never the rule's choice)

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(sorted(set(int(c) for c in self.candidates))))
        object.__setattr__(self, "frontier", tuple(sorted(set(int(c) for c in self.frontier))))
        if any(k < 1 for k in self.frontier):
            raise InputError(f"SparseOptions.frontier must be channel counts >= 1, got {self.frontier}")
        k = self.channels_per_class
        if (k is not None and k < 1) or self.ratio < 1 or min(self.finetune_epochs, self.round_epochs,
                                                              self.refit_epochs) < 0:
            raise InputError(f"SparseOptions needs channels_per_class >= 1, ratio >= 1 and epochs >= 0; got {self}")
        if k is None and (not self.candidates or self.candidates[0] < 1):
            raise InputError(f"SparseOptions.candidates must be channel counts >= 1, got {self.candidates}")
        if not 0 <= self.tolerance < 1 or not 0 < self.validation < 1 or self.loss_se < 0:
            raise InputError(f"SparseOptions needs 0 <= tolerance < 1, 0 < validation < 1 and loss_se >= 0; got {self}")
        if not 0 <= self.distill <= 1:
            raise InputError(f"SparseOptions.distill must be in [0, 1], got {self.distill}")
        if not 0 < self.finetune_lr_min <= 1:
            raise InputError(f"SparseOptions.finetune_lr_min must be in (0, 1], got {self.finetune_lr_min}")
        if self.channels_total is not None and self.channels_total < (k or self.candidates[-1]):
            raise InputError(f"SparseOptions.channels_total ({self.channels_total}) is below the channels per class")

    @property
    def chosen(self) -> bool:
        """Whether K is chosen on validation images (rather than given)."""
        return self.channels_per_class is None

    def schedule(self, num_features: int) -> list[int]:
        """Channels per class after each round: 1/ratio per round down to K (or the largest candidate),
        then, when K is chosen, each smaller candidate.

        Args:
            num_features: the dense head's channel count D; the first round keeps fewer."""
        top = self.channels_per_class or self.candidates[-1]
        ks = [top]
        while self.ratio > 1 and ks[-1] * self.ratio < num_features:
            ks.append(ks[-1] * self.ratio)
        return ks[::-1] + ([c for c in reversed(self.candidates) if c < top] if self.chosen else [])

    def extra_frontier(self, num_features: int) -> list[int]:
        """The K of :attr:`frontier` that pruning trains beside the candidates (or the given K), largest
        first: those below ``num_features`` that the rounds do not already give as a final head.

        Args:
            num_features: the dense head's channel count D."""
        done = set(self.candidates) if self.chosen else {self.channels_per_class}
        return sorted((k for k in self.frontier if k < num_features and k not in done), reverse=True)

    def escalation(self, num_features: int) -> list[int]:
        """The K tried, smallest first, when no candidate keeps the budget: twice the largest candidate,
        then the K of each earlier round (whose heads are kept for this), all below ``num_features``.

        Args:
            num_features: the dense head's channel count D."""
        top = self.candidates[-1]
        rounds = [k for k in self.schedule(num_features) if k > top]
        return sorted(k for k in {2 * top, *rounds} if k < num_features)

    def shared_budget(self, k: int, num_features: int, num_classes: int) -> int | None:
        """The shared channel budget of a head with ``k`` channels per class (escalation): ``channels_total``
        scaled by ``k`` over the largest candidate, as long as that is a real limit.

        Args:
            k: the head's channels per class.
            num_features: the dense head's channel count D.
            num_classes: the class count C.
        Returns:
            The budget, or None when there is no ``channels_total`` or the budget would not limit anything
            (at least ``k * num_classes`` or ``num_features``)."""
        if self.channels_total is None:
            return None
        total = self.channels_total * k // (self.channels_per_class or self.candidates[-1])
        return max(total, k) if total < min(k * num_classes, num_features) else None

    def budgets(self, num_features: int, num_classes: int) -> list[int | None]:
        """The shared channel budget of each round of :meth:`schedule` (None: no shared budget yet): the
        final ``channels_total``, ``ratio`` times more per earlier round, as long as that is a real limit.

        Args:
            num_features: the dense head's channel count D.
            num_classes: the class count C.
        Returns:
            One budget, or None, per round of :meth:`schedule`."""
        ks = self.schedule(num_features)
        if self.channels_total is None:
            return [None] * len(ks)
        top = ks.index(self.channels_per_class or self.candidates[-1])
        out: list[int | None] = []
        for i, k in enumerate(ks):
            total = self.channels_total * self.ratio ** max(0, top - i)
            out.append(max(total, k) if total < min(k * num_classes, num_features) else None)
        return out



__all__ = ["FitConfig", "Loss", "Side", "SparseOptions", "WEIGHT_THRESHOLD", "check_choices"]
