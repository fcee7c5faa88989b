"""A training's checkpoint: ``checkpoint.pt`` (head configuration and state, optimizer, RNG) and
``history.csv``, each written atomically after every epoch, so that an interrupted run resumes where it
stopped and a checkpoint of another head is refused with both heads named."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..core.head import InfoDisentHead
from ..errors import CorruptFileError, InfodisentError
from ..io import atomic_path, atomic_write_text
from ..records.model import HeadConfig


class CheckpointMismatchError(InfodisentError, ValueError):
    """A checkpoint whose head does not fit the run being resumed."""


@dataclass(frozen=True)
class CheckpointPaths:
    """Where :func:`fit` keeps its checkpoint and history (a run directory's ``checkpoint.pt`` and ``history.csv``)."""

    checkpoint: Path
    history: Path


def save_checkpoint(paths: CheckpointPaths, head: InfoDisentHead, history: pd.DataFrame, *, epoch: int, step: int,
                    optimizer: torch.optim.Optimizer | None = None, phase: str = "train",
                    extra: dict[str, Any] | None = None) -> None:
    """Write ``history.csv`` then the checkpoint (head config and state, optimizer, RNG), each atomically.

    ``phase`` is ``"train"`` (resumable) or ``"pruned"`` (a finished pruned head); ``extra`` holds more
    plain values (numbers, strings) to keep.

    Args:
        paths: where the checkpoint and the history go.
        head: the head whose configuration and state are saved.
        history: the per-epoch rows so far, written as ``history.csv``.
        epoch: the last finished epoch.
        step: the optimizer steps taken so far.
        optimizer: the optimizer, whose state is saved for resuming. Default None: not saved.
        phase: ``"train"`` or ``"pruned"``. Default ``"train"``.
        extra: more plain values stored under their keys. Default None: none."""
    state: dict[str, Any] = {
        "phase": phase,
        "epoch": epoch,
        "step": step,
        "head_config": head.config.to_dict(),
        "head": head.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    state.update(extra or {})
    atomic_write_text(paths.history, history.to_csv(index=False))
    with atomic_path(paths.checkpoint) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict | None:
    """A checkpoint written by :func:`save_checkpoint`, or None when there is none.

    Args:
        path: the checkpoint file; one that cannot be read is a :class:`~infodisent.errors.CorruptFileError`.
    Returns:
        The saved dict (tensors on the CPU), or None when ``path`` is not a file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, foreign pickle, ...
        raise CorruptFileError(path, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
                               "delete it to start the run afresh") from None


def check_checkpoint(ckpt: dict, want: HeadConfig, path: Path) -> None:
    """Raise :class:`CheckpointMismatchError` naming both heads when ``ckpt`` does not fit a head of ``want``
    (for a pruned checkpoint: the dense head it was pruned from).

    Args:
        ckpt: the checkpoint, as :func:`load_checkpoint` returns it.
        want: the configuration of the head being trained.
        path: the checkpoint's file, named in the message."""
    have = HeadConfig(**ckpt["head_config"]) if "head_config" in ckpt else None
    if have is None:
        raise CheckpointMismatchError(f"{path} has no head configuration (written by an older infodisent); "
                                      "delete it or train with --overwrite")
    if (have.num_classes, have.num_features) != (want.num_classes, want.num_features):
        raise CheckpointMismatchError(
            f"{path} holds a head for {have.num_classes} classes and {have.num_features} channels; "
            f"this run has {want.num_classes} classes and {want.num_features} channels"
        )
    if ckpt.get("phase", "train") == "pruned":
        have = replace(have, pruned=want.pruned)
    if have != want:
        diff = {k: (v, getattr(want, k)) for k, v in have.to_dict().items() if getattr(want, k) != v}
        raise CheckpointMismatchError(f"{path} was written with other head options (checkpoint, now): {diff}")


__all__ = ["CheckpointMismatchError", "CheckpointPaths", "check_checkpoint", "load_checkpoint", "save_checkpoint"]
