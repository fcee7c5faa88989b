"""Watching a training from code or a widget: progress, epoch rows, and a polite stop.

``train_run(config, monitor=m)`` calls ``m.progress(...)`` while it extracts
features and trains, ``m.epoch(row)`` after every epoch (the row of
``history.csv``, with the phase), and checks ``m.stop_requested`` after each
epoch's checkpoint is written: a stop raises :class:`TrainingStopped`, and
``--resume`` (``RunConfig(resume=True)``) continues from that checkpoint.
Hooks run on the training's thread; :meth:`Monitor.request_stop` may be
called from any thread.

Example:
    >>> m = Monitor(on_epoch=lambda row: print(row["phase"], row["epoch"], row["train_loss"]))
    >>> threading.Thread(target=train_run, args=(cfg,), kwargs={"monitor": m}).start()
    >>> m.request_stop()                  # ends after the current epoch, resumable
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import InfodisentError


class TrainingStopped(InfodisentError, RuntimeError):
    """A training that ended early because its monitor asked; its checkpoint resumes it."""


@dataclass(frozen=True)
class Progress:
    """Where a training is: ``stage`` (``"features train"``, ``"features test"``, ``"probe"``, ``"train"``,
    ``"prune K=8"``, ``"done"``), ``done`` of ``total`` units (images for features, epochs for training)."""

    stage: str
    done: int
    total: int


class Monitor:
    """Hooks a running :func:`~infodisent.pipeline.train_run` calls (pass callables, or subclass and override).

    Args:
        on_progress: called with a :class:`Progress` as work advances. Default None: not called.
        on_epoch: called with each finished epoch's row (``epoch``, ``train_loss``, ``train_top1``, ...,
            ``phase``); ``epoch`` counts every epoch of the run, pruning rounds included (after a resume,
            from where the run was). Default None: not called.
    """

    def __init__(self, on_progress: Callable[[Progress], Any] | None = None,
                 on_epoch: Callable[[dict], Any] | None = None):
        self.on_progress, self.on_epoch = on_progress, on_epoch
        self.phase = "train"
        self.offset = 0  # added to the epoch numbers ``fit`` reports (pruning rounds count on from the training)
        self.rows: list[dict] = []
        self._stop = threading.Event()

    def progress(self, stage: str, done: int, total: int) -> None:
        """Report progress: passes a :class:`Progress` to ``on_progress``.

        Args:
            stage: what is running (``"features train"``, ``"train"``, ``"prune K=8"``, ...).
            done: units finished so far.
            total: units in the stage (images for features, epochs for training)."""
        if self.on_progress is not None:
            self.on_progress(Progress(stage, int(done), int(total)))

    def epoch(self, row: dict) -> None:
        """Record a finished epoch (``row`` as in ``history.csv``) and pass it on.

        Args:
            row: the epoch's row; the current phase is added and the epoch number offset by :attr:`offset`."""
        row = {**row, "phase": self.phase, "epoch": int(row["epoch"]) + self.offset}
        self.rows.append(row)
        if self.on_epoch is not None:
            self.on_epoch(row)

    def request_stop(self) -> None:
        """Ask the training to end after the current epoch (its checkpoint is written first)."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def check_stop(self, where: str) -> None:
        """Raise :class:`TrainingStopped` when a stop was requested (``where``: what has been saved).

        Args:
            where: the end of the message: how far the training got and what resumes it
                (``"after epoch 3 of 30; ..."``)."""
        if self._stop.is_set():
            raise TrainingStopped(f"stopped on request {where}")


__all__ = ["Monitor", "Progress", "TrainingStopped"]
